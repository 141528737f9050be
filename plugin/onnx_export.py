"""Export the sentence-transformers model to ONNX, offline, from its local folder.

The graph takes the tokenizer's ``input_ids``, ``attention_mask`` and ``token_type_ids`` and
returns the sentence embedding: the transformer, mean pooling over real tokens and L2
normalization, as the model's ``modules.json`` declares. ``int8`` adds ONNX Runtime's dynamic
quantization of the weights. Files are keyed by a hash of the model's files, so a changed
model is exported again; each is written to a temporary name and renamed, so processes
exporting at once never read half a file. Only this module imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

# Bump when the exported graph changes: older exports are then ignored.
EXPORT_FORMAT = 1
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "es-interest" / "onnx"


@lru_cache(maxsize=8)
def model_key(folder: Path) -> str:
    """The model's name and a hash of every file that shapes its output (read once per
    process: the weights are tens of megabytes)."""
    digest = hashlib.sha256(f"format {EXPORT_FORMAT}".encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(str(path.relative_to(folder)).encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return f"{folder.name}-{digest.hexdigest()[:16]}"


def exported_path(folder: Path, int8: bool, cache_dir: Path | None = None) -> Path:
    name = "model-int8.onnx" if int8 else "model.onnx"
    return (cache_dir or default_cache_dir()) / model_key(folder) / name


def check_pooling(folder: Path) -> None:
    """The export reproduces Transformer -> mean Pooling [-> Normalize] only."""
    modules = json.loads((folder / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
        raise ValueError(f"{folder.name}: modules {kinds} are not Transformer, Pooling"
                         "[, Normalize]; use ES_INTEREST_MODEL_BACKEND=torch")
    pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    # Older sentence-transformers write a flag per mode; 6.x one "pooling_mode" (so does a
    # model `train --model` saves).
    modes = ([pooling["pooling_mode"]] if "pooling_mode" in pooling else
             [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v])
    if modes not in (["pooling_mode_mean_tokens"], ["mean"]):
        raise ValueError(f"{folder.name}: pooling {modes} is not mean pooling; "
                         "use ES_INTEREST_MODEL_BACKEND=torch")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    return Path(name)


def _export_float(folder: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    transformer = AutoModel.from_pretrained(str(folder))
    transformer.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sample = tokenizer(["an example", "a slightly longer example sentence"],
                       return_tensors="pt", padding=True)
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    with torch.no_grad():
        torch.onnx.export(SentenceEncoder(transformer), tuple(sample[n] for n in INPUTS),
                          str(target), input_names=list(INPUTS),
                          output_names=["sentence_embedding"],
                          dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)


def export(folder: Path, int8: bool = False, cache_dir: Path | None = None) -> Path:
    """Export (and with ``int8`` quantize) the model unless done; returns the file."""
    check_pooling(folder)
    float_path = exported_path(folder, False, cache_dir)
    if not float_path.exists():
        partial = _atomic_target(float_path)
        try:
            _export_float(folder, partial)
            partial.replace(float_path)
        finally:
            partial.unlink(missing_ok=True)
    if not int8:
        return float_path
    int8_path = exported_path(folder, True, cache_dir)
    if not int8_path.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = _atomic_target(int8_path)
        try:
            quantize_dynamic(str(float_path), str(partial), weight_type=QuantType.QInt8,
                             per_channel=True)
            partial.replace(int8_path)
        finally:
            partial.unlink(missing_ok=True)
    return int8_path
