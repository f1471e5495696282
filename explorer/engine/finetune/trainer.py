"""Fine-tuning a plan's compressed model: gradual pruning (optional), the plan applied, then retraining under
the constraints of :mod:`explorer.engine.finetune.constraints`, the best epoch on the validation data kept.

:func:`finetune` returns a :class:`FinetuneResult` whose ``compressed`` is an ordinary
:class:`~explorer.engine.compress.Compressed`: its model is the trained one and its per-tensor results are
what the file stores for it (the same masks, the same codes for k-means with the trained centroids), so
:func:`~explorer.engine.storage.fileformat.save` writes it, the size predicted is the size written, and the
file loads back into exactly the trained weights.

Long work reports ``progress(fraction, message)`` after every batch; a callback that returns ``False`` (or a
``KeyboardInterrupt``) stops it at that point and the best model so far is returned, marked ``cancelled``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.compress import Compressed, compress
from explorer.engine.errors import Cancelled, CompressionError, PlanError
from explorer.engine.finetune.constraints import constraints_of
from explorer.engine.finetune.data import TrainData, check_train_data
from explorer.engine.measure.datafit import model_label, own_example
from explorer.engine.finetune.recipe import Distill, Recipe, check_recipe
from explorer.engine.measure.metrics import compressible_layers
from explorer.engine.methods.channels import layer_ranking
from explorer.engine.plan import LayerSettings, Plan
from explorer.engine.progress import ProgressFn, report

EVAL_BATCH = 256


@dataclass
class EpochRecord:
    epoch: int  # counted over the whole run, from 1
    phase: str  # e.g. "prune 2/4 (52% of the target)" or "retrain"
    loss: float  # mean training loss of the epoch
    val: Optional[float]  # validation accuracy (agreement with the original where there are no labels)
    seconds: float
    hint_loss: Optional[float] = None  # the mean feature-map (FitNets) term of the loss, when hints are given
    group_norms: Optional[dict] = None  # group lasso: layer -> the L2 norm of each of its groups after the epoch


@dataclass
class FinetuneResult:
    compressed: Compressed
    history: list  # EpochRecord per epoch
    metric: str  # "accuracy" or "agreement" (top-1 agreement with the uncompressed model)
    before: Optional[float]  # the validation metric of the plan's model before retraining
    best: Optional[float]  # the validation metric of the model returned
    best_epoch: int  # 0: the model before retraining was the best
    cancelled: bool
    record: dict = field(default_factory=dict)  # data, split, recipe, plan, history: what reproduces the run


def _scales(recipe: Recipe) -> list:
    """The fraction of each layer's target sparsity reached at each pruning step."""
    s = recipe.schedule
    n = s.steps
    if s.kind == "iterative":
        return [(i + 1) / n for i in range(n)]
    return [1.0 - (1.0 - (i + 1) / n) ** 3 for i in range(n)]  # Zhu & Gupta 2017, from 0 to the target


def _step_plan(settings: dict, scale: float) -> Plan:
    """Element pruning only, each layer at ``scale`` of its target (no quantization yet)."""
    layers = {}
    for name, s in settings.items():
        p = s.prune
        if p is None or not p.amount:
            layers[name] = {"prune": None, "quantize": None, "lowrank": None}
            continue
        amount = p.amount * scale if isinstance(p.amount, float) else int(round(p.amount * scale))
        layers[name] = {"prune": {"amount": amount, "granularity": "element", "criterion": p.criterion},
                        "quantize": None, "lowrank": None}
    return Plan(LayerSettings(), layers)


def _check_schedule(settings: dict) -> None:
    for name, s in settings.items():
        if s.changes_shapes:
            raise PlanError(f"layer '{name}': a pruning schedule prunes weights gradually; structured pruning and "
                            "low-rank change shapes and are applied at once (run without a schedule)")


def _loss(out, y, teacher_out, distill: Optional[Distill]):
    hard = F.cross_entropy(out, y) if y is not None else None
    if distill is None:
        return hard
    t = distill.temperature
    soft = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(teacher_out / t, dim=1), reduction="batchmean",
                    log_target=True) * (t * t)
    return soft if hard is None else (1.0 - distill.alpha) * hard + distill.alpha * soft


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CompressionError(f"a hint layer returned {type(out).__name__}, not a tensor")


class _Hints:
    """FitNets hints (Romero et al. 2015): forward hooks on the paired teacher and student layers keep their
    outputs; the loss is the mean over pairs of the mean squared error between the teacher's feature map and
    the student's, passed through a 1x1 regressor where the widths differ (trained with the student and then
    discarded: it is not part of the compressed model)."""

    def __init__(self, hints, teacher: nn.Module):
        self.hints, self.teacher = hints, teacher
        self.seen_teacher: dict = {}
        self.seen_student: dict = {}
        self.handles: list = []
        self.regressors = nn.ModuleDict()
        for t_name, _ in hints.layers:
            self._module(teacher, t_name, "the uncompressed model")
            self.handles.append(self._module(teacher, t_name, "").register_forward_hook(self._keep(self.seen_teacher, t_name)))
        self.student = None

    @staticmethod
    def _module(model, name, what):
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise CompressionError(f"hints: {what or 'the model'} has no layer {name!r}") from None

    @staticmethod
    def _keep(store, key):
        def hook(_m, _args, out):
            store[key] = _first_tensor(out)
        return hook

    def unbind(self) -> None:
        """Remove the hooks on the student (before it is copied: a copy would carry them)."""
        for h in self.handles[len(self.hints.layers):]:
            h.remove()
        del self.handles[len(self.hints.layers):]

    def bind(self, student: nn.Module, x: torch.Tensor) -> list:
        """Hook ``student``'s layers, build the regressors from one batch ``x``; their parameters, to train."""
        self.unbind()
        for _, s_name in self.hints.layers:
            mod = self._module(student, s_name, "the compressed model")
            self.handles.append(mod.register_forward_hook(self._keep(self.seen_student, s_name)))
        self.student = student
        with torch.no_grad():
            self.teacher(x)
            was = student.training
            student.eval()
            try:
                student(x)
            finally:
                student.train(was)
        for t_name, s_name in self.hints.layers:
            key = f"{t_name}->{s_name}".replace(".", "_")
            if key in self.regressors:
                continue
            ft, fs = self.seen_teacher[t_name], self.seen_student[s_name]
            if ft.dim() != fs.dim() or ft.shape[2:] != fs.shape[2:] or ft.dim() < 2:
                raise CompressionError(f"hints: {t_name} gives {tuple(ft.shape)} and {s_name} {tuple(fs.shape)}: "
                                       "the feature maps must agree but for their width (dimension 1)")
            if ft.shape[1] == fs.shape[1]:
                self.regressors[key] = nn.Identity()
            else:
                cs, ct = int(fs.shape[1]), int(ft.shape[1])
                self.regressors[key] = (nn.Linear(cs, ct) if fs.dim() == 2 else
                                        nn.Conv1d(cs, ct, 1) if fs.dim() == 3 else nn.Conv2d(cs, ct, 1))
        return list(self.regressors.parameters())

    def loss(self) -> torch.Tensor:
        terms = []
        for t_name, s_name in self.hints.layers:
            r = self.regressors[f"{t_name}->{s_name}".replace(".", "_")]
            terms.append(F.mse_loss(r(self.seen_student[s_name]), self.seen_teacher[t_name].detach()))
        return self.hints.weight * torch.stack(terms).mean()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class _GroupLasso:
    """Structured sparsity learning (Wen et al. 2016): ``strength * sum_g ||W_g||_2`` over the groups the plan
    removes -- the rows (filters) of a filter-pruned layer, the input channels (a flatten's block of columns
    each) of a channel-pruned one -- added to the loss of the uncompressed model's training."""

    def __init__(self, gl, settings: dict, model: nn.Module, example_input):
        self.strength = gl.strength
        self.layers: dict = {}  # name -> (granularity, channels)
        for name, s in settings.items():
            if s.removes_channels and s.prune.granularity in ("filter", "channel"):
                weight = model.get_submodule(name).weight
                n = weight.shape[0]
                if s.prune.granularity == "channel":
                    n = len(layer_ranking(model, example_input, name, "channel", s.prune.amount).norms)
                self.layers[name] = (s.prune.granularity, int(n))
        if not self.layers:
            raise PlanError("group lasso drives the groups that filter or channel pruning removes to zero: the plan "
                            "prunes no layer by filter or channel")

    def _norms(self, model: nn.Module, name: str) -> torch.Tensor:
        granularity, n = self.layers[name]
        w = model.get_submodule(name).weight
        groups = w.flatten(1) if granularity == "filter" else w.transpose(0, 1).reshape(n, -1)
        return groups.norm(dim=1)

    def loss(self, model: nn.Module) -> torch.Tensor:
        return self.strength * sum(self._norms(model, name).sum() for name in self.layers)

    def norms(self, model: nn.Module) -> dict:
        with torch.no_grad():
            return {name: [round(float(v), 6) for v in self._norms(model, name)] for name in self.layers}


class _Run:
    """One fine-tuning run's state: the teacher, the data, the recipe, the epoch counter, the progress."""

    def __init__(self, loaded, recipe: Recipe, train: TrainData, val: TrainData, progress: ProgressFn,
                 on_epoch: Optional[Callable]):
        self.recipe, self.train, self.val = recipe, train, val
        self.progress, self.on_epoch = progress, on_epoch
        self.labels = train.labelled
        self.distill = recipe.distill if self.labels or recipe.distill else Distill(alpha=1.0)
        self.metric = "accuracy" if val.labelled else "agreement"
        # the uncompressed model, when its outputs are needed: a copy in eval mode (the caller's model may be
        # in use by other threads, and a model in training mode would update its norms' statistics)
        self.teacher = None
        if self.distill is not None or self.metric == "agreement" or recipe.hints is not None:
            self.teacher = copy.deepcopy(loaded.model).eval()
            self.teacher.requires_grad_(False)
        self.hints = _Hints(recipe.hints, self.teacher) if recipe.hints is not None else None
        self.group_norms_before = None  # group lasso: each group's norm before its first epoch
        self.references: list = []  # agreement: the teacher's predictions of each validation batch
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.total = max(recipe.total_epochs(), 1)
        self.epoch = 0
        self.history: list = []
        per_epoch = len(train) or 1
        self.batches = max(1, -(-per_epoch // recipe.batch_size))

    def optimizer(self, model: nn.Module, constraints: list):
        managed = {id(c.param) for c in constraints}
        params, seen = [], set()
        for p in [p for p in model.parameters() if id(p) not in managed] + \
                [t for c in constraints for t in c.trainable()]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        if self.hints is not None:  # the regressors train with the student
            x, _ = next(iter(self.train.epoch(self.recipe.batch_size, torch.Generator().manual_seed(0))))
            for p in self.hints.bind(model, x):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        r = self.recipe
        if r.optimizer == "sgd":
            return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)

    def train_epoch(self, model: nn.Module, constraints: list, opt, phase: str, penalty=None) -> EpochRecord:
        t0 = time.perf_counter()
        self.epoch += 1
        model.train()
        total, n, hinted = 0.0, 0, 0.0
        for i, (x, y) in enumerate(self.train.epoch(self.recipe.batch_size, self.generator)):
            for c in constraints:
                c.forward_values()
            opt.zero_grad(set_to_none=True)
            out = model(x)
            teacher_out = None
            if self.distill is not None or self.hints is not None:
                with torch.no_grad():
                    teacher_out = self.teacher(x)
            loss = _loss(out, y if self.labels else None, teacher_out, self.distill)
            if self.hints is not None:
                hint = self.hints.loss()
                hinted += float(hint.detach()) * int(x.shape[0])
                loss = loss + hint
            if penalty is not None:
                loss = loss + penalty.loss(model)
            loss.backward()
            for c in constraints:
                c.after_backward()
            opt.step()
            for c in constraints:
                c.after_step()
            total += float(loss.detach()) * int(x.shape[0])
            n += int(x.shape[0])
            done = (self.epoch - 1 + min((i + 1) / self.batches, 1.0)) / self.total
            report(self.progress, min(done, 1.0), f"epoch {self.epoch}/{self.total} ({phase}): loss {total / n:.4f}")
        val = self.score(model, constraints)
        record = EpochRecord(self.epoch, phase, total / max(n, 1), val, time.perf_counter() - t0,
                             hinted / max(n, 1) if self.hints is not None else None,
                             penalty.norms(model) if penalty is not None else None)
        self.history.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        return record

    def score(self, model: nn.Module, constraints: list) -> Optional[float]:
        """The validation metric of ``model`` as it would be stored (uniform weights on their grid)."""
        for c in constraints:
            c.forward_values()
        was = model.training
        model.eval()
        right = seen = 0
        try:
            with torch.no_grad():
                for i, (x, y) in enumerate(self._val_batches()):
                    pred = model(x).argmax(dim=1)
                    right += int((pred == (y if self.metric == "accuracy" else self._reference(i, x))).sum())
                    seen += int(x.shape[0])
        finally:
            model.train(was)
            for c in constraints:
                c.trained_values()
        return right / seen if seen else None

    def _reference(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The uncompressed model's predictions of validation batch ``i``: computed once, on the first epoch's
        scoring, where the batches are the same every epoch (tensors; a loader's own order may change)."""
        if self.val.loader is not None:
            return self.teacher(x).argmax(dim=1)
        if i == len(self.references):
            self.references.append(self.teacher(x).argmax(dim=1))
        return self.references[i]

    def _val_batches(self):
        if self.val.data is not None:
            yield from self.val.data.batches(EVAL_BATCH)
        else:
            yield from self.val.epoch(EVAL_BATCH, torch.Generator().manual_seed(0))


def _snapshot(model: nn.Module, constraints: list) -> tuple:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, [c.snapshot() for c in constraints])


def _restore(model: nn.Module, constraints: list, snap: tuple) -> None:
    model.load_state_dict(snap[0])
    for c, state in zip(constraints, snap[1]):
        c.restore(state)


def _stored(compressed: Compressed, constraints: list) -> Compressed:
    """``compressed`` with every tensor's stored form taken from its trained weight."""
    results = iter([c.result() for c in constraints])
    layers = {name: replace(lr, tensors=[next(results) for _ in lr.tensors]) for name, lr in compressed.layers.items()}
    compressed.model.eval()
    return replace(compressed, layers=layers)


def finetune(loaded, plan: Plan, train: TrainData, val: Optional[TrainData] = None, recipe: Optional[Recipe] = None,
             progress: ProgressFn = None, on_epoch: Optional[Callable] = None) -> FinetuneResult:
    """Compress ``loaded`` by ``plan`` and retrain it on ``train`` (see the module's docstring).

    ``recipe`` defaults to the plan's ``"finetune"`` section (or the defaults of
    :class:`~explorer.engine.finetune.recipe.Recipe`). Without ``val`` the last ``recipe.val_fraction`` of
    ``train`` is held out. ``on_epoch(EpochRecord)`` is called after every epoch (from the calling thread).
    """
    model = loaded.model
    if isinstance(model, torch.jit.ScriptModule):
        raise CompressionError("fine-tuning needs an eager model (a factory, a sample or a trusted pickle), "
                               "not a TorchScript graph")
    recipe = check_recipe(recipe if recipe is not None else (plan.finetune or {}))
    fits = {"example": own_example(loaded), "model_name": model_label(loaded.source)}
    check_train_data(model, train, **fits)
    if val is None:
        train, val = train.split(recipe.val_fraction)
    else:
        check_train_data(model, val, "validation data", **fits)
    settings = plan.resolve([n for n, _ in compressible_layers(model)])
    if recipe.schedule is not None:
        _check_schedule(settings)
    torch.manual_seed(recipe.seed)
    run = _Run(loaded, recipe, train, val, progress, on_epoch)
    t0 = time.perf_counter()
    cancelled = False
    current = model
    try:
        if recipe.group_lasso is not None:  # SSL: the uncompressed model learns to empty the groups the plan removes
            ssl = _GroupLasso(recipe.group_lasso, settings, model, loaded.example_input)
            run.group_norms_before = ssl.norms(model)
            dense = copy.deepcopy(model)
            opt = run.optimizer(dense, [])
            for _ in range(recipe.group_lasso.epochs):
                run.train_epoch(dense, [], opt, "group lasso", penalty=ssl)
            current = dense
        report(progress, 0.0, "compressing")
        if recipe.schedule is not None:
            for step, scale in enumerate(_scales(recipe)):
                # a saliency criterion ranks the trained weights on the same calibration data as the loaded
                # model's (the LoadedModel registers them; held while they are compressed)
                trained = replace(loaded, model=current)  # noqa: F841
                if run.hints is not None:
                    run.hints.unbind()
                comp = compress(current, _step_plan(settings, scale), loaded.example_input, count=False)
                constraints = constraints_of(comp)
                opt = run.optimizer(comp.model, constraints)
                phase = f"prune {step + 1}/{recipe.schedule.steps} ({scale:.0%} of the target)"
                for _ in range(recipe.schedule.epochs_per_step):
                    run.train_epoch(comp.model, constraints, opt, phase)
                current = comp.model
    except (Cancelled, KeyboardInterrupt):  # the plan is still applied, to the model of the last whole step
        cancelled = True
    trained = replace(loaded, model=current)  # noqa: F841 (held: its weights' saliencies, see above)
    if run.hints is not None:
        run.hints.unbind()  # a copy of a hooked model would carry the hooks
    comp = compress(current, plan, loaded.example_input)
    constraints = constraints_of(comp)
    before = run.score(comp.model, constraints)
    best, best_epoch, snap = before, 0, _snapshot(comp.model, constraints)
    if not cancelled:
        try:
            opt = run.optimizer(comp.model, constraints)
            for _ in range(recipe.epochs):
                rec = run.train_epoch(comp.model, constraints, opt, "retrain")
                if rec.val is not None and (best is None or rec.val > best):
                    best, best_epoch, snap = rec.val, rec.epoch, _snapshot(comp.model, constraints)
        except (Cancelled, KeyboardInterrupt):
            cancelled = True
    if run.hints is not None:
        run.hints.close()  # the student's hooks go with the regressors: the model written is the plan's alone
    _restore(comp.model, constraints, snap)  # the best epoch (the first of equals), or before retraining
    out = _stored(comp, constraints)
    record = {"train": train.name, "validation": val.name, "metric": run.metric,
              "eval": loaded.eval_data.name if loaded.eval_data is not None else None,
              "recipe": recipe.to_dict(), "distill_used": asdict(run.distill) if run.distill else None,
              "plan": plan.to_dict(), "history": [asdict(h) for h in run.history], "before": before,
              "group_norms_before": run.group_norms_before,
              "best": best, "best_epoch": best_epoch, "cancelled": cancelled,
              "seconds": round(time.perf_counter() - t0, 2), "torch_threads": torch.get_num_threads()}
    if not cancelled:
        try:
            report(progress, 1.0, "done")
        except Cancelled:  # too late to stop anything: the run is complete
            pass
    return FinetuneResult(out, run.history, run.metric, before, best, best_epoch, cancelled, record)

