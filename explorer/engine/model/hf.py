"""Hugging Face model folders: ``config.json`` + ``model.safetensors`` (or its shards), tokenizer optional.

The model is built by ``transformers``' Auto classes from the local folder only (nothing is downloaded), the
class chosen from the config's ``architectures``; its weights come from the safetensors files. A folder whose
weights are only a pickled ``pytorch_model.bin``, or whose config names code of its own (``auto_map``), needs
trust. The model is wrapped so its forward returns one tensor (logits, or the last hidden state).

A compressed file (``.cexp``) made from such a model names :data:`HF_FACTORY` as its architecture, with the
config as JSON and the Auto class as arguments; :func:`rebuild` builds the same architecture from them, never
with remote code. The extra ``transformers`` package (``pip install 'compression-explorer[hf]'``) is imported
only here, inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

from explorer.engine.errors import LoadError, TrustRequired, first_line
# the factory a compressed file names to rebuild a Hugging Face architecture from its stored config (named
# beside the manifest's schema, where ``info`` reads it without torch)
from explorer.engine.storage.fileformat.manifest import HF_FACTORY

#: suffix of the config's architecture -> (the Auto class that builds it, what its forward returns)
HEADS = (("ForSequenceClassification", "AutoModelForSequenceClassification", "logits"),
         ("ForTokenClassification", "AutoModelForTokenClassification", "logits"),
         ("ForMaskedLM", "AutoModelForMaskedLM", "logits"),
         ("ForCausalLM", "AutoModelForCausalLM", "logits"))
BASE = ("AutoModel", "last_hidden_state")
AUTO_CLASSES = {auto: out for _, auto, out in HEADS} | {BASE[0]: BASE[1]}
EXAMPLE_TEXT = "Compression makes models small."
EXAMPLE_LENGTH = 16
WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class HFModule(nn.Module):
    """A transformers model whose forward takes ``input_ids`` (and an optional ``attention_mask``) and returns
    one tensor: ``output`` of what the model returns (``logits`` or ``last_hidden_state``)."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, self.output)


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _transformers():
    """transformers, told never to reach the hub and not to draw progress bars on stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers  # optional and heavy: only Hugging Face folders need it
    except ImportError:
        raise LoadError("loading a Hugging Face folder needs transformers: pip install "
                        "'compression-explorer[hf]'") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def auto_class_for(config) -> str:
    """The Auto class that builds what the config's ``architectures`` names (``AutoModel`` when it names none
    we know a head for)."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, auto, _ in HEADS:
            if str(arch).endswith(suffix):
                return auto
    return BASE[0]


def _config(folder: str, trust: bool):
    transformers = _transformers()
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{folder}: config.json cannot be read ({first_line(exc)})") from None
    if (isinstance(raw, dict) and raw.get("auto_map") and raw.get("model_type") not in transformers.CONFIG_MAPPING
            and not trust):
        raise TrustRequired(f"{folder}: its config.json names model code of its own (auto_map) for model type "
                            f"{str(raw.get('model_type'))[:40]!r}, which transformers does not have; loading it "
                            "would run that code. If you trust its source, pass --trust")
    try:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust:
            raise TrustRequired(f"{folder}: its config.json names model code of its own (auto_map); loading it "
                                "would run that code. If you trust its source, pass --trust") from None
        raise LoadError(f"{folder}: config.json cannot be read by transformers ({first_line(exc)})") from None
    except Exception as exc:
        raise LoadError(f"{folder}: config.json cannot be read by transformers ({first_line(exc)})") from None


def _weights_kind(folder: str, trust: bool) -> bool:
    """Whether to read safetensors (True) or, trusted, the pickled ``pytorch_model.bin`` (False)."""
    if any(os.path.isfile(os.path.join(folder, n)) for n in (WEIGHTS, SHARD_INDEX)):
        return True
    if any(os.path.isfile(os.path.join(folder, n)) for n in PICKLED):
        if not trust:
            raise TrustRequired(f"{folder}: its weights are only a pickled pytorch_model.bin, which could run code "
                                f"when read; convert it to {WEIGHTS}, or pass --trust if you trust its source")
        return False
    raise LoadError(f"{folder}: no weights file ({WEIGHTS}, {SHARD_INDEX} or, trusted, pytorch_model.bin)")


def _example(folder: str, config, transformers) -> torch.Tensor:
    """``input_ids`` of a fixed short text from the folder's tokenizer, else :data:`EXAMPLE_LENGTH` seeded ids
    below the config's ``vocab_size``."""
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 100
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
    if any(os.path.isfile(os.path.join(folder, n)) for n in names):
        try:
            tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            ids = tok(EXAMPLE_TEXT, return_tensors="pt")["input_ids"]
            if ids.numel() and int(ids.max()) < vocab:
                return ids
        except Exception:  # a tokenizer that cannot be read is no reason to refuse the model
            pass
    return config_example(config)


def config_example(config) -> torch.Tensor:
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 100
    length = min(EXAMPLE_LENGTH, int(getattr(config, "max_position_embeddings", 0) or EXAMPLE_LENGTH))
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))


def load_folder(folder: str, trust: bool = False):
    """(model, example_input, factory kwargs for :func:`rebuild`) for a Hugging Face folder."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise LoadError(f"{folder}: a folder without config.json (a Hugging Face model folder has config.json "
                        f"and {WEIGHTS})")
    config = _config(folder, trust)
    safetensors = _weights_kind(folder, trust)
    transformers = _transformers()
    auto = auto_class_for(config)
    try:
        model, info = getattr(transformers, auto).from_pretrained(
            folder, config=config, local_files_only=True, use_safetensors=safetensors, trust_remote_code=trust,
            output_loading_info=True)
    except Exception as exc:
        raise LoadError(f"{folder}: the model cannot be built from it ({first_line(exc)})") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise LoadError(f"{folder}: the weights do not fit {type(model).__name__}: missing or misshapen "
                        f"{', '.join(map(str, missing[:5]))}{more}")
    kwargs = {"config": json.loads(config.to_json_string(use_diff=False)), "auto_class": auto}
    return HFModule(model.float().eval(), AUTO_CLASSES[auto]), _example(folder, config, transformers), kwargs


def _config_from_dict(config: dict):
    transformers = _transformers()
    if not isinstance(config, dict):
        raise LoadError("the stored Hugging Face config is not an object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise LoadError(f"the stored Hugging Face config names model_type {str(model_type)[:40]!r}, which "
                        "transformers does not build (remote code is never run for a compressed file)")
    fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        return transformers.CONFIG_MAPPING[model_type](**fields)
    except Exception as exc:
        raise LoadError(f"the stored Hugging Face config is invalid ({first_line(exc)})") from None


def rebuild(config: dict, auto_class: str, device: Optional[str] = None):
    """The architecture a compressed file names by its stored config: (model, example input). Built on
    ``device`` ("meta": shapes only, nothing allocated) with freshly initialised weights the file replaces."""
    if auto_class not in AUTO_CLASSES:
        raise LoadError(f"the stored Hugging Face architecture {str(auto_class)[:40]!r} is not one of "
                        f"{', '.join(AUTO_CLASSES)}")
    cfg = _config_from_dict(config)
    transformers = _transformers()
    try:
        with torch.device(device or "cpu"):
            model = getattr(transformers, auto_class).from_config(cfg)
    except Exception as exc:
        raise LoadError(f"the stored Hugging Face config cannot be built ({first_line(exc)})") from None
    return HFModule(model.float().eval(), AUTO_CLASSES[auto_class]), config_example(cfg)


__all__ = ["HF_FACTORY", "HFModule", "is_hf_folder", "load_folder", "rebuild", "auto_class_for", "config_example"]
