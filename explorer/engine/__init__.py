"""The Qt-free engine: load, inspect, plan, compress, measure.

Imports only the standard library, numpy, torch, tensorly, safetensors and scikit-learn (for the bundled
digits data). The GUI and the CLI are thin layers over these functions.

The names below are imported on first use (PEP 562), not with the package: ``explorer.engine.errors`` (what
the command line needs to parse its arguments and say a failure) must not cost torch's import. tensorly's
backend is set by :mod:`explorer.engine.methods.lowrank`, its only user, when it is imported.
"""

import sys
import types

from explorer.engine.lazy import lazy_exports

_EXPORTS = {
    "explorer.engine.compress": ("Compressed", "compress"),
    "explorer.engine.errors": ("Cancelled", "CompressionError", "ExplorerError", "LoadError", "PlanError",
                               "TrustRequired"),
    "explorer.engine.inspect": ("LayerInfo", "ModelInfo", "inspect_model"),
    "explorer.engine.measure.evaluate": ("evaluate_plan",),
    "explorer.engine.measure.metrics": ("accuracy", "fidelity", "layer_macs", "model_macs"),
    "explorer.engine.model.loading": ("LoadedModel", "load_model"),
    "explorer.engine.plan": ("LayerSettings", "LowRankSettings", "Plan", "PruneSettings", "QuantSettings"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)


class _Engine(types.ModuleType):
    """The package: a submodule named as one of its exports (``compress``) does not take the name over
    when it is imported (the import system sets it on the package), so ``explorer.engine.compress`` stays
    the function, as when these names were imported with the package."""

    def __setattr__(self, name, value):
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Engine
