"""Model in and out: loading what a user has (files, factories), eval data, standard exports (ONNX, TorchScript, safetensors).

No imports here: each module is imported by its own path."""
