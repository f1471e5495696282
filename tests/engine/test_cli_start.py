"""What a newcomer meets first on the command line: the start (no torch before parsing), failures said to scripts
(``--json``), outputs refused before the work, the labels a data file lacks, files told by their content, one
progress bar that never says "done" early, and what ``inspect`` counts outside the layers."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from explorer import cli
from explorer.cli import main
from explorer.engine.inspect import inspect_model
from explorer.engine.progress import scaled
from explorer.engine.samples import SAMPLES_DIR

import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = str(SAMPLES_DIR / "digits-mlp.plan.json")


def test_parsing_help_and_usage_errors_import_no_torch():
    code = ("import sys, contextlib, io\n"
            "import explorer.cli as cli\n"
            "for argv in (['--help'], ['inspect', '--help'], ['info', '--help'], ['inspect', '--bogus', '--json'],\n"
            "             ['evaluate', '--json'], ['compress', 'digits-mlp']):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            rc = cli.main(argv)\n"
            "        except SystemExit as exc:\n"
            "            rc = exc.code\n"
            "    print(argv[0], rc, repr(out.getvalue()[-60:]))\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "False False", out.stdout
    assert [l.split()[1] for l in lines[:-1]] == ["0", "0", "0", "2", "2", "2"]


def _run_imports(code: str) -> list:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_every_verbs_help_imports_neither_torch_nor_numba():
    # the plan vocabulary of evaluate/compress/... is read from the registries: their names are torch-free
    code = ("import sys, contextlib, io\n"
            "import explorer.cli as cli\n"
            "verbs = sorted(cli.build_parser()._subparsers._group_actions[0].choices)\n"
            "for verb in verbs:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n"
            "            cli.main([verb, '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    print(verb, 'usage:' in out.getvalue(), 'kmeans' in out.getvalue())\n"
            "print('torch' in sys.modules, 'numba' in sys.modules)\n")
    lines = _run_imports(code)
    assert lines[-1] == "False False", lines
    helps = {l.split()[0]: l.split()[1:] for l in lines[:-1]}
    assert {"inspect", "evaluate", "compress", "info", "gui"} <= set(helps)
    assert all(usage == "True" for usage, _ in helps.values()), helps
    assert helps["compress"][1] == "True"  # the vocabulary (quantize.method: kmeans ...) is there


def test_info_reads_a_file_without_torch_or_numba(tmp_path):
    from explorer.engine.compress import compress
    from explorer.engine.model.loading import load_model
    from explorer.engine.plan import Plan
    from explorer.engine.storage import fileformat

    loaded = load_model("digits-mlp")
    path = tmp_path / "m.cexp"
    fileformat.save(compress(loaded.model, Plan.load(PLAN), loaded.example_input), path, loaded)
    code = ("import sys, contextlib, io, json\n"
            "import explorer.cli as cli\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            f"    rc = cli.main(['info', {str(path)!r}, '--json'])\n"
            "print(rc, json.loads(out.getvalue())['file_bytes'])\n"
            "print('torch' in sys.modules, 'numba' in sys.modules)\n")
    lines = _run_imports(code)
    assert lines == [f"0 {path.stat().st_size}", "False False"]


def test_the_spinner_turns_on_a_terminal_and_wipes_its_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    with cli.Spinner("loading torch", stream=stream, interval=0.01):
        import time
        time.sleep(0.05)
    text = stream.getvalue()
    assert "| loading torch" in text and text.endswith("\r" + " " * 15 + "\r")
    quiet = io.StringIO()  # a pipe: nothing
    with cli.Spinner("loading torch", stream=quiet, interval=0.01):
        time.sleep(0.03)
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------------ outputs

WRITERS = [
    ("compress", ["compress", "digits-mlp", "--plan", PLAN, "-o", "{out}/m.cexp"], "m.cexp"),
    ("finetune", ["finetune", "digits-mlp", "--plan", PLAN, "-o", "{out}/m.cexp"], "m.cexp"),
    ("export", ["export", "digits-mlp", "-o", "{out}/m.safetensors"], "m.safetensors"),
    ("export-onnx", ["export", "digits-mlp", "-o", "{out}/m.onnx"], "m.onnx"),
    ("sensitivity -o", ["sensitivity", "digits-mlp", "-o", "{out}/s.csv"], "s.csv"),
    ("sensitivity --png", ["sensitivity", "digits-mlp", "--png", "{out}/s.png"], "s.png"),
    ("auto -o", ["auto", "digits-mlp", "--target-ratio", "5", "-o", "{out}/p.json"], "p.json"),
    ("auto --cexp", ["auto", "digits-mlp", "--finetune", "--target-ratio", "5", "-o", "{tmp}/p.json",
                     "--cexp", "{out}/m.cexp"], "m.cexp"),
]


@pytest.mark.parametrize("verb, argv, name", WRITERS, ids=[w[0] for w in WRITERS])
def test_every_output_in_a_missing_or_read_only_folder_is_refused_before_the_work(tmp_path, capsys, full_disk,
                                                                                  verb, argv, name):
    missing = tmp_path / "no" / "such"
    rc = main([a.format(out=missing, tmp=tmp_path) for a in argv] + ["--json"])
    io_ = capsys.readouterr()
    said = f"cannot write {missing / name}: the directory {missing} does not exist"
    assert rc == 2 and io_.err == f"error: {said}\n"
    assert json.loads(io_.out) == {"error": said, "kind": "write_error"}
    full_disk.read_only()  # creating a file there fails as in a chmod 555 folder
    rc = main([a.format(out=tmp_path, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    name = "p.json" if verb == "auto --cexp" else name  # the first of its outputs is the one refused
    assert rc == 2 and err == f"error: cannot write {tmp_path / name}: Permission denied (is {tmp_path} read-only?)\n"
    assert os.listdir(tmp_path) == []  # nothing written, not even the temporary file


# ------------------------------------------------------------------------------------------------ --json

@pytest.mark.parametrize("argv, kind", [
    (["evaluate", "nothere.pt"], "not_found"),
    (["info", "nothere.cexp"], "not_found"),
    (["compress", "digits-mlp", "--plan", "{tmp}/bad.json", "-o", "{tmp}/m.cexp"], "bad_plan"),
    (["info", "{tmp}/notes.cexp"], "bad_file"),
    (["auto", "digits-mlp", "--epochs", "2", "-o", "{tmp}/p.json"], "error"),
    (["inspect", "digits-mlp", "--bogus"], "usage"),
    (["evaluate"], "usage"),
    (["compress", "digits-mlp"], "usage"),
    (["sensitivity", "digits-mlp", "--limit", "0"], "usage"),
])
def test_json_failures_are_an_object_on_stdout(tmp_path, capsys, argv, kind):
    (tmp_path / "bad.json").write_text('{"default": {"prune": {"amuont": 0.5}}}')
    (tmp_path / "notes.cexp").write_text("my notes")
    rc = main([a.format(tmp=tmp_path) for a in argv] + ["--json"])
    io_ = capsys.readouterr()
    out = json.loads(io_.out)
    assert rc == 2 and out["kind"] == kind and set(out) == {"error", "kind"}
    assert out["error"] in io_.err  # the same words as the stderr line
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2 and capsys.readouterr().out == ""  # without: none


# ------------------------------------------------------------------------------------------------ inputs

def test_images_without_their_labels_file_say_they_measure_agreement(tmp_path, capsys):
    images = tmp_path / "x-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (8).to_bytes(4, "big") * 2 + bytes(3 * 64))
    assert main(["inspect", "digits-mlp", "--data", str(images), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == (f"no labels file beside images {images} (looked for x-labels-idx1-ubyte): measuring agreement "
                   "with the dense model, not accuracy\n")
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(3))
    assert main(["inspect", "digits-mlp", "--data", str(images), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_model_files_are_told_by_content_and_a_false_cexp_is_named(tmp_path, capsys):
    notes = tmp_path / "notes.cexp"
    notes.write_text("not a model\n")
    assert main(["evaluate", str(notes)]) == 2
    err = capsys.readouterr().err
    assert "it is named .cexp, but does not begin with a compressed file's magic bytes" in err
    assert "expected a compressed file (.cexp" in err
    scripted = tmp_path / "script.cexp"  # a TorchScript archive under a .cexp name
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 2))), scripted)
    assert main(["inspect", str(scripted), "--input-shape", "1,4", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{scripted} (torchscript)")
    cexp = tmp_path / "m.cexp"
    assert main(["compress", "digits-mlp", "--plan", PLAN, "-o", str(cexp)]) == 0
    renamed = tmp_path / "m.pt"
    os.rename(cexp, renamed)
    capsys.readouterr()
    assert main(["inspect", str(renamed), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{renamed} (compressed)")


def test_evaluate_without_a_plan_is_documented_as_the_baseline(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "baseline" in capsys.readouterr().out
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "compression-explorer evaluate MODEL [--plan PLAN.json]" in readme and "**baseline**" in readme


# ------------------------------------------------------------------------------------------------ progress

def test_a_phase_done_is_not_the_whole_done():
    seen = []
    sub = scaled(lambda f, m: seen.append((round(f, 2), m)), 0.0, 0.4, "compress (1/2)")
    inner = scaled(sub, 0.0, 0.9)  # unnamed, inside: its "done" is dropped
    sub(0.5, "compressing fc1")
    inner(1.0, "done")
    sub(1.0, "done")
    scaled(lambda f, m: seen.append((round(f, 2), m)), 0.4, 1.0, "measure (2/2)")(1.0, "done")
    assert seen == [(0.2, "compress (1/2): compressing fc1"), (0.36, "compress (1/2)"), (0.4, "compress (1/2) done"),
                    (1.0, "measure (2/2): done")]


@pytest.fixture
def bars(monkeypatch):
    """Every bar the CLI draws, forced on (no delay) into one string per bar."""
    drawn = []
    real = cli.TextProgress.__init__

    def forced(self, label, delay=1.0, stream=None, force=False):
        real(self, label, delay=0.0, stream=io.StringIO(), force=True)
        drawn.append(self.stream)

    monkeypatch.setattr(cli.TextProgress, "__init__", forced)
    return drawn


@pytest.mark.parametrize("argv", [
    ["evaluate", "digits-mlp", "--plan", PLAN, "--limit", "50"],
    ["compress", "digits-mlp", "--plan", PLAN, "-o", "{tmp}/m.cexp"],
    ["inspect", "digits-mlp", "--quiet"],
    ["sensitivity", "digits-mlp", "--layers", "fc3", "--what", "bits", "--limit", "20"],
], ids=lambda a: a[0])
def test_the_bar_only_grows_and_says_done_at_the_end_only(tmp_path, capsys, bars, argv):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 0
    frames = [f for b in bars for f in b.getvalue().split("\r") if "%" in f]
    assert frames
    fractions = [float(f.split("%")[0].split()[-1]) for f in frames]
    assert fractions == sorted(fractions), frames
    early = [f for f, x in zip(frames, fractions) if x < 100 and f.split("%")[1].strip() == "done"]
    assert not early, early


# ------------------------------------------------------------------------------------------------ inspect

def test_recurrent_weights_are_layers_and_their_biases_named(capsys):
    model, x = zoo.lstm_example()[:2]
    info = inspect_model(model.eval(), x)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= {l.name for l in info.layers}
    assert [(k["what"], k["params"]) for k in info.kept] == [("LSTM biases", 128)] == \
        [(k["what"], k["params"]) for k in info.to_dict()["total"]["kept_dense"]]
    assert info.other_params == 128
    assert main(["inspect", "zoo:lstm_example"]) == 0
    out = capsys.readouterr().out
    assert "kept dense: 128 (LSTM biases 128)" in out and "norms" not in out
    assert "LSTM biases (128 params): biases (bias_ih_l*, bias_hh_l*): stored as they are" in out
    mixed, y = zoo.layer_types_inputs()["mixed"]
    kept = {k["what"]: k["params"] for k in inspect_model(mixed.eval(), y).kept}
    assert kept == {"the model's own parameters": 1, "PReLU": 1, "LayerNorm": 16, "MultiheadAttention biases": 24}
