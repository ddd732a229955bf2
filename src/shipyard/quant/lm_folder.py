"""The weight-only causal-LM folder: an `hf-causal-lm` version whose Linear weights are stored as
int8 (or packed int4) + scales in safetensors.

transformers cannot load such a folder by itself (its own quantizers each want their library), so
the folder carries `weight_only.json`, which names the quantized layers; `load_weight_only` builds
the model from its config, swaps those layers for `WeightOnlyLinear` shells and loads the tensors.
The generation engine then drives it unchanged: `PagedLM` only calls the model's modules.

`shipyard optimize` writes these folders (`optimize/formats/hf_causal_lm.py`) and the `hf-causal-lm` runtime
reads them, so the format lives here, below both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInput

WEIGHT_ONLY_FILE = "weight_only.json"
WEIGHTS_FILE = "model.safetensors"


def _quantized_layers(model: Any) -> dict[str, Any]:
    from shipyard.quant.weight_only import WeightOnlyLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}


def save_weight_only(model: Any, tokenizer_source: Path, dest: Path) -> dict[str, Any]:
    """Write config, tokenizer, compact safetensors and `weight_only.json` into `dest`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    layers = _quantized_layers(model)
    if not layers:
        raise InvalidInput("the model has no weight-only quantized layer to save")
    first = next(iter(layers.values()))
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, t in model.state_dict().items():
        if t.data_ptr() in seen:  # a tied weight (lm_head = wte) is saved once, tied again at load
            continue
        seen[t.data_ptr()] = key
        state[key] = t.detach().contiguous()
    for name, layer in layers.items():
        if layer.bits == 4:  # two 4-bit values per byte on disk
            q = state.pop(f"{name}.q4")
            state[f"{name}.q4"] = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / WEIGHTS_FILE), metadata={"format": "pt", "shipyard": "weight-only"})
    model.config.save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(str(tokenizer_source), local_files_only=True).save_pretrained(str(dest))
    meta = {"bits": first.bits, "group_size": first.group_size if first.bits == 4 else None,
            "kernel": first.kernel, "conv1d_to_linear": model.config.model_type == "gpt2",
            "layers": {n: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
                       for n, m in layers.items()}}
    (dest / WEIGHT_ONLY_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def is_weight_only(path: Path) -> bool:
    return (path / WEIGHT_ONLY_FILE).is_file()


def load_weight_only(path: Path) -> Any:
    """The model saved by `save_weight_only`, ready for inference (fp32 activations)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from shipyard.quant.weight_only import KERNELS, WeightOnlyLinear, conv1d_to_linear_

    meta = json.loads((path / WEIGHT_ONLY_FILE).read_text())
    kernel = meta["kernel"]
    if kernel not in KERNELS:  # saved by a build with another kernel: the numbers are the same
        kernel = "dequantize"
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    if meta.get("conv1d_to_linear"):
        conv1d_to_linear_(model)
    state = load_file(str(path / WEIGHTS_FILE))
    for name, shape in meta["layers"].items():
        prefix = name + "."
        tensors = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        if meta["bits"] == 4:
            packed = tensors["q4"]
            q = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.uint8)
            q[:, 0::2], q[:, 1::2] = packed & 0xF, packed >> 4
            tensors["q4"] = q
        layer = WeightOnlyLinear.from_quantized(shape["in"], shape["out"], meta["bits"], meta["group_size"] or 0,
                                                kernel, tensors)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", True) else set()
    quantized = tuple(n + "." for n in meta["layers"])  # set above from their own tensors
    missing = [k for k in missing if not k.startswith(quantized) and k not in tied]
    if unexpected or missing:
        raise InvalidInput(f"{path / WEIGHTS_FILE} does not match its config: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return model.eval()
