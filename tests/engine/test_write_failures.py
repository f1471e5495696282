"""A full disk or a read-only directory under a write (issue 16): one line naming the file and the problem,
no temporary file left, the old file as it was; the CLI says it in one ``error:`` line and exits 2, as for
its other unwritable outputs."""

import os

import pytest

from explorer.cli import main
from explorer.engine.errors import ExplorerError, WriteError
from explorer.engine.plan import Plan
from explorer.engine.samples import SAMPLES_DIR
from explorer.engine.storage.atomic import atomic_write_bytes

PLAN = str(SAMPLES_DIR / "digits-mlp.plan.json")


def test_a_full_disk_is_one_message_and_leaves_the_old_file(tmp_path, full_disk):
    target = tmp_path / "plan.json"
    target.write_text("old")
    full_disk.fill()
    with pytest.raises(WriteError) as err:
        Plan().save(target)
    assert str(err.value) == f"cannot write {target}: No space left on device"
    assert isinstance(err.value, OSError) and isinstance(err.value, ExplorerError) and err.value.errno == 28
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["plan.json"]


def test_a_read_only_directory_is_one_message(tmp_path, full_disk):
    full_disk.read_only()
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path}/x\.bin: Permission denied \(is {tmp_path} "
                                         r"read-only\?\)$"):
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert os.listdir(tmp_path) == []


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(WriteError, match=rf"^cannot write .*x\.bin: the directory {tmp_path}/no does not exist$"):
        atomic_write_bytes(tmp_path / "no" / "x.bin", b"data")


def test_a_really_read_only_directory(read_only_dir):
    with pytest.raises(WriteError, match="Permission denied"):
        atomic_write_bytes(read_only_dir / "x.bin", b"data")
    assert os.listdir(read_only_dir) == []


@pytest.mark.parametrize("verb, name, says", [
    (["compress", "digits-mlp", "--plan", PLAN], "m.cexp", "cannot write {out}: No space left on device"),
    (["export", "digits-mlp"], "m.safetensors",
     "safetensors export to {out} failed: OSError: No space left on device"),
])
def test_the_cli_says_a_full_disk_in_one_error_line(tmp_path, full_disk, capsys, verb, name, says):
    out = tmp_path / name
    full_disk.fill()
    rc = main(verb + ["-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {says.format(out=out)}\n"
    assert os.listdir(tmp_path) == []


def test_the_cli_says_a_read_only_directory_in_one_error_line(tmp_path, full_disk, capsys):
    out = tmp_path / "m.cexp"
    full_disk.read_only()
    rc = main(["compress", "digits-mlp", "--plan", PLAN, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: cannot write {out}: Permission denied") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []
