"""Model families: every model_type in the one table drives `PagedLM` to transformers' own logits
(prefill, a later prefill chunk and decodes, two sequences sharing steps), and reading the table
loads no torch and no family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.generate.families import FAMILIES, family_for
from shipyard.generate.families.base import Family
from shipyard.generate.model import PagedLM, Segment
from shipyard.kernels import native
from tests.fixtures import ROOT

# A tiny config for every model_type in FAMILIES (a new family adds its line here).
TINY: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64},
    "llama": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 64},
}
ATTENTION = ["torch", pytest.param("native", marks=pytest.mark.skipif(native.available() is not None,
                                                                      reason=f"native kernel: {native.available()}"))]


def tiny_model(model_type: str) -> Any:
    """Random weights, spread wide (as tests.fixtures' LMs) so that a misplaced position or norm
    moves the logits far past the tolerance."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=96, initializer_range=0.3, bos_token_id=0, eos_token_id=0,
                                  **TINY[model_type])
    return AutoModelForCausalLM.from_config(config).eval()


def test_every_registered_model_type_has_a_tiny_model_here() -> None:
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_table_names_a_family_module(model_type: str) -> None:
    family = family_for(model_type)
    assert isinstance(family, Family) and family.name == FAMILIES[model_type]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_steps_to_transformers_logits(model_type: str, packed: bool, attention: str) -> None:
    model = tiny_model(model_type)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randint(1, 96, (11,), generator=gen).tolist(), torch.randint(1, 96, (7,), generator=gen).tolist()
    with torch.inference_mode():  # before PagedLM packs the Linears and fuses GELU in place
        want = {"a": model(torch.tensor([a])).logits[0], "b": model(torch.tensor([b])).logits[0]}
    lm = PagedLM(model, family_for(model_type), 2**20, 4, 64, pack_linears=packed, attention=attention)
    blocks = {"a": lm.pool.allocate(3), "b": lm.pool.allocate(2)}
    assert blocks["a"] is not None and blocks["b"] is not None
    tokens = {"a": a, "b": b}
    steps = [  # (sequence, start, end) per segment; b decodes while a prefills its second chunk
        [("a", 0, 6), ("b", 0, 4)],
        [("b", 4, 5), ("a", 6, 9)],
        [("a", 9, 10), ("b", 5, 6)],
        [("a", 10, 11), ("b", 6, 7)],
    ]
    for step in steps:
        segments = [Segment(tokens[s][start:end], start, blocks[s], True) for s, start, end in step]
        got = lm.forward(lm.prepare(segments))
        # prepare puts the decoders' rows first
        order = [x for x, seg in zip(step, segments, strict=True) if seg.is_decode]
        order += [x for x, seg in zip(step, segments, strict=True) if not seg.is_decode]
        for row, (s, _, end) in enumerate(order):
            torch.testing.assert_close(got[row], want[s][end - 1], atol=2e-4, rtol=2e-4,
                                       msg=lambda m, s=s, end=end: f"{model_type} {s} at {end - 1}: {m}")


def test_an_unknown_model_type_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(InvalidInput, match="model_type 'gpt_neox' is not one shipyard.generate drives; "
                                           "supported: gpt2, llama"):
        family_for("gpt_neox")


def _modules_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_reading_the_table_loads_no_torch_and_no_family() -> None:
    # The runtimes read the table whenever they are imported (`shipyard import` of an ONNX model too).
    modules = _modules_after("import shipyard.runtimes\nfrom shipyard.generate.families import FAMILIES\n"
                             "assert 'gpt2' in FAMILIES")
    assert "shipyard.generate.families" in modules
    assert [m for m in modules if m == "torch" or m.startswith("shipyard.generate.families.")] == []
    # ... and the probe does see them once a family is asked for
    assert {"torch", "shipyard.generate.families.llama"} <= set(
        _modules_after("from shipyard.generate.families import family_for\nfamily_for('llama')"))
