"""Automatic per-layer settings for a size target, from the sensitivity curves.

Each layer's candidates are the pairs (sparsity s, bits b) of its scan's grids; a candidate's bytes are
measured by the previewer (exact), its accuracy loss estimated as the sum of the layer's single-kind losses
at s and at b (ties broken toward the gentler setting: :data:`TIE_BREAK`); only Pareto-efficient candidates are kept (no other is both smaller and no worse). The choice
is a multiple-choice knapsack: its Lagrangian (for a price per byte every layer takes the candidate of least
``loss + price * bytes``; the price bisected to the cheapest that fits), then a greedy fill of the slack
(the upgrade of least price per byte saved that still fits, until none does: no layer can take its next
larger candidate without missing the target). The combined plan is then measured — layers interact, the sum
of single-layer drops is not the drop — and, given ``max_drop``, the budget is bisected between the target and
the dense size for the smallest plan whose measured drop is within it: the closest pair this model allows
without retraining, said as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from explorer.engine.errors import ExplorerError, PlanError
from explorer.engine.measure.metrics import accuracy
from explorer.engine.measure.preview import Previewer
from explorer.engine.plan import LayerSettings, Plan
from explorer.engine.progress import ProgressFn, report, scaled
from explorer.engine.sensitivity.scan import BITS, DEFAULT_LIMIT, SPARSITIES, sensitivity

AUTO_SPARSITIES = SPARSITIES + (0.97, 0.98)
BUDGET_STEPS = 10
#: where measured single-layer losses are equal (often 0 on a few hundred samples, which does not mean no loss:
#: layers add up), the gentler setting is taken: this much estimated loss per bit removed and per 10% pruned
TIE_BREAK = 1e-4


@dataclass
class AutoResult:
    plan: Plan
    target_bytes: int
    file_bytes: int  # measured: the file the plan writes
    dense_bytes: int
    predicted_loss: float  # the sum of the chosen candidates' estimated losses
    accuracy_before: Optional[float]  # on the scan's subset
    accuracy_after: Optional[float]  # measured, the whole plan
    met: bool  # the size target and (if given) the drop both met
    note: str = ""
    choices: dict = field(default_factory=dict)  # layer -> (sparsity, bits, layer bytes, estimated loss)


def _entry(s: float, b: int, method: str) -> dict:
    return {"prune": {"amount": s} if s else None, "quantize": {"bits": b, "method": method}, "lowrank": None}


def candidates(pv: Previewer, points: list, method: str = "kmeans") -> dict:
    """layer -> its Pareto-efficient candidates ``(bytes, loss, sparsity, bits)``, smallest first."""
    out = {}
    for n in dict.fromkeys(p.layer for p in points):
        mine = [p for p in points if p.layer == n and p.metric is not None]
        base = next(p.metric for p in mine if p.kind == "sparsity" and p.value == 0)
        loss_s = {p.value: max(base - p.metric, 0.0) for p in mine if p.kind == "sparsity"}
        loss_b = {int(p.value): max(base - p.metric, 0.0) for p in mine if p.kind == "bits"}
        rows = []
        for s, ls in loss_s.items():
            for b, lb in loss_b.items():
                try:
                    summary = pv.measure(Plan(LayerSettings(), {n: _entry(s, b, method)}))
                except ExplorerError:
                    continue
                layer = next(l for l in summary["layers"] if l["name"] == n)
                rows.append(((layer["bits"]["coded"] + 7) // 8, ls + lb + TIE_BREAK * ((8 - b) + 10 * s), s, b))
        rows.sort(key=lambda r: (r[0], r[1]))
        front, best = [], float("inf")
        for r in rows:  # keep a candidate only if it loses less than every smaller one
            if r[1] < best:
                front.append(r)
                best = r[1]
        out[n] = front
    return out


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


def _plan(pick: dict, method: str, target: int) -> Plan:
    return Plan(LayerSettings(), {n: _entry(r[2], r[3], method) for n, r in pick.items()},
                description=f"auto: at most {target:,} bytes, from the layers' sensitivity")


def auto_plan(loaded, target_ratio: Optional[float] = None, target_bytes: Optional[int] = None,
              max_drop: Optional[float] = None, method: str = "kmeans", limit: int = DEFAULT_LIMIT,
              progress: ProgressFn = None) -> AutoResult:
    """A plan whose file is at most ``target_bytes`` (or the dense size / ``target_ratio``) at the least
    estimated loss; with ``max_drop`` (accuracy points), the smallest plan found whose measured drop is within
    it if the target's is not."""
    if (target_ratio is None) == (target_bytes is None):
        raise PlanError("give one size target: a ratio or a number of bytes")
    if target_ratio is not None and not target_ratio > 1:
        raise PlanError(f"a target ratio must be above 1, got {target_ratio}")
    pv = Previewer(loaded)
    dense_summary = pv.measure(Plan())
    dense = dense_summary["size"]["dense"]
    target = int(target_bytes if target_bytes is not None else dense // target_ratio)
    fixed = dense_summary["size"]["file"] - sum((l["bits"]["coded"] + 7) // 8 for l in dense_summary["layers"])
    points = sensitivity(loaded, kinds=("sparsity", "bits"), limit=limit, progress=scaled(progress, 0.0, 0.5),
                         previewer=pv, sparsities=AUTO_SPARSITIES, bits=BITS)
    report(progress, 0.5, "measuring the candidates")
    cands = candidates(pv, points, method)
    data = loaded.eval_data
    sub = data if limit is None or limit >= len(data) else data.subset(int(limit))
    labelled = sub.labels is not None
    before = accuracy(loaded.model, sub) if labelled else None

    def attempt(goal: int):
        inner = goal - fixed  # the layers' share; the manifest's size moves a little with the plan: repaired
        for _ in range(8):
            pick = choose(cands, inner)
            if pick is None:
                return None
            plan = _plan(pick, method, target)
            file_bytes = pv.measure(plan)["size"]["file"]
            if file_bytes <= goal:
                break
            inner -= file_bytes - goal
        else:
            return None
        after = accuracy(pv.build(plan, count=False).model, sub) if labelled else None
        return plan, pick, file_bytes, after

    got = attempt(target)
    if got is None:
        raise ExplorerError(f"no plan of these grids fits {target:,} bytes (the smallest candidates need "
                            f"{fixed + sum(rows[0][0] for rows in cands.values()):,})")
    note = ""
    drop = (lambda a: 100 * (before - a)) if labelled else None
    if max_drop is not None and labelled and drop(got[3]) > max_drop:
        lo, hi, best = target, dense_summary["size"]["file"], None
        for i in range(BUDGET_STEPS):  # the smallest budget whose measured drop is within max_drop
            report(progress, 0.8 + 0.2 * i / BUDGET_STEPS, f"budget {(lo + hi) // 2:,} bytes")
            mid = (lo + hi) // 2
            trial = attempt(mid)
            if trial is not None and drop(trial[3]) <= max_drop:
                best, hi = trial, mid
            else:
                lo = mid
        note = (f"{target:,} bytes cost {drop(got[3]):.2f} points measured (more than {max_drop:g}); without "
                "retraining the closest this model allows is this plan")
        got = best or got
    plan, pick, file_bytes, after = got
    met = file_bytes <= target and (max_drop is None or not labelled or drop(after) <= max_drop)
    report(progress, 1.0, "done")
    return AutoResult(plan, target, file_bytes, dense, sum(r[1] for r in pick.values()), before, after, met, note,
                      {n: (r[2], r[3], r[0], r[1]) for n, r in pick.items()})
