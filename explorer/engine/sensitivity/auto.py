"""Automatic per-layer settings for a target — a file size (or ratio), a MACs budget, or a maximum accuracy
drop — from the sensitivity curves.

Each layer's candidates are the pairs (sparsity s, bits b) of its scan's grids; a candidate's bytes are
measured by the previewer (exact), its accuracy loss estimated as the sum of the layer's single-kind losses
at s and at b (ties broken toward the gentler setting: :data:`TIE_BREAK`); only Pareto-efficient candidates
are kept (no other is both smaller and no worse). The choice is a multiple-choice knapsack: its Lagrangian
(for a price per byte every layer takes the candidate of least ``loss + price * bytes``; the price bisected
to the cheapest that fits), then a greedy fill of the slack
(the upgrade of least price per byte saved that still fits, until none does: no layer can take its next
larger candidate without missing the target). The combined plan is then measured — layers interact, the sum
of single-layer drops is not the drop — and, given ``max_drop``, the budget is bisected between the target and
the dense size for the smallest plan whose measured drop is within it: the closest pair this model allows
without retraining, said as such. A maximum drop alone bisects from the smallest plan the grids allow. A MACs
budget is the same knapsack with each candidate's effective MACs (its nonzero weights' multiply-accumulates,
measured by the previewer) as its cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from explorer.engine.cache import Recent
from explorer.engine.errors import ExplorerError, PlanError
from explorer.engine.executor import InProcess, Workload
from explorer.engine.measure.metrics import accuracy
from explorer.engine.measure.preview import Previewer
from explorer.engine.plan import LayerSettings, Plan
from explorer.engine.progress import ProgressFn, report, scaled
from explorer.engine.sensitivity.scan import (BITS, DEFAULT_LIMIT, SPARSITIES, ScanPayload, ScanState,
                                              fingerprint_model, measure_edits, scan_setup, sensitivity, shippable)

AUTO_SPARSITIES = SPARSITIES + (0.97, 0.98)
BUDGET_STEPS = 10
JOINT_ROUNDS = 12  # rounds of measuring the fronts' candidates jointly (pruned and quantized); usually 2-4
COSTS = Recent(limit_bytes=1 << 20)  # (weights, layer, sparsity, bits, method) -> (bytes, effective MACs) or ()
#: where measured single-layer losses are equal (often 0 on a few hundred samples, which does not mean no loss:
#: layers add up), the gentler setting is taken: this much estimated loss per bit removed and per 10% pruned
TIE_BREAK = 1e-4


@dataclass
class AutoResult:
    plan: Plan
    target_bytes: Optional[int]  # the file's size at most (None for a MACs target or a drop alone)
    file_bytes: int  # measured: the file the plan writes
    dense_bytes: int
    predicted_loss: float  # the sum of the chosen candidates' estimated losses
    accuracy_before: Optional[float]  # on the scan's subset
    accuracy_after: Optional[float]  # measured, the whole plan
    met: bool  # the target and (if given) the drop both met
    note: str = ""
    choices: dict = field(default_factory=dict)  # layer -> (sparsity, bits, layer cost, estimated loss)
    target_macs: Optional[int] = None  # effective MACs at most, for a MACs target
    macs: Optional[int] = None  # measured: the plan's effective MACs (None without an example input)
    dense_macs: Optional[int] = None
    cost: str = "bytes"  # what the choices' layer cost counts: "bytes" or "macs"


def _entry(s: float, b: int, method: str) -> dict:
    return {"prune": {"amount": s} if s else None, "quantize": {"bits": b, "method": method}, "lowrank": None}


def candidates(pv: Previewer, points: list, method: str = "kmeans", cost: str = "bytes", executor=None,
               limit: int = DEFAULT_LIMIT, progress: ProgressFn = None) -> dict:
    """layer -> its Pareto-efficient candidates ``(cost, loss, sparsity, bits)``, cheapest first; ``cost`` is
    the layer's coded bytes or its effective MACs (``"macs"``: the multiply-accumulates its nonzero weights do).

    A candidate's loss is first estimated from the single-kind points (the sum of its sparsity's and its
    bits' losses), then measured — the layer pruned *and* quantized, the others untouched, on the first
    ``limit`` samples — for every candidate on the front, round after round until the front is made of
    measured candidates only: pruning and few bits together can cost far more than their sum (with k-means
    at 1 bit, a pruned layer's kept weights all share one value). The sizes and the measurements are
    independent jobs, run by ``executor`` (in this process by default)."""
    estimates, bases, jobs = {}, {}, []
    for n in dict.fromkeys(p.layer for p in points):
        mine = [p for p in points if p.layer == n and p.metric is not None]
        bases[n] = next(p.metric for p in mine if p.kind == "sparsity" and p.value == 0)
        loss_s = {p.value: max(bases[n] - p.metric, 0.0) for p in mine if p.kind == "sparsity"}
        loss_b = {int(p.value): max(bases[n] - p.metric, 0.0) for p in mine if p.kind == "bits"}
        for s, ls in loss_s.items():
            for b, lb in loss_b.items():
                estimates[(n, s, b)] = ls + lb
                jobs.append((n, s, b, method))
    costs = _costs(pv, jobs, executor)
    rows = {n: [(got[0] if cost == "bytes" else got[1], s, b) for (n2, s, b, _), got in costs.items()
                if n2 == n and got] for n in bases}
    measured = {(n, s, b): v for (n, s, b), v in estimates.items() if s == 0}  # bits alone: the bits point
    for k in range(JOINT_ROUNDS):
        fronts = {n: _front(n, rows[n], measured, estimates) for n in rows}
        need = [(n, r[2], r[3]) for n, f in fronts.items() for r in f if (n, r[2], r[3]) not in measured]
        if not need:
            break
        hits = measure_edits(pv.loaded, [(n, _entry(s, b, method)) for n, s, b in need], None, limit,
                             scaled(progress, 1 - 0.5 ** k, 1 - 0.5 ** (k + 1)), pv, executor)
        for (n, s, b), hit in zip(need, hits):
            measured[(n, s, b)] = float("inf") if hit[0] is None else max(bases[n] - hit[0], 0.0)
    report(progress, 1.0, "candidates measured")
    return fronts


def _front(n: str, rows: list, measured: dict, estimates: dict) -> list:
    """The Pareto front of a layer's ``(cost, sparsity, bits)`` rows: ``(cost, loss, sparsity, bits)``, the
    loss measured where it was (estimated elsewhere), ties broken toward the gentler setting."""
    scored = []
    for c, s, b in rows:
        loss = measured.get((n, s, b), estimates[(n, s, b)])
        if loss != float("inf"):
            scored.append((c, loss + TIE_BREAK * ((8 - b) + 10 * s), s, b))
    front, best = [], float("inf")
    for r in sorted(scored, key=lambda r: (r[0], r[1])):  # kept only if it loses less than every cheaper one
        if r[1] < best:
            front.append(r)
            best = r[1]
    return front


def _costs(pv: Previewer, jobs: list, executor) -> dict:
    """(layer, sparsity, bits, method) -> (coded bytes, effective MACs), or () where the layer cannot take it;
    cached per model (a second search measures none again)."""
    fp = fingerprint_model(pv.loaded.model)
    work = Workload(setup=scan_setup, task=candidate_cost, state=ScanState(pv, None, None, Plan()),
                    payload=ScanPayload(shippable(pv.loaded), None, Plan()),
                    label=lambda j: f"{j[0]}: {j[1]:g}, {j[2]}b", key="candidates:" + fp)
    costs = {j: COSTS.get((fp,) + j) for j in jobs}
    todo = [j for j in jobs if costs[j] is None]
    for i, got in (executor or InProcess()).map(work, todo):
        costs[todo[i]] = got or ()
        COSTS.put((fp,) + todo[i], costs[todo[i]])
    return costs


def candidate_cost(state: ScanState, job: tuple) -> Optional[tuple]:
    """(coded bytes, effective MACs) of one layer at (sparsity, bits); None where it cannot take them (a
    manifest's size moves with the plan, but a layer's coded bytes do not: they are the same in any plan)."""
    n, s, b, method = job
    try:
        summary = state.previewer.measure(Plan(LayerSettings(), {n: _entry(s, b, method)}))
    except ExplorerError:
        return None
    layer = next(l for l in summary["layers"] if l["name"] == n)
    return (layer["bits"]["coded"] + 7) // 8, (layer.get("macs") or {}).get("effective") or 0


def choose(cands: dict, budget: int) -> Optional[dict]:
    """layer -> candidate, total bytes within ``budget``, least estimated loss (Lagrangian + greedy fill);
    None when even the smallest candidates do not fit."""
    if sum(rows[0][0] for rows in cands.values()) > budget:
        return None

    def at(price):
        return {n: min(rows, key=lambda r: (r[1] + price * r[0], r[0])) for n, rows in cands.items()}

    lo, hi = 0.0, 1.0
    while sum(r[0] for r in at(hi).values()) > budget:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(r[0] for r in at(mid).values()) > budget else (lo, mid)
    pick = at(hi)
    while True:  # fill the slack: the upgrade with the most loss saved per byte that still fits
        slack = budget - sum(r[0] for r in pick.values())
        best = None
        for n, rows in cands.items():
            for r in rows:
                extra = r[0] - pick[n][0]
                if 0 < extra <= slack and r[1] < pick[n][1]:
                    gain = (pick[n][1] - r[1]) / extra
                    if best is None or gain > best[0]:
                        best = (gain, n, r)
        if best is None:
            return pick
        pick[best[1]] = best[2]


def _plan(pick: dict, method: str, cost: str = "bytes") -> Plan:
    # the description is written into the file: it does not name the budget, or the size would move with it
    return Plan(LayerSettings(), {n: _entry(r[2], r[3], method) for n, r in pick.items()},
                description=f"auto: a {'size' if cost == 'bytes' else 'MACs'} target, from the layers' sensitivity")


def _check_targets(target_ratio, target_bytes, target_macs, max_drop) -> None:
    given = [t for t in (target_ratio, target_bytes, target_macs) if t is not None]
    if len(given) > 1 or (not given and max_drop is None):
        raise PlanError("give one target: a size ratio, a number of bytes or of MACs (a maximum drop with it, "
                        "or a maximum drop alone)")
    if target_ratio is not None and not target_ratio > 1:
        raise PlanError(f"a target ratio must be above 1, got {target_ratio}")
    for what, v in (("bytes", target_bytes), ("MACs", target_macs)):
        if v is not None and not v > 0:
            raise PlanError(f"a target number of {what} must be positive, got {v}")
    if max_drop is not None and not max_drop >= 0:
        raise PlanError(f"a maximum drop must be 0 or more accuracy points, got {max_drop}")


def auto_plan(loaded, target_ratio: Optional[float] = None, target_bytes: Optional[int] = None,
              target_macs: Optional[int] = None, max_drop: Optional[float] = None, method: str = "kmeans",
              limit: int = DEFAULT_LIMIT, progress: ProgressFn = None, executor=None) -> AutoResult:
    """A plan within one target — a file of at most ``target_bytes`` (or the dense size / ``target_ratio``), or
    at most ``target_macs`` effective MACs — at the least estimated loss. With ``max_drop`` (accuracy points)
    as well, the smallest plan found whose measured drop is within it if the target's is not; with
    ``max_drop`` alone, the smallest plan found whose measured drop is within it. ``executor`` runs the
    sensitivity points and the candidates' sizes (:mod:`explorer.engine.executor`; in this process by
    default)."""
    _check_targets(target_ratio, target_bytes, target_macs, max_drop)
    cost = "macs" if target_macs is not None else "bytes"
    pv = Previewer(loaded)
    dense_summary = pv.measure(Plan())
    dense, dense_macs = dense_summary["size"]["dense"], dense_summary["macs"]["effective"]
    if cost == "macs" and dense_macs is None:
        raise PlanError("a MACs target needs the model's example input (a factory or sample that gives one)")

    def total(summary) -> int:
        return summary["size"]["file"] if cost == "bytes" else summary["macs"]["effective"]

    def layer_cost(l) -> int:
        return (l["bits"]["coded"] + 7) // 8 if cost == "bytes" else (l.get("macs") or {}).get("effective") or 0

    fixed = total(dense_summary) - sum(layer_cost(l) for l in dense_summary["layers"])
    points = sensitivity(loaded, kinds=("sparsity", "bits"), limit=limit, progress=scaled(progress, 0.0, 0.5, "scan (1/3)"),
                         previewer=pv, sparsities=AUTO_SPARSITIES, bits=BITS, executor=executor)
    report(progress, 0.5, "candidates (2/3)")
    cands = candidates(pv, points, method, cost, executor, limit, scaled(progress, 0.5, 0.8, "candidates (2/3)"))
    # the smallest plan the grids allow, measured (its manifest differs from the dense one's)
    smallest = total(pv.measure(_plan({n: rows[0] for n, rows in cands.items()}, method, cost)))
    data = loaded.eval_data
    sub = data if limit is None or limit >= len(data) else data.subset(int(limit))
    labelled = sub.labels is not None
    before = accuracy(loaded.model, sub) if labelled else None

    least = sum(rows[0][0] for rows in cands.values())

    def attempt(goal: int):
        inner = goal - fixed  # the layers' share; the manifest's size moves a little with the plan: repaired
        for _ in range(8):
            pick = choose(cands, max(inner, least))  # the cheapest picks are tried before giving up
            if pick is None:
                return None
            plan = _plan(pick, method, cost)
            summary = pv.measure(plan)
            if total(summary) <= goal:
                break
            # over by what the layers' costs do not count (the manifest): the layers' share below what they took
            inner = min(inner, sum(r[0] for r in pick.values())) - (total(summary) - goal)
        else:
            return None
        after = accuracy(pv.build(plan, count=False).model, sub) if labelled else None
        return plan, pick, summary, after

    drop = (lambda a: 100 * (before - a)) if labelled else None
    target = (None if target_ratio is None and target_bytes is None and target_macs is None
              else int(target_macs if cost == "macs" else target_bytes if target_bytes is not None
                       else dense // target_ratio))
    got = attempt(target if target is not None else smallest)
    if got is None:
        raise ExplorerError(f"no plan of these grids fits {target:,} {cost} (the smallest candidates need "
                            f"{smallest:,})")
    note = ""
    if max_drop is not None and labelled and drop(got[3]) > max_drop:
        got, note = _within_drop(attempt, drop, max_drop, got, target, smallest, total(dense_summary), cost,
                                 progress)
    plan, pick, summary, after = got
    met = ((target is None or total(summary) <= target)
           and (max_drop is None or not labelled or drop(after) <= max_drop))
    report(progress, 1.0, "done")
    return AutoResult(plan, target if cost == "bytes" else None, summary["size"]["file"], dense,
                      sum(r[1] for r in pick.values()), before, after, met, note,
                      {n: (r[2], r[3], r[0], r[1]) for n, r in pick.items()},
                      target if cost == "macs" else None, summary["macs"]["effective"], dense_macs, cost)


def _within_drop(attempt, drop, max_drop, got, target, smallest, dense_total, cost, progress) -> tuple:
    """Bisect the budget between the target's (or the smallest plan's) and the dense model's for the smallest
    plan whose measured drop is within ``max_drop``; (that attempt or ``got``, the note saying so)."""
    lo, hi, best = target if target is not None else smallest, dense_total, None
    for i in range(BUDGET_STEPS):
        mid = (lo + hi) // 2
        report(progress, 0.8 + 0.2 * i / BUDGET_STEPS, f"budget (3/3): {mid:,} {cost}")
        trial = attempt(mid)
        if trial is not None and drop(trial[3]) <= max_drop:
            best, hi = trial, mid
        else:
            lo = mid
    if target is None:
        note = (f"the smallest plan found whose measured drop is within {max_drop:g} points (the budget bisected "
                f"between {smallest:,} and {dense_total:,} {cost})")
    else:
        note = (f"{target:,} {cost} cost {drop(got[3]):.2f} points measured (more than {max_drop:g}); without "
                "retraining the closest this model allows is this plan")
    return best or got, note
