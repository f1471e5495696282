"""The compression plan: per-layer settings, validated in one place, with a JSON round trip.

A plan maps layer names to settings. It has a ``default`` and an ordered mapping of ``layers`` entries
whose keys are exact layer names or glob patterns (``features.*``). The settings of a layer are the
default, then every matching entry in file order merged over it field by field; a section set to
``None`` (JSON ``null``) turns that step off for the layer.

Order of operations when a plan is applied (one order, everywhere):

1. structured pruning (``granularity`` ``filter`` / ``channel``) on the original layers,
2. low-rank factorisation of the (possibly narrower) layers,
3. element pruning of every weight tensor (the factors of a factorised layer included),
4. quantization of every weight tensor (likewise).

Structured pruning comes before factorisation because whole filters are ranked on the original
weights and a factorised layer's channels are spread over several factors.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Union

from explorer.engine.errors import PlanError
from explorer.engine.finetune.recipe import check_recipe
from explorer.engine.methods.factorisations import METHODS as FACTORISATIONS
from explorer.engine.methods.granularities import CRITERIA as _CRITERIA
from explorer.engine.methods.granularities import GRANULARITIES, MAX_COUNT, SALIENCY, check_amount
from explorer.engine.methods.inits import INITS as KMEANS_INITS
from explorer.engine.methods.quantizers import QUANTIZERS
from explorer.engine.storage import jsonio
from explorer.engine.storage.atomic import atomic_write_bytes

FORMAT = "compression-explorer-plan"
VERSION = 1

CRITERIA = tuple(_CRITERIA)
LOWRANK_METHODS = ("auto", *FACTORISATIONS)
MAX_SEED = 2 ** 32 - 1  # what numpy's seeded generators take
MAX_PLAN_BYTES = 4 << 20  # a plan naming each of 10,000 layers is about 1 MB
MAX_PLAN_ENTRIES = 10_000

Rank = Union[int, float, tuple]


def _not_one_of(value, names) -> bool:
    """True unless ``value`` is one of the registry's ``names`` (a string: a list or a dict in a file is
    not a name, and not hashable either)."""
    return not isinstance(value, str) or value not in names


@dataclass(frozen=True)
class PruneSettings:
    """Pruning of one layer.

    amount: a float in [0, 0.99] is the fraction removed, an int >= 0 the count removed (weights for
    ``element``, channels for ``filter``/``channel``). criterion ``l1``/``l2`` ranks whole channels by
    their norm and single weights by |w|; ``obd`` and ``taylor`` rank both by their estimated effect on the
    loss (:mod:`explorer.engine.methods.saliency`, from calibration data).
    """

    amount: Union[int, float] = 0.0
    granularity: str = "element"
    criterion: str = "l1"

    def amount_text(self) -> str:
        """The amount as the window and the CLI say it: ``50%`` (a fraction) or ``3 removed`` (a count)."""
        return f"{self.amount:.0%}" if isinstance(self.amount, float) else f"{self.amount} removed"


@dataclass(frozen=True)
class QuantSettings:
    """Quantization of one layer's weights.

    bits 1..8. ``uniform``: evenly spaced levels, ``symmetric`` or asymmetric (zero point),
    ``per_channel`` scales or one per tensor. ``kmeans``: weight sharing with 2**bits shared values
    (one of them is the exact zero when the layer is element-pruned), ``init`` as in Deep Compression
    §3.2 plus k-means++. ``binary`` {-a, +a}, ``ternary`` {-a, 0, +a} and the 16-bit ``float16`` and
    ``bfloat16`` (each weight's half-precision bit pattern) ignore ``bits``.
    """

    bits: int = 8
    method: str = "kmeans"
    symmetric: bool = True
    per_channel: bool = False
    init: str = "linear"
    max_iter: int = 10_000  # k-means iterations at most: it stops when the assignment stops changing
    seed: int = 0


@dataclass(frozen=True)
class LowRankSettings:
    """Low-rank factorisation: ``rank`` int, float in (0, 1] (fraction of weight parameters kept), or a
    pair (R3, R4) for Tucker-2. ``method`` ``auto`` = svd for Linear/Embedding, tucker2 for convolutions."""

    rank: Rank = 0.5
    method: str = "auto"

    def describe(self) -> str:
        """``svd rank 8``, ``tt 10% of weights``, ``circulant block 50``."""
        r = self.rank
        if isinstance(r, float):
            return f"{self.method} {r:.0%} of weights"
        return f"{self.method} {'block' if self.method == 'circulant' else 'rank'} {list(r) if isinstance(r, tuple) else r}"


@dataclass(frozen=True)
class LayerSettings:
    prune: Optional[PruneSettings] = None
    quantize: Optional[QuantSettings] = None
    lowrank: Optional[LowRankSettings] = None

    @property
    def is_empty(self) -> bool:
        return self.prune is None and self.quantize is None and self.lowrank is None

    @property
    def removes_channels(self) -> bool:
        """Filter or channel pruning of a non-zero amount: the layer (and those coupled to it) shrink."""
        return self.prune is not None and self.prune.granularity != "element" and bool(self.prune.amount)

    @property
    def changes_shapes(self) -> bool:
        """Channels removed or the layer factorised: the model's shapes change."""
        return self.removes_channels or self.lowrank is not None

    def to_dict(self) -> dict:
        return {s: _section_to_dict(getattr(self, s)) for s in SECTIONS}

    def describe(self) -> str:
        """A short human summary, e.g. ``prune 90%, 5b kmeans/linear``."""
        parts = []
        if self.lowrank is not None:
            parts.append(self.lowrank.describe())
        p = self.prune
        if p is not None and p.amount and p.granularity == "merge":
            parts.append(f"merge {p.amount:.0%} of neurons" if isinstance(p.amount, float) else f"merge {p.amount} neurons")
        elif p is not None and p.amount:
            parts.append(f"prune {p.amount_text()}" + ("" if p.granularity == "element" else f" {p.granularity}s")
                         + (f" by {p.criterion}" if p.criterion in SALIENCY else ""))
        q = self.quantize
        if q is not None:
            parts.append(QUANTIZERS[q.method].describe(q))
        return ", ".join(parts) or "-"


SECTIONS = {"prune": PruneSettings, "quantize": QuantSettings, "lowrank": LowRankSettings}


def _section_to_dict(section) -> Optional[dict]:
    if section is None:
        return None
    out = {f.name: getattr(section, f.name) for f in fields(section)}
    if isinstance(out.get("rank"), tuple):
        out["rank"] = list(out["rank"])
    return out


# ----------------------------------------------------------------------------------------- validation


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _validate_section(where: str, name: str, raw: Any):
    """Return a settings object for section ``name`` or raise PlanError naming ``where`` and the field."""
    cls = SECTIONS[name]
    if isinstance(raw, cls):
        raw = _section_to_dict(raw)
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: '{name}' must be an object or null, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"{where}: unknown field '{name}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    values = dict(raw)

    def bad(fld, why):
        return PlanError(f"{where}: {name}.{fld} {why}, got {values[fld]!r}")

    if name == "prune":
        if "amount" in values:
            check_amount(values["amount"], where)
        if "granularity" in values and _not_one_of(values["granularity"], GRANULARITIES):
            raise bad("granularity", f"must be one of {', '.join(GRANULARITIES)}")
        if "criterion" in values and values["criterion"] not in CRITERIA:
            raise bad("criterion", f"must be one of {', '.join(CRITERIA)}")
    elif name == "quantize":
        if "bits" in values and (not _is_int(values["bits"]) or not 1 <= values["bits"] <= 8):
            raise bad("bits", "must be an integer from 1 to 8")
        if "method" in values and _not_one_of(values["method"], QUANTIZERS):
            raise bad("method", f"must be one of {', '.join(QUANTIZERS)}")
        if "init" in values and _not_one_of(values["init"], KMEANS_INITS):
            raise bad("init", f"must be one of {', '.join(KMEANS_INITS)}")
        for flag in ("symmetric", "per_channel"):
            if flag in values and not isinstance(values[flag], bool):
                raise bad(flag, "must be true or false")
        if "max_iter" in values and (not _is_int(values["max_iter"]) or not 0 <= values["max_iter"] <= 10000):
            raise bad("max_iter", "must be an integer from 0 to 10000")
        if "seed" in values and (not _is_int(values["seed"]) or not 0 <= values["seed"] <= MAX_SEED):
            raise bad("seed", f"must be an integer from 0 to {MAX_SEED}")
    elif name == "lowrank":
        if "rank" in values:
            r = values["rank"]
            if isinstance(r, list):
                r = tuple(r)
                values["rank"] = r
            if isinstance(r, tuple):
                if len(r) != 2 or not all(_is_int(x) and 1 <= x <= MAX_COUNT for x in r):
                    raise bad("rank", "as a pair must be two integers >= 1 (Tucker-2's R3, R4 or a tensor "
                                      "train's two TT-ranks)")
            elif _is_int(r):
                if not 1 <= r <= MAX_COUNT:
                    raise bad("rank", "must be an integer >= 1 or a fraction in (0, 1]")
            elif _is_number(r):
                if not 0.0 < r <= 1.0:
                    raise bad("rank", "as a fraction of parameters kept must be in (0, 1]")
            else:
                raise bad("rank", "must be an integer, a fraction or a pair")
        if "method" in values and _not_one_of(values["method"], LOWRANK_METHODS):
            raise bad("method", f"must be one of {', '.join(LOWRANK_METHODS)}")
    return cls(**values)


def validate_settings(where: str, raw: Any, base: Optional[LayerSettings] = None) -> LayerSettings:
    """Validate one settings object (``{"prune": {...}, "quantize": {...}, "lowrank": {...}}``).

    Sections present in ``raw`` are merged field by field over ``base``; ``null`` turns a section off.
    """
    if isinstance(raw, LayerSettings):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: settings must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PlanError(f"{where}: unknown section '{unknown[0]}' (known: prune, quantize, lowrank)")
    base = base or LayerSettings()
    out = {}
    for name in SECTIONS:
        current = getattr(base, name)
        if name not in raw:
            out[name] = current
        elif raw[name] is None:
            out[name] = None
        else:
            merged = _section_to_dict(current) or {}
            patch = raw[name]
            if isinstance(patch, SECTIONS[name]):
                patch = _section_to_dict(patch)
            if not isinstance(patch, Mapping):
                raise PlanError(f"{where}: '{name}' must be an object or null, got {type(patch).__name__}")
            merged.update(patch)
            out[name] = _validate_section(where, name, merged)
    settings = LayerSettings(**out)
    q = settings.quantize
    if q is not None:
        p = settings.prune
        why = QUANTIZERS[q.method].check(q, p is not None and p.granularity == "element" and bool(p.amount))
        if why:
            raise PlanError(f"{where}: quantize.{why}")
    return settings


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """Per-layer settings: a default and ordered (pattern -> partial settings) entries."""

    default: LayerSettings = field(default_factory=LayerSettings)
    layers: dict = field(default_factory=dict)  # pattern -> raw partial dict (validated)
    description: str = ""
    finetune: Optional[dict] = None  # how to retrain the result (explorer.engine.finetune.recipe), validated

    def __post_init__(self):
        self.default = validate_settings("plan default", self.default)
        if self.finetune is not None:
            self.finetune = check_recipe(self.finetune).to_dict()
        checked = {}
        for pattern, raw in dict(self.layers).items():
            if not isinstance(pattern, str) or not pattern:
                raise PlanError(f"plan layers: a key must be a layer name or pattern, got {pattern!r}")
            # Validate the entry merged over the default so errors surface now, naming the entry.
            entry = raw.to_dict() if isinstance(raw, LayerSettings) else raw
            validate_settings(f"layer '{pattern}'", entry, self.default)
            checked[pattern] = copy.deepcopy(entry)
        self.layers = checked

    # -- resolution
    def patterns_for(self, layer: str) -> list:
        return [p for p in self.layers if p == layer or fnmatch.fnmatchcase(layer, p)]

    def settings_for(self, layer: str) -> LayerSettings:
        settings = self.default
        for pattern in self.patterns_for(layer):
            settings = validate_settings(f"layer '{layer}' (entry '{pattern}')", self.layers[pattern], settings)
        return settings

    def resolve(self, layer_names) -> dict:
        """Settings of every named layer; raise PlanError for an entry that matches no layer."""
        names = list(layer_names)
        for pattern in self.layers:
            if not any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names):
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise PlanError(f"plan entry '{pattern}' matches no compressible layer (layers: {shown})")
        return {n: self.settings_for(n) for n in names}

    # -- editing (used by the GUI and the CLI; returns new plans, never mutates)
    def with_layer(self, layer: str, settings: Any) -> "Plan":
        layers = dict(self.layers)
        layers[layer] = settings.to_dict() if isinstance(settings, LayerSettings) else settings
        return Plan(self.default, layers, self.description, self.finetune)

    def merged(self, names, patch: dict) -> "Plan":
        """This plan with ``patch`` (sections -> fields, ``None`` turns a section off) merged into each named
        layer's own entry (what the window's controls do to the selected layers). Validated; raises
        PlanError naming the layer."""
        layers = dict(self.layers)
        for name in names:
            if name in layers and self.patterns_for(name)[-1] != name:
                # a later pattern (e.g. 'fc*') overrides the layer's own entry: start from what the layer
                # has now and move its entry last, so this edit is not shadowed
                entry = self.settings_for(name).to_dict()
                del layers[name]
            else:
                entry = dict(layers.get(name) or {})
            for section, values in patch.items():
                if values is None:
                    entry[section] = None
                else:
                    entry[section] = {**(entry.get(section) or {}), **values}
            validate_settings(f"layer '{name}'", entry, self.default)
            layers[name] = entry
        plan = Plan(self.default, layers, self.description, self.finetune)
        for name in names:  # merged with the patterns that also match it, the layer must still resolve
            plan.settings_for(name)
        return plan

    # -- JSON
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": VERSION}
        if self.description:
            out["description"] = self.description
        out.update(default=self.default.to_dict(), layers=copy.deepcopy(self.layers))
        if self.finetune is not None:
            out["finetune"] = copy.deepcopy(self.finetune)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise PlanError(f"not a compression plan: format is {data.get('format')!r}, expected {FORMAT!r}")
        version = data.get("version", VERSION)
        if version != VERSION:
            raise PlanError(f"plan version {version!r} is not supported (this program reads version {VERSION})")
        unknown = sorted(set(data) - {"format", "version", "default", "layers", "description", "finetune"})
        if unknown:
            raise PlanError(f"plan: unknown key '{unknown[0]}'")
        layers = data.get("layers", {}) or {}
        if not isinstance(layers, Mapping):
            raise PlanError("plan: 'layers' must be an object mapping layer names or patterns to settings")
        if len(layers) > MAX_PLAN_ENTRIES:
            raise PlanError(f"plan: {len(layers):,} layer entries (at most {MAX_PLAN_ENTRIES:,})")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise PlanError("plan: 'description' must be a string")
        return cls(default=validate_settings("plan default", data.get("default", {}) or {}), layers=dict(layers),
                   description=description, finetune=data.get("finetune"))

    @classmethod
    def from_json(cls, text) -> "Plan":
        """A plan from JSON text (str or UTF-8 bytes), read under :mod:`~explorer.engine.storage.jsonio`'s limits."""
        if len(text) > MAX_PLAN_BYTES:
            raise PlanError(f"plan of {len(text):,} bytes is too large (at most {MAX_PLAN_BYTES:,})")
        try:
            data = jsonio.loads(text)
        except jsonio.JSONLimit as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Plan":
        """Read a plan file: a regular file of at most :data:`MAX_PLAN_BYTES`, never more than that read."""
        path = os.fspath(path)
        try:
            text = jsonio.read_bounded(path, MAX_PLAN_BYTES, "plan")
        except jsonio.JSONLimit as exc:
            raise PlanError(f"{path}: {exc}") from None
        try:
            return cls.from_json(text)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None

    def save(self, path) -> None:
        atomic_write_bytes(path, (self.to_json() + "\n").encode())


def uniform_plan(**sections) -> Plan:
    """A plan whose default is ``sections`` (e.g. ``prune={"amount": 0.9}``), for quick use."""
    return Plan(default=validate_settings("plan default", sections))


__all__ = ["Plan", "LayerSettings", "PruneSettings", "QuantSettings", "LowRankSettings", "validate_settings",
           "uniform_plan", "replace"]
