"""Hugging Face transformers folders (config.json + safetensors weights), run by PyTorch.

Only safetensors weights are loaded: a folder holding only `pytorch_model.bin` (a pickle) is refused
unless the user trusts pickle files; then the weights are loaded once and stored as safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, UnsafeModel
from shipyard.repository import Signature, TensorSpec
from shipyard.runtimes.base import Runtime, RuntimeOptions
from shipyard.runtimes.torch_dtypes import writable

WEIGHT_SUFFIXES = (".safetensors",)
COPY_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".jinja", ".tiktoken")


def _config(source: Path) -> dict[str, Any]:
    try:
        return json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{source / 'config.json'} is not readable JSON: {e}") from None


def _architecture(config: dict[str, Any], source: Path) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise InvalidInput(
            f"{source / 'config.json'} names no 'architectures'; save the model with "
            "save_pretrained() so the class is recorded"
        )
    return str(archs[0])


def _resave_as_safetensors(source: Path, dest: Path) -> None:
    """With --trust-pickle only: load the pickled weights once and store them as safetensors, so the
    repository itself never holds a file whose loading runs code."""
    import torch
    import transformers

    arch = _architecture(_config(source), source)
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise InvalidInput(f"transformers has no class '{arch}' (installed {transformers.__version__})")
    state: dict[str, Any] = {}
    for p in sorted(source.iterdir()):
        if p.suffix in (".bin", ".pt", ".pth"):
            state.update(torch.load(str(p), map_location="cpu", weights_only=False))
    config = transformers.AutoConfig.from_pretrained(str(source), local_files_only=True)
    model = cls(config)
    model.load_state_dict(state, strict=False)
    model.save_pretrained(str(dest), safe_serialization=True)


class HFTransformersRuntime(Runtime):
    format = "hf-transformers"
    description = "Hugging Face transformers model (safetensors) run by PyTorch"

    def load(self) -> None:
        import torch
        import transformers

        self.torch = torch
        torch.set_num_threads(self.options.threads)
        arch = self.manifest.extra.get("architecture") or _architecture(_config(self.path), self.path)
        cls = getattr(transformers, arch, None)
        if cls is None:
            raise InvalidInput(f"transformers has no class '{arch}' (installed {transformers.__version__})")
        self.device = torch.device(self.options.device if torch.cuda.is_available() else "cpu")
        self.model = cls.from_pretrained(
            str(self.path), local_files_only=True, use_safetensors=True
        ).to(self.device).eval()
        self.input_names = [t.name for t in self.signature.inputs]

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            kwargs = {n: torch.from_numpy(writable(inputs[n])).to(self.device) for n in self.input_names if n in inputs}
            result = self.model(**kwargs)
        return {n: result[n].float().cpu().numpy() for n in outputs}

    def unload(self) -> None:
        self.model = None

    @classmethod
    def claims(cls, source: Path) -> bool:
        return source.is_dir() and (source / "config.json").is_file()

    @classmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> Signature:
        config = _config(source)
        arch = _architecture(config, source)
        if arch.endswith("ForSequenceClassification"):
            n = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
            out = TensorSpec(name="logits", datatype="FP32", shape=[-1, n])
        elif arch.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM")):
            out = TensorSpec(name="logits", datatype="FP32", shape=[-1, -1, int(config["vocab_size"])])
        elif arch.endswith("ForTokenClassification"):
            n = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
            out = TensorSpec(name="logits", datatype="FP32", shape=[-1, -1, n])
        else:
            hidden = int(config.get("hidden_size") or config.get("n_embd") or -1)
            out = TensorSpec(name="last_hidden_state", datatype="FP32", shape=[-1, -1, hidden])
        return Signature(
            inputs=[
                TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
                TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1]),
            ],
            outputs=[out],
        )

    @classmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        weights = [p for p in source.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        pickled = [p.name for p in source.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if not weights and not pickled:
            raise InvalidInput(f"{source} has config.json but no *.safetensors weights")
        if not weights and not options.trust_pickle:
            raise UnsafeModel(
                f"{source} holds only pickle weights ({', '.join(pickled)}); loading them can run "
                "code. Re-save with save_pretrained(safe_serialization=True), or pass --trust-pickle "
                "to load them once and store them as safetensors"
            )
        for p in source.iterdir():
            if p.is_file() and p.suffix in COPY_SUFFIXES:
                shutil.copyfile(p, dest / p.name)
        if not weights:
            _resave_as_safetensors(source, dest)
        return {"architecture": _architecture(_config(source), source)}
