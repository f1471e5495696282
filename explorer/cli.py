"""``compression-explorer``: the engine's verbs, headless.

Every verb takes ``--json`` (machine-readable output on stdout) and ``--debug`` (tracebacks). Failures
print one line on stderr and exit with status 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import sys
import threading
import time

# Only what parsing the arguments and saying a failure need is imported here: no torch (7-14 s on a cold
# start). Each verb imports the engine it uses; main() loads torch under a spinner first (see _start).
from explorer import __version__
from explorer.engine.errors import ExplorerError, LoadError
from explorer.engine.sensitivity.grid import DEFAULT_LIMIT, KINDS
from explorer.engine.teach.help import HELP
from explorer.units import human_bytes, human_count, table

EXIT_USAGE = 2
CONCEPT_PAGES = tuple(HELP)  # the Concepts tab's views (gui --concept, report)
CONCEPT_ALIASES = {"teacher": "outputs"}  # the page's tab title, for its key


# ---------------------------------------------------------------------------------------- progress


class TextProgress:
    """A progress bar on stderr that appears only once work has run for more than ``delay`` seconds,
    and only on a terminal (pipes and CI logs stay clean)."""

    def __init__(self, label: str, delay: float = 1.0, stream=None, force: bool = False):
        self.label = label
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.delay = delay
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.shown = False
        self.fraction = 0.0

    def __call__(self, fraction: float, message: str = "") -> bool:
        # one bar for the whole verb: the engine maps each phase onto its share (progress.scaled names it),
        # so the fraction only grows; a phase's own "done" is not the verb's
        self.fraction = fraction = max(fraction, self.fraction)
        if self.enabled and time.monotonic() - self.start >= self.delay:
            width = 30
            filled = int(round(width * fraction))
            text = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {message[:48]:<48}"
            self.stream.write(text)
            self.stream.flush()
            self.shown = True
        return True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()
            self.shown = False


class Spinner:
    """``label`` and a turning bar on stderr while the block runs (importing torch and the engine: seconds),
    only on a terminal; the line is wiped when the block ends, before the verb prints anything."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, stream=None, interval: float = 0.1):
        self.label, self.stream, self.interval = label, stream or sys.stderr, interval
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop = threading.Event()
        self._thread = None

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(self.interval):
            self.stream.write(f"\r{self.FRAMES[i % len(self.FRAMES)]} {self.label}")
            self.stream.flush()
            i += 1
        if i:
            self.stream.write("\r" + " " * (len(self.label) + 2) + "\r")
            self.stream.flush()

    def __enter__(self) -> "Spinner":
        if self.enabled:
            self._thread = threading.Thread(target=self._spin, name="cli-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


# ---------------------------------------------------------------------------------------- verbs


def _load(args):
    from explorer.engine.model.loading import load_model, parse_input_shape  # torch: after parsing

    loaded = load_model(args.model, factory=args.factory, trust=args.trust, data=args.data,
                        limit=getattr(args, "limit", None))
    if args.input_shape:
        loaded.example_input = parse_input_shape(args.input_shape)
    ev = loaded.eval_data
    if ev is not None and ev.labels is None and ev.unlabelled:  # accuracy would silently become agreement
        print(f"{ev.unlabelled}: measuring agreement with the dense model, not accuracy", file=sys.stderr)
    return loaded


def cmd_inspect(args) -> int:
    from explorer.engine.inspect import inspect_model  # torch: after parsing
    from explorer.engine.measure.metrics import describe_input  # torch: after parsing

    loaded = _load(args)
    bar = TextProgress("inspecting")
    try:
        info = inspect_model(loaded.model, loaded.example_input, progress=bar)
    finally:
        bar.close()
    inits = _init_errors(loaded.model, args.inits) if args.inits else None
    if args.json:
        out = {"model": loaded.source, "kind": loaded.kind}
        out.update(info.to_dict())
        if inits is not None:
            for layer in out["layers"]:
                layer["kmeans_inits"] = inits[layer["name"]]
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for l in info.layers:
        struct = "filter+channel" if l.filter_ok and l.channel_ok else "filter" if l.filter_ok else \
            "channel" if l.channel_ok else "-"
        rows.append([l.name, l.type, "x".join(map(str, l.shape)), f"{l.params:,}", human_count(l.macs),
                     human_bytes(l.weight_bytes), human_bytes(l.layer_bytes), struct])
    print(f"{loaded.source} ({loaded.kind})" + (f", example input {describe_input(loaded.example_input)}"
                                                if loaded.example_input is not None
                                                else ", no example input: MACs unknown (give --input-shape)"))
    print(table(rows, ["layer", "type", "shape", "params", "MACs", "weight bytes", "layer bytes",
                       "removable channels"], "lllrrrrl"))
    print("weight bytes: the weight tensor alone (what the methods compress); layer bytes: weights + bias + any "
          "other\nparameter of the module, fp32")
    kept = ", ".join(f"{k['what']} {k['params']:,}" for k in info.kept)  # what the parameters outside layers are
    print(f"\nlayers ({len(info.layers)}): {info.layer_params:,} params; kept dense: {info.other_params:,}"
          f"{f' ({kept})' if kept else ''}; total {info.total_params:,} params = {human_bytes(info.bytes)} in fp32")
    if info.macs is not None:
        layer_sum = (f"; layers account for {sum(l.macs or 0 for l in info.layers):,}"
                     if any(l.macs is not None for l in info.layers) else
                     " (per-layer MACs need Python hooks, which TorchScript does not run)")
        print(f"MACs: {info.macs:,} ({human_count(2 * info.macs)} FLOPs) for one forward pass{layer_sum}")
    if inits is not None:
        names = list(next(iter(inits.values())))
        rows = [[name] + [f"{r[i]['mse_initial']:.3g} -> {r[i]['mse_final']:.3g}" for i in names]
                for name, r in inits.items()]
        print(f"\nk-means at {args.inits} bits: mean squared error of each initialisation, before -> after k-means")
        print(table(rows, ["layer"] + names, "l" + "r" * len(names)))
    if not args.quiet:
        _print_limits(info)
    return 0


def _grouped(pairs) -> list:
    """``(names, reason)`` of consecutive ``(name, reason)`` pairs, those with the same reason joined."""
    out: list = []
    for name, reason in pairs:
        if out and out[-1][1] == reason:
            out[-1][0].append(name)
        else:
            out.append(([name], reason))
    return out


def _coupled_groups(layers) -> list:
    """``(names, text)`` pairs, one per coupled group of several producers, for :func:`_print_limits`."""
    seen, out = set(), []
    for layer in layers:
        group = tuple(layer.producers)
        if len(group) > 1 and group not in seen:
            seen.add(group)
            out.append((f"{layer.shape[0]} channels", " + ".join(group)))
    return out


def _print_limits(info) -> None:
    """What inspect says after its table: the methods a layer refuses, and the modules kept dense."""
    sections = (("why some output channels cannot be removed",
                 [(l.name, l.filter_reason) for l in info.layers if not l.filter_ok and l.filter_reason]),
                ("coupled groups: outputs added together (residual adds); a filter request on one of them "
                 "removes the same channels from all",
                 _coupled_groups(info.layers)),
                ("why some layers cannot be factorised (low-rank)",
                 [(l.name, l.lowrank_reason) for l in info.layers if l.lowrank_reason]),
                ("kept dense (stored as they are; no method applies)",
                 [(f"{d.name or '(the model)'} ({d.type}, {d.params:,} param{'s' if d.params != 1 else ''})", d.reason)
                  for d in info.dense] + [(f"{k['what']} ({k['params']:,} params)", k["reason"]) for k in info.kept
                                          if k["source"] != "dense"]))
    for title, pairs in sections:
        if pairs:
            print(f"\n{title}:")
            for names, reason in _grouped(pairs):
                print(f"  {', '.join(names)}: {reason}")


def _init_errors(model, bits: int) -> dict:
    from explorer.engine.measure.metrics import compressible_layers  # torch: after parsing
    from explorer.engine.methods.kmeans import INITS  # torch: after parsing
    from explorer.engine.methods.quantize import compare_inits  # torch: after parsing

    return {name: compare_inits(mod.weight, None, bits, inits=tuple(INITS)) for name, mod in compressible_layers(model)}


def cmd_evaluate(args) -> int:
    from explorer.engine.measure.evaluate import evaluate_loaded, evaluate_plan  # torch: after parsing
    from explorer.engine.plan import Plan  # torch: after parsing

    loaded = _load(args)
    if args.runtime == "compressed" and (loaded.kind != "compressed" or args.plan):
        raise LoadError("--runtime compressed runs a .cexp file as stored: give the file, without --plan")
    if loaded.kind == "compressed" and not args.plan:
        bar = TextProgress("evaluating")
        try:
            decisions, dense_resident, dense_macs = _runtime(args, loaded, bar)
            r = evaluate_loaded(loaded, progress=bar, limit=args.limit)
        finally:
            bar.close()
        if decisions:  # torch's counter does not see the kernels: the count of the layers as the file defines them
            r["macs"] = dense_macs
        r["runtime"] = args.runtime
        r["dense_resident_bytes"] = dense_resident
        r["layers"] = [vars(d) for d in decisions]
        if args.json:
            print(json.dumps(dict(r, model=loaded.source), indent=2))
            return 0
        print(f"{loaded.source} (compressed file): {r['file_bytes']:,} bytes"
              + (f", {r['ratio']:.1f}x smaller than the dense model ({r['dense_bytes']:,} bytes)"
                 if r.get("ratio") else ""))
        _print_runtime(r, decisions)
        if r["macs"] is not None:
            print(f"MACs: {r['macs']:,}")
        if r["accuracy"]:
            print(f"accuracy ({r['accuracy']['data']}): {r['accuracy']['value']:.2%}")
        return 0
    plan = Plan.load(args.plan) if args.plan else Plan()
    bar = TextProgress("evaluating")
    try:
        result = evaluate_plan(loaded, plan, progress=bar, limit=args.limit)
    finally:
        bar.close()
    if args.json:
        result["model"] = loaded.source
        result["plan"] = args.plan
        print(json.dumps(result, indent=2))
        return 0
    _print_evaluation(loaded, args.plan, result)
    return 0


def _runtime(args, loaded, progress=None):
    """(decisions, resident bytes and MACs of the dense decode): the compressed runtime given to
    ``loaded.model`` when ``--runtime compressed`` asks for it (else no decisions and no MAC count)."""
    from explorer.engine.measure.metrics import model_macs, resident_bytes  # torch: after parsing
    from explorer.engine.storage import fileformat  # torch: after parsing

    dense = resident_bytes(loaded.model)
    if getattr(args, "runtime", "dense") != "compressed":
        return [], dense, None
    macs = model_macs(loaded.model, loaded.example_input) if loaded.example_input is not None else None
    decisions = fileformat.to_compressed_runtime(loaded.source, loaded.model, batch=args.runtime_batch,
                                                 prefer=args.prefer, progress=progress,
                                                 example_input=loaded.example_input)
    return decisions, dense, macs


def _print_runtime(r: dict, decisions: list) -> None:
    if r["runtime"] == "dense":
        print(f"resident weight memory: {r['resident_bytes']:,} bytes ({human_bytes(r['resident_bytes'])}, every "
              "tensor decoded; --runtime compressed computes on the stored form)")
        return
    print(f"resident weight memory (compressed runtime): {r['resident_bytes']:,} bytes "
          f"({human_bytes(r['resident_bytes'])}); dense decode {r['dense_resident_bytes']:,} bytes "
          f"({r['dense_resident_bytes'] / max(r['resident_bytes'], 1):.1f}x)")
    if decisions:
        rows = [[d.layer, d.chosen, f"{d.times['dense']:.3f}"] +
                [f"{d.times[k]:.3f}" if k in d.times else "-" for k in ("torch-csr", "csr", "csr-codes", "codes")]
                for d in decisions]
        print(table(rows, ["layer", "runs as", "dense ms", "torch-csr", "csr", "csr-codes", "codes"], "llrrrrr"))


def cmd_bench(args) -> int:
    from explorer.engine.measure.bench import bench_runtimes  # torch: after parsing

    loaded = _load(args)
    if loaded.kind != "compressed":
        raise LoadError(f"bench times a compressed file (.cexp); {loaded.source} is a {loaded.kind} model")
    if loaded.example_input is None:
        raise LoadError("bench needs an example input: give --input-shape")
    bar = TextProgress("benchmarking")
    try:
        out = bench_runtimes(loaded, batches=args.batch, threads=args.threads, prefer=args.prefer,
                             runtime_batch=args.runtime_batch, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(dict(out, model=loaded.source), indent=2))
        return 0
    rows = [[row["runtime"], str(row["batch"]), str(row["threads"]), f"{row['ms']:.3f}",
             f"{row['speedup']:.2f}x", f"{row['resident_bytes']:,}"] for row in out["rows"]]
    print(table(rows, ["runtime", "batch", "threads", "ms (median)", "vs dense", "resident bytes"], "lrrrrr"))
    print(f"equal outputs: largest difference from the dense decode {out['max_abs_diff']:.3g}")
    return 0


def _print_evaluation(loaded, plan_path, r) -> None:
    size = r["size"]
    print(f"{loaded.source} ({loaded.kind}), plan: {plan_path or '(none: dense)'}")
    labels = {"dense": "dense fp32", "pruned": "pruned (sparse, fp32 values)",
              "quantized": "quantized (codes + codebooks)", "coded": "entropy-coded (Huffman/rANS)",
              "file": "file (.cexp, with manifest)"}
    rows = [[labels[s], f"{size[s]:,}", human_bytes(size[s]), f"{size['dense'] / size[s]:.2f}x"]
            for s in ("dense", "pruned", "quantized", "coded", "file") if size.get(s)]
    print(table(rows, ["size by stage", "bytes", "", "ratio"], "lrrr"))
    m = r["macs"]
    if m["before"] is not None:
        eff = f"{m['effective']:,}" if m["effective"] is not None else "unknown for TorchScript"
        print(f"\nMACs: {m['before']:,} -> {m['after']:,} (effective, non-zero weights only: {eff})")
    acc = r.get("accuracy")
    if acc:
        print(f"accuracy ({acc['data']}): {acc['before']:.2%} -> {acc['after']:.2%}")
    fid = r.get("fidelity")
    if fid:
        print(f"output fidelity vs original ({fid['data']}): cosine {fid['cosine']:.4f}, "
              f"relative error {fid['rel_error']:.4f}")
    rows = []
    for l in r["layers"]:
        b = l["bits"]
        rows.append([l["name"], l["settings_summary"], f"{l['nonzero']:,}/{l['params_after']:,}",
                     human_bytes(b["dense"] / 8), human_bytes(b["pruned"] / 8), human_bytes(b["quantized"] / 8),
                     human_bytes(b["coded"] / 8), f"{b['dense'] / max(b['coded'], 1):.1f}x"])
    print()
    print(table(rows, ["layer", "settings", "nonzero", "dense", "pruned", "quantized", "coded", "ratio"],
                "llrrrrrr"))


def cmd_compress(args) -> int:
    from explorer.engine.compress import compress  # torch: after parsing
    from explorer.engine.plan import Plan  # torch: after parsing
    from explorer.engine.progress import scaled  # torch: after parsing
    from explorer.engine.storage import fileformat  # torch: after parsing

    loaded = _load(args)
    plan = Plan.load(args.plan)
    bar = TextProgress("compressing")
    try:
        # share: the result is only written (the plan's untouched weights are not copied: VGG-16's 142 MB)
        result = compress(loaded.model, plan, loaded.example_input, share=True,
                          progress=scaled(bar, 0.0, 0.9, "compress (1/2)"))
        predicted = fileformat.predicted_bytes(result, loaded, half=args.half)
        written = fileformat.save(result, args.output, loaded, half=args.half, progress=scaled(bar, 0.9, 1.0,
                                                                                              "write (2/2)"))
    finally:
        bar.close()
    dense = result.bytes["dense"]
    out = {"model": loaded.source, "plan": args.plan, "output": args.output, "predicted_bytes": predicted,
           "file_bytes": written, "dense_bytes": dense, "ratio": dense / written,
           "size": result.bytes}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    diff = (written - predicted) / predicted * 100 if predicted else 0.0
    print(f"wrote {args.output}: {written:,} bytes ({human_bytes(written)}); predicted {predicted:,} "
          f"({diff:+.2f}%); dense {dense:,} bytes -> {dense / written:.1f}x smaller")
    return 0


def _recipe(args, plan: Plan):
    """The plan's fine-tuning recipe with the command line's flags over it."""
    from explorer.engine.finetune.recipe import (check_recipe, parse_distill, parse_group_lasso,  # torch: after
                                                 parse_hints, parse_schedule)  # parsing

    changes = {k: getattr(args, k) for k in ("epochs", "lr", "optimizer", "batch_size", "seed", "weight_decay")
               if getattr(args, k) is not None}
    if args.distill is not None:
        changes["distill"] = parse_distill(args.distill)
    if args.schedule is not None:
        changes["schedule"] = None if args.schedule == "none" else parse_schedule(args.schedule)
    if args.hints is not None:
        changes["hints"] = None if args.hints == "none" else parse_hints(args.hints)
    if args.group_lasso is not None:
        changes["group_lasso"] = None if args.group_lasso == "none" else parse_group_lasso(args.group_lasso)
    return check_recipe(plan.finetune or {}).with_changes(**changes)


def _epoch_line(metric: str):
    def show(rec) -> None:
        val = "" if rec.val is None else f", validation {metric} {rec.val:.2%}"
        if rec.hint_loss is not None:
            val = f" (of which hints {rec.hint_loss:.4f})" + val
        if rec.group_norms:
            val += "; groups near zero (L2 < 0.01): " + ", ".join(
                f"{name} {sum(v < 0.01 for v in norms)}/{len(norms)}" for name, norms in rec.group_norms.items())
        print(f"epoch {rec.epoch} ({rec.phase}): loss {rec.loss:.4f}{val} [{rec.seconds:.1f} s]", file=sys.stderr,
              flush=True)
    return show


def _train_source(args, loaded) -> str:
    """``--train``, or for the bundled samples (and files made from them) their training split, ``digits``."""
    from explorer.engine.samples import SAMPLE_FACTORIES  # torch: after parsing

    if args.train:
        return args.train
    if loaded.factory in SAMPLE_FACTORIES:
        return "digits"
    raise LoadError("fine-tuning needs training data: give --train (a file as --data takes, module:callable, "
                    "FILE@START:STOP)")


def _run_finetune(args, loaded, plan: Plan, output, train_limit=None):
    """The fine-tuning ``finetune`` and ``auto --finetune`` share: the data (``--train``, ``--val``), the recipe
    (the plan's, the flags over it), the run (one line per epoch on stderr unless ``--json``), then the file
    written to ``output`` (with its record beside it) when one is named. Returns ``(result, recipe, record)``;
    the record's ``quality`` is the fine-tuned model's on the eval data."""
    from explorer.engine.finetune.data import load_train_data  # torch: after parsing
    from explorer.engine.finetune.trainer import finetune  # torch: after parsing
    from explorer.engine.measure.evaluate import quality  # torch: after parsing
    from explorer.engine.storage import fileformat  # torch: after parsing
    from explorer.engine.storage.atomic import atomic_write_bytes  # torch: after parsing

    recipe = _recipe(args, plan)
    train = load_train_data(_train_source(args, loaded), limit=train_limit)
    val = load_train_data(args.val) if args.val else None
    bar = TextProgress("fine-tuning", delay=0.0)
    metric = "accuracy" if (val.labelled if val is not None else train.labelled) else "agreement"
    try:
        result = finetune(loaded, plan, train, val, recipe, progress=bar,
                          on_epoch=None if args.json else lambda rec: (bar.close(), _epoch_line(metric)(rec)))
    finally:
        bar.close()
    comp = result.compressed
    predicted = fileformat.predicted_bytes(comp, loaded, half=args.half)
    written = fileformat.save(comp, output, loaded, half=args.half) if output else None
    record = dict(result.record, model=loaded.source, output=output, file_bytes=written, predicted_bytes=predicted,
                  dense_bytes=comp.bytes["dense"], quality=quality(loaded, comp.model))
    if output:
        atomic_write_bytes(output + ".finetune.json", (json.dumps(record, indent=2) + "\n").encode())
    return result, recipe, record


def _finetune_summary(result) -> str:
    best = "the plan's model before retraining" if result.best_epoch == 0 else f"epoch {result.best_epoch}"
    out = ""
    if result.cancelled:
        out = (f"interrupted: kept the best model so far ({best}, validation {result.metric} {result.best:.2%})\n"
               if result.best is not None else "interrupted: kept the model so far\n")
    return out + (f"trained on {result.record['train']}; validated on {result.record['validation']}; best: {best}"
                  + (f" (validation {result.metric} {result.best:.2%}, {result.before:.2%} before retraining)"
                     if result.best is not None and result.before is not None else ""))


def _set_threads(args) -> None:
    if getattr(args, "threads", None) is not None:  # small models train faster on fewer threads than torch's default
        import torch  # torch: after parsing

        torch.set_num_threads(args.threads)


def cmd_finetune(args) -> int:
    from explorer.engine.plan import Plan  # torch: after parsing

    _set_threads(args)
    loaded = _load(args)
    result, _, record = _run_finetune(args, loaded, Plan.load(args.plan), args.output, train_limit=args.limit)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    dense, written, q = record["dense_bytes"], record["file_bytes"], record["quality"]
    print(_finetune_summary(result))
    print(f"wrote {args.output}: {written:,} bytes ({human_bytes(written)}); predicted {record['predicted_bytes']:,}; "
          f"dense {dense:,} bytes -> {dense / written:.1f}x smaller; the run's record in {args.output}.finetune.json")
    if q and "after" in q:
        print(f"accuracy ({q['data']}): {q['before']:.2%} -> {q['after']:.2%}")
    elif q:
        print(f"output fidelity vs original ({q['data']}): cosine {q['cosine']:.4f}, relative error {q['rel_error']:.4f}")
    return 0


def _points_csv(points) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "kind", "value", "metric", "layer_bytes", "file_bytes", "note", "settings"])
    for p in points:
        w.writerow([p.layer, p.kind, f"{p.value:g}", "" if p.metric is None else f"{p.metric:.6f}",
                    "" if p.layer_bytes is None else p.layer_bytes, "" if p.file_bytes is None else p.file_bytes,
                    p.note, json.dumps(p.settings, sort_keys=True)])
    return buf.getvalue().encode()


def cmd_sensitivity(args) -> int:
    from explorer.engine.executor import make_executor  # torch: after parsing
    from explorer.engine.plan import Plan  # torch: after parsing
    from explorer.engine.sensitivity.scan import sensitivity  # torch: after parsing
    from explorer.engine.storage.atomic import atomic_write_bytes  # torch: after parsing

    loaded = _load(args)
    base = Plan.load(args.plan) if args.plan else None
    kinds = [k.strip() for k in args.what.split(",") if k.strip()]
    bar = TextProgress("scanning")
    try:
        with make_executor(args.ray) as ex:
            points = sensitivity(loaded, base, layers=args.layers, kinds=kinds, limit=args.limit, progress=bar,
                                 executor=ex)
    finally:
        bar.close()
    data = loaded.eval_data
    metric = "accuracy" if data.labels is not None else "agreement with the original"
    n = len(data) if args.limit is None else min(args.limit, len(data))
    out = {"model": loaded.source, "data": data.name, "samples": n, "metric": metric,
           "base_plan": args.plan, "points": [p.to_dict() for p in points]}
    if args.output:
        body = _points_csv(points) if args.output.lower().endswith(".csv") else \
            (json.dumps(out, indent=2) + "\n").encode()
        atomic_write_bytes(args.output, body)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{loaded.source}: {metric} on {data.name}, first {n} samples; each layer alone, the others "
          + ("as in " + args.plan if args.plan else "uncompressed"))
    for kind in kinds:
        rows, header = [], None
        for name in dict.fromkeys(p.layer for p in points):
            pts = [p for p in points if p.layer == name and p.kind == kind]
            header = header or [f"{p.value:g}" for p in pts]
            rows.append([name] + ["-" if p.metric is None else f"{100 * p.metric:.1f}" for p in pts])
        label = {"sparsity": "sparsity", "bits": "bits", "rank": "params kept"}[kind]
        print(f"\n{metric} (%) against {label}:")
        print(table(rows, ["layer"] + header, "l" + "r" * len(header)))
    if args.output:
        print(f"\nwrote {args.output} ({len(points)} points)")
    if args.png:
        from explorer.gui.qt_sensitivity_plot import render_png  # Qt only when a picture is asked for

        render_png(points, args.png, metric, f"{loaded.source}: each layer alone ({data.name}, {n} samples)")
        print(f"wrote {args.png}")
    return 0


def cmd_auto(args) -> int:
    from explorer.engine.executor import make_executor  # torch: after parsing
    from explorer.engine.plan import Plan  # torch: after parsing
    from explorer.engine.sensitivity.auto import auto_plan  # torch: after parsing

    if not args.finetune:
        given = [flag for flag, dest in FINETUNE_FLAGS if getattr(args, dest) not in (None, False)]
        if given:
            raise ExplorerError(f"auto: {given[0]} is an option of fine-tuning: add --finetune")
    _set_threads(args)
    loaded = _load(args)
    bar = TextProgress("choosing")
    try:
        with make_executor(args.ray) as ex:
            r = auto_plan(loaded, target_ratio=args.target_ratio, target_bytes=args.target_bytes,
                          target_macs=args.target_macs, max_drop=args.max_drop, limit=args.limit, progress=bar,
                          executor=ex)
    finally:
        bar.close()
    plan, ft = r.plan, None
    if args.finetune:  # the plan carries the recipe: `finetune --plan` repeats the run, to the byte
        plan = Plan(plan.default, plan.layers, plan.description, _recipe(args, plan).to_dict())
        result, _, record = _run_finetune(args, loaded, plan, args.cexp)
        ft = (result, record)
    plan.save(args.output)
    cost = "layer_bytes" if r.cost == "bytes" else "layer_macs"
    out = {"model": loaded.source, "plan": args.output, "target_bytes": r.target_bytes, "target_macs": r.target_macs,
           "file_bytes": r.file_bytes, "dense_bytes": r.dense_bytes, "ratio": r.dense_bytes / r.file_bytes,
           "macs": r.macs, "dense_macs": r.dense_macs, "accuracy_before": r.accuracy_before,
           "accuracy_after": r.accuracy_after, "met": r.met, "note": r.note,
           "choices": {n: {"sparsity": c[0], "bits": c[1], cost: c[2], "estimated_loss": c[3]}
                       for n, c in r.choices.items()}}
    if ft is not None:
        record = ft[1]
        q = record["quality"] or {}
        out["finetune"] = dict(record, ratio=record["dense_bytes"] / (record["file_bytes"] or record["predicted_bytes"]),
                               accuracy=q.get("after"))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = [[n, f"{c[0]:.0%}", str(c[1]), f"{c[2]:,}", f"{100 * c[3]:.2f}"] for n, c in r.choices.items()]
    print(table(rows, ["layer", "pruned", "bits", "bytes" if r.cost == "bytes" else "MACs", "est. loss (pts)"],
                "lrrrr"))
    if r.target_bytes is not None:
        print(f"\ntarget {r.target_bytes:,} bytes ({r.dense_bytes / r.target_bytes:.1f}x); ", end="")
    elif r.target_macs is not None:
        print(f"\ntarget {r.target_macs:,} effective MACs (of {r.dense_macs:,}); ", end="")
    else:
        print(f"\ntarget: at most {args.max_drop:g} points lost, the smallest plan found; ", end="")
    print(f"this plan writes {r.file_bytes:,} bytes ({r.dense_bytes / r.file_bytes:.1f}x)"
          + (f", {r.macs:,} effective MACs" if r.macs is not None else "") + ", measured")
    if r.accuracy_after is not None:
        print(f"accuracy ({loaded.eval_data.name}): {r.accuracy_before:.2%} -> {r.accuracy_after:.2%} measured; "
              f"estimated loss {100 * r.predicted_loss:.2f} points")
    if r.note:
        print(r.note)
    print(f"{'met' if r.met else 'not met'}" + (" (before retraining)" if ft else "") + f"; wrote {args.output}"
          + (" (with the fine-tuning recipe)" if ft else ""))
    if ft is not None:
        _print_auto_finetuned(args, loaded, r, *ft)
    return 0


def _print_auto_finetuned(args, loaded, r, result, record) -> None:
    print("\n" + _finetune_summary(result))
    dense, written, predicted = record["dense_bytes"], record["file_bytes"], record["predicted_bytes"]
    if written is not None:
        print(f"wrote {args.cexp}: {written:,} bytes ({human_bytes(written)}); the run's record in "
              f"{args.cexp}.finetune.json")
    q = record["quality"]
    ratio = dense / (written or predicted)
    if q and "after" in q:
        rows = [["dense", "1.0x", f"{q['before']:.2%}"],
                ["auto plan", f"{r.dense_bytes / r.file_bytes:.1f}x", f"{r.accuracy_after:.2%}"],
                ["auto plan, fine-tuned", f"{ratio:.1f}x", f"{q['after']:.2%}"]]
        print(table(rows, ["model", "ratio", f"accuracy ({q['data']})"], "lrr"))
    elif q:
        print(f"fine-tuned: {ratio:.1f}x; output fidelity vs original ({q['data']}): cosine {q['cosine']:.4f}, "
              f"relative error {q['rel_error']:.4f}")
    else:
        print(f"fine-tuned: {ratio:.1f}x")


def cmd_info(args) -> int:
    # the reader and the manifest's schema need neither torch nor numba: `info` answers at once
    from explorer.engine.storage.fileformat.manifest import HF_FACTORY  # after parsing (no torch)
    from explorer.engine.storage.fileformat.reader import read, summary  # after parsing (no torch)

    mf = read(args.file)
    info = summary(mf)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    arch = info["architecture"]
    print(f"{args.file}: {info['file_bytes']:,} bytes ({human_bytes(info['file_bytes'])}), "
          f"{info['producer']}")
    how = f"factory {arch.get('factory')}" if arch.get("kind") == "factory" else "embedded TorchScript graph"
    if arch.get("factory") == HF_FACTORY:
        config = arch.get("kwargs", {}).get("config", {})
        how = f"Hugging Face config ({config.get('model_type')}, {arch['kwargs'].get('auto_class')}) built by transformers"
    print(f"architecture: {how}" + (f" (sample {arch['sample']})" if arch.get("sample") else ""))
    acc = info.get("accounting") or {}
    if acc:
        dense = (acc["dense_bits"] + 7) // 8
        print(f"dense model: {dense:,} bytes -> {dense / info['file_bytes']:.1f}x smaller; header, stream table "
              f"and manifest: {info['header_and_manifest_bytes']:,} bytes")
    print(f"resident weight memory when loaded: {info['dense_resident_bytes']:,} bytes "
          f"({human_bytes(info['dense_resident_bytes'])}) decoded dense; `evaluate FILE --runtime compressed` "
          "measures the compressed runtime's")
    rows = [[t["name"], "x".join(map(str, t["shape"])) or "scalar", t["encoding"], f"{t['bytes']:,}"]
            for t in info["tensors"]]
    print(table(rows, ["tensor", "shape", "encoding", "bytes"], "lllr"))
    return 0


def _add_gui_parser(sub, vocabulary: dict) -> None:
    p = sub.add_parser("gui", help="open the explorer window (optionally on MODEL)", **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", help="plan JSON to start with")
    p.add_argument("--layer", metavar="NAME", help="start with this layer selected (as inspect names it; "
                   "several: fc1,fc2)")
    p.add_argument("--screenshot", metavar="PNG", help="render the window headless once measured, save it, exit")
    p.add_argument("--tab", choices=["histogram", "centroids", "sensitivity", "compare", "concepts"],
                   default="histogram", help="which tab the screenshot shows (sensitivity: once its scan is done; "
                   "compare: measures a few plans first, see the README)")
    p.add_argument("--concept", choices=CONCEPT_PAGES + tuple(CONCEPT_ALIASES),
                   help="start on the Concepts tab at this view ('teacher': the Teacher page, outputs)")
    p.add_argument("--restore", choices=["yes", "no"], help="answer the offer to restore a session that did not "
                   "end cleanly (default: ask; with --screenshot: leave it)")
    p.set_defaults(func=cmd_gui)


def _add_report_parser(sub, vocabulary: dict) -> None:
    p = sub.add_parser("report", help="a standalone HTML handout: every concept view (granularity, storage, "
                       "quantization, entropy, low rank, pipeline, graph, teacher) of MODEL under a plan, explained",
                       **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", help="the plan to explain (default: none, the dense model)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="the layers whose views it shows (repeatable; default: every layer of a model with up to "
                   "6, else the 3 largest)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from explorer.engine.plan import Plan  # torch: after parsing

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # drawn offscreen, never shown
    from explorer.gui.report import write_report  # Qt only for this verb, once offscreen is set

    loaded = _load(args)
    plan = Plan.load(args.plan) if args.plan else Plan()
    out = write_report(loaded, plan, args.output, args.layer, say=lambda m: print(f"  {m}", file=sys.stderr))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"wrote {out['path']}: {out['figures']} figures ({', '.join(out['layers'])}), {out['bytes']:,} bytes")
    return 0


def cmd_gui(args) -> int:
    from explorer.gui.app import run  # Qt only for this verb, and only after gui.app has checked for a display

    return run(args.model, plan=args.plan, factory=args.factory, trust=args.trust, data=args.data,
               screenshot=args.screenshot, tab="concepts" if args.concept else args.tab, debug=args.debug,
               layer=args.layer, concept=CONCEPT_ALIASES.get(args.concept, args.concept),
               restore=None if args.restore is None else args.restore == "yes")


def cmd_export(args) -> int:
    from explorer.engine.compress import compress  # torch: after parsing
    from explorer.engine.model.export import export  # torch: after parsing
    from explorer.engine.plan import Plan  # torch: after parsing

    loaded = _load(args)
    model = loaded.model
    if args.plan:
        model = compress(model, Plan.load(args.plan), loaded.example_input, share=True).model  # only exported
    out = export(model, loaded.example_input, args.output, fmt=args.format)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"wrote {out['path']}: {out['bytes']:,} bytes ({out['format']}, {out.get('method', '')})")
    return 0


# ---------------------------------------------------------------------------------------- parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bits(text: str) -> int:
    value = _positive(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"bits must be 1 to 8, got {value}")
    return value


def _add_ray_arg(p) -> None:
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="measure the points on Ray: alone, a local runtime on this machine's cores; with an address "
                   "(HOST:PORT, 'auto' or ray://HOST:10001), an existing cluster (needs the extra: "
                   "pip install 'compression-explorer[ray]')")


def _add_model_args(p) -> None:
    p.add_argument("model", nargs="?", help="model file, bundled sample name (digits-mlp, digits-cnn) "
                                            "or factory 'module:callable'")
    p.add_argument("--factory", help="'module:callable' that builds the architecture for a state_dict")
    p.add_argument("--trust", action="store_true",
                   help="allow unpickling a full pickled nn.Module (runs code from the file!)")
    p.add_argument("--data", help="eval data: IDX images file (labels beside it), .npz with x[, y], .npy, or a factory "
                   "package.module:callable returning EvalData, (x[, y]) or {'x', 'y'}")
    p.add_argument("--input-shape", help="example input shape for MACs when the model has none, e.g. 1,3,32,32")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


#: the fine-tuning options (flag, attribute) ``finetune`` and ``auto --finetune`` share
FINETUNE_FLAGS = (("--train", "train"), ("--val", "val"), ("--epochs", "epochs"), ("--lr", "lr"),
                  ("--optimizer", "optimizer"), ("--batch-size", "batch_size"), ("--weight-decay", "weight_decay"),
                  ("--seed", "seed"), ("--distill", "distill"), ("--schedule", "schedule"), ("--hints", "hints"),
                  ("--group-lasso", "group_lasso"),
                  ("--half", "half"), ("--cexp", "cexp"))


def _add_finetune_args(p) -> None:
    p.add_argument("--train", "--train-data", dest="train", help="training data: digits (the samples' training "
                   "split, the default for them), a file as --data takes, or module:callable returning a "
                   "DataLoader/Dataset/arrays; FILE@START:STOP slices")
    p.add_argument("--val", help="validation data (default: the last tenth of --train, held out)")
    p.add_argument("--epochs", type=int, help="epochs of retraining after the plan is applied")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, help="fixes the run: the same command twice writes the same bytes")
    p.add_argument("--distill", metavar="T,ALPHA", help="distil from the uncompressed model: temperature, soft weight")
    p.add_argument("--hints", metavar="LAYER[,LAYER][:WEIGHT]",
                   help="FitNets feature-map distillation from the uncompressed model's layers (teacher=student "
                   "to pair different names; a 1x1 regressor where widths differ), e.g. conv2,fc1:0.5; none")
    p.add_argument("--group-lasso", metavar="STRENGTH[:EPOCHS]",
                   help="structured sparsity learning first (Wen et al. 2016): EPOCHS (default 4) of the "
                   "uncompressed model with STRENGTH x the groups' L2 norms (the filters and channels the plan "
                   "removes) in the loss, e.g. 0.01:6; none")
    p.add_argument("--schedule", metavar="KIND[:STEPS[:EPOCHS]]",
                   help="gradual pruning first: iterative or polynomial (Zhu & Gupta), e.g. polynomial:4:2; none")
    p.add_argument("--threads", type=_positive, help="torch threads (default torch's: one per core); small models "
                   "train faster on one")
    p.add_argument("--half", action="store_true", help="store uncompressed tensors (biases, norms) as float16")


def plan_vocabulary() -> str:
    """What a plan may name, read from the registries (a method registered before the parser is built is
    listed too): the epilog of the verbs that take a plan, built when their help is asked for. The
    registries' names need neither torch nor numba, so ``--help`` answers at once."""
    from explorer.engine.methods.factorisations import FACTORISATIONS  # when help is asked for (no torch)
    from explorer.engine.methods.granularities import CRITERIA, GRANULARITIES  # when help is asked for (no torch)
    from explorer.engine.methods.inits import INITS  # when help is asked for (no torch)
    from explorer.engine.methods.quantizers import QUANTIZERS  # when help is asked for (no torch)
    from explorer.engine.storage.coders import CODERS  # when help is asked for (no torch)

    lines = ["plan methods (see README, The plan):",
             f"  prune.granularity: {', '.join(GRANULARITIES)}",
             "  prune.criterion:"]
    lines += [f"    {c.name:<10} {c.description}" for c in CRITERIA.values()]
    lines += [
             "  quantize.method:"]
    lines += [f"    {q.name:<10} {q.summary}" for q in QUANTIZERS.values()]
    lines += [f"  quantize.init (kmeans): {', '.join(INITS)}",
              "  lowrank.method (auto: svd for Linear and Embedding, tucker2 for convolutions):"]
    lines += [f"    {f.name:<10} {f.applies}: {f.summary}; int rank = {f.rank}" for f in FACTORISATIONS.values()]
    lines += [
              "streams in the .cexp file: raw, or the cheapest coder of " + ", ".join(CODERS)]
    return "\n".join(lines)


class UsageError(Exception):
    """An argument the parser refuses: raised by :meth:`Parser.error` so that :func:`main` says it (on stderr
    as argparse would, and as JSON on stdout under ``--json``) and returns its status instead of exiting."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser, self.message = parser, message


class Parser(argparse.ArgumentParser):
    """argparse's parser, with an epilog made only when the help is printed (``epilog_fn``) and usage errors
    raised as :class:`UsageError` rather than printed and exited on."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog, self.epilog_fn = self.epilog_fn(), None
        return super().format_help()

    def error(self, message: str):
        raise UsageError(self, message)


def _add_runtime_args(p, default) -> None:
    if default is not None:
        p.add_argument("--runtime", choices=["dense", "compressed"], default=default,
                       help="a .cexp file: decode every tensor dense (default), or run the layers whose stored "
                       "form pays off on it (sparse rows, shared-weight codes; chosen by timing each)")
    p.add_argument("--prefer", choices=["speed", "memory"], default="speed",
                   help="compressed runtime: the fastest form of a layer (default), or the smallest")
    p.add_argument("--runtime-batch", type=_positive, default=1, metavar="N",
                   help="compressed runtime: the batch size its forms are timed at (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="compression-explorer",
                                     description="Compress neural networks layer by layer and measure the result.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    p = sub.add_parser("inspect", help="per-layer table: shape, params, MACs, weight and layer bytes, removable "
                       "channels")
    _add_model_args(p)
    p.add_argument("--quiet", action="store_true", help="omit the reasons channels cannot be removed")
    p.add_argument("--inits", type=_bits, metavar="BITS",
                   help="also compare every k-means initialisation at BITS bits")
    p.set_defaults(func=cmd_inspect)
    vocabulary = dict(epilog_fn=plan_vocabulary, formatter_class=argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser("evaluate", help="apply a plan: size by stage, MACs, accuracy before/after; without --plan, "
                       "the baseline (the uncompressed model's size, MACs and accuracy); a .cexp file: as stored",
                       **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", help="plan JSON (default: none, the baseline: the dense model measured as it is)")
    p.add_argument("--limit", type=_positive, help="evaluate on the first N samples only")
    _add_runtime_args(p, "dense")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("bench", help="time a .cexp file's model, dense decode against the compressed runtime "
                       "(latency per batch, resident weight memory)", **vocabulary)
    _add_model_args(p)
    p.add_argument("--batch", type=_positive, nargs="+", default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--threads", type=_positive, nargs="+", help="torch/numba threads (default: 1 and all)")
    _add_runtime_args(p, None)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("compress", help="apply a plan and write the compressed file (.cexp)", **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON")
    p.add_argument("-o", "--output", required=True, help="file to write (written atomically)")
    p.add_argument("--half", action="store_true", help="store uncompressed tensors (biases, norms) as float16")
    p.set_defaults(func=cmd_compress)
    p = sub.add_parser("finetune", help="compress with a plan, retrain (masks kept, centroids trained), write .cexp",
                       **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON (its \"finetune\" section is the recipe; flags override)")
    _add_finetune_args(p)
    p.add_argument("--limit", type=_positive, help="train on the first N samples only")
    p.add_argument("-o", "--output", required=True, help="file to write (written atomically)")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("sensitivity", help="per layer, accuracy against its sparsity, bits and rank (others untouched)",
                       **vocabulary)
    _add_model_args(p)
    p.add_argument("--plan", help="base plan: the other layers keep it, and it gives each layer's granularity and "
                   "quantization method (default: nothing compressed)")
    p.add_argument("--layers", help="glob of the layers to scan (default: all)")
    p.add_argument("--what", default=",".join(KINDS), help="what to vary: sparsity,bits,rank (default: all three)")
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT,
                   help=f"evaluate on the first N samples (default {DEFAULT_LIMIT})")
    p.add_argument("-o", "--output", help="write the points: .json or .csv (written atomically)")
    p.add_argument("--png", metavar="PLOT.png", help="draw them: one plot per kind, one curve per layer")
    _add_ray_arg(p)
    p.set_defaults(func=cmd_sensitivity)
    p = sub.add_parser("auto", help="choose per-layer settings for a size target from the layers' sensitivity")
    _add_model_args(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-ratio", type=float, help="the dense size over the file's, e.g. 30")
    target.add_argument("--target-bytes", type=int, help="the file's size at most")
    target.add_argument("--target-macs", type=int, help="effective multiply-accumulates (nonzero weights') at most")
    p.add_argument("--max-drop", type=float, help="accuracy points the plan may lose, measured; alone: the smallest "
                   "plan found within it")
    _add_ray_arg(p)
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="evaluate on the first N samples")
    p.add_argument("-o", "--output", required=True, help="the plan to write (JSON, written atomically; with "
                   "--finetune its \"finetune\" section is the recipe used)")
    g = p.add_argument_group("fine-tuning the plan (the finetune verb's options)")
    g.add_argument("--finetune", action="store_true", help="then fine-tune the plan's model and report the accuracy "
                   "dense, after the plan and fine-tuned, with the ratios")
    g.add_argument("--cexp", metavar="OUT.cexp", help="write the fine-tuned model (and OUT.cexp.finetune.json, the "
                   "run's record)")
    _add_finetune_args(g)
    p.set_defaults(func=cmd_auto)
    p = sub.add_parser("info", help="summarise a compressed file: architecture, per-tensor encodings and bytes")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_info, model="-")
    _add_report_parser(sub, vocabulary)
    _add_gui_parser(sub, vocabulary)
    p = sub.add_parser("export", help="standard exports: dense state_dict (.safetensors/.pt), TorchScript, ONNX")
    _add_model_args(p)
    p.add_argument("--plan", help="compress with this plan first")
    p.add_argument("-o", "--output", required=True, help="output path; the format follows the extension")
    p.add_argument("--format", choices=["state_dict", "torchscript", "onnx"], help="override the extension")
    p.set_defaults(func=cmd_export)
    return parser


#: the outputs each verb writes (attributes of its arguments): checked before any work, see _check_outputs
OUTPUTS = {"compress": ("output",), "finetune": ("output",), "export": ("output",), "auto": ("output", "cexp"),
           "sensitivity": ("output", "png"), "report": ("output",)}


def _check_outputs(args) -> None:
    """Refuse, before loading anything, an output whose folder is missing or read-only (a scan or a training
    run would otherwise end in that error minutes later); a full disk shows at the write itself."""
    from explorer.engine.storage.atomic import check_writable  # torch: after parsing

    for dest in OUTPUTS.get(args.verb, ()):
        path = getattr(args, dest, None)
        if path:
            check_writable(path)


#: the engine modules each verb imports when it runs, beyond the loaders every verb needs (see _start)
ENGINE = {"inspect": ("explorer.engine.inspect",), "evaluate": ("explorer.engine.measure.evaluate",),
          "bench": ("explorer.engine.measure.bench",),
          "compress": ("explorer.engine.compress",),
          "export": ("explorer.engine.compress", "explorer.engine.model.export"),
          "finetune": ("explorer.engine.finetune.trainer",), "auto": ("explorer.engine.sensitivity.auto",),
          "sensitivity": ("explorer.engine.sensitivity.scan", "explorer.engine.executor"),
          "report": ("explorer.engine.measure.evaluate",)}  # info: no torch


def _start(args) -> None:
    """Import torch and the engine a verb uses under a spinner (seconds on a cold start), before the verb
    prints anything; its own imports are then already done. ``gui`` is left to check for a display first."""
    if args.verb not in ENGINE:
        return
    with Spinner("loading torch and the engine..."):
        for name in ("explorer.engine.model.loading",) + ENGINE[args.verb]:
            importlib.import_module(name)


def _fail(json_out: bool, message: str, kind: str) -> None:
    """A failure said: one ``error:`` line on stderr, and under ``--json`` ``{"error", "kind"}`` on stdout."""
    print(f"error: {message}", file=sys.stderr)
    if json_out:
        print(json.dumps({"error": message, "kind": kind}))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        if args.verb != "gui" and getattr(args, "model", None) is None and getattr(args, "factory", None) is None:
            parser.error(f"{args.verb}: give a MODEL (file, sample name or module:callable)")
        if getattr(args, "layer", None) and args.verb == "gui" and not (args.model or args.factory):
            parser.error("gui --layer: give the MODEL whose layer it is")
    except UsageError as exc:  # argparse's words on stderr; under --json the same as JSON on stdout
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        if "--json" in argv:
            print(json.dumps({"error": exc.message, "kind": "usage"}))
        return EXIT_USAGE

    json_out = bool(getattr(args, "json", False))
    try:
        _check_outputs(args)
        _start(args)
        return args.func(args)
    except ExplorerError as exc:
        if args.debug:
            raise
        _fail(json_out, str(exc), exc.kind)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if json_out:
            print(json.dumps({"error": "interrupted", "kind": "interrupted"}))
        return 130
    except Exception as exc:  # an engine bug or an unexpected failure of user code: one line unless --debug
        if args.debug:
            raise
        _fail(json_out, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", "internal")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
