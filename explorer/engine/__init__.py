"""The Qt-free engine: load, inspect, plan, compress, measure.

Imports only the standard library, numpy, torch, tensorly, safetensors and scikit-learn (for the bundled
digits data). The GUI and the CLI are thin layers over these functions.
"""

import tensorly as _tl

_tl.set_backend("pytorch")  # once, for all threads (tensorly's default is a global backend)

from explorer.engine.compress import Compressed, compress  # noqa: E402
from explorer.engine.errors import (Cancelled, CompressionError, ExplorerError, LoadError, PlanError,  # noqa: E402
                                    TrustRequired)
from explorer.engine.inspect import LayerInfo, ModelInfo, inspect_model  # noqa: E402
from explorer.engine.measure.evaluate import evaluate_plan  # noqa: E402
from explorer.engine.measure.metrics import accuracy, fidelity, layer_macs, model_macs  # noqa: E402
from explorer.engine.model.loading import LoadedModel, load_model  # noqa: E402
from explorer.engine.plan import LayerSettings, LowRankSettings, Plan, PruneSettings, QuantSettings  # noqa: E402

__all__ = ["Compressed", "LayerInfo", "ModelInfo", "compress", "inspect_model", "Cancelled", "CompressionError",
           "ExplorerError", "LoadError", "PlanError", "TrustRequired", "evaluate_plan", "LoadedModel", "load_model",
           "accuracy", "fidelity", "layer_macs", "model_macs", "LayerSettings", "LowRankSettings", "Plan",
           "PruneSettings", "QuantSettings"]
