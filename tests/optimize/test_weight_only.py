"""The weight-only function API (used on causal LMs by the generation engine) and its pass."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize import quantize_weights_
from shipyard.optimize.runner import optimize
from shipyard.quant.weight_only import KERNELS, WeightOnlyLinear
from shipyard.repository import Repository
from tests.optimize.conftest import FAST


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("bits,group,tol", [(8, 128, 0.02), (4, 32, 0.15)])
def test_quantize_weights_on_gpt2_converts_conv1d_first(bits: int, group: int, tol: float) -> None:
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 12))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    report = quantize_weights_(model, bits=bits, group_size=group)
    assert report["conv1d_converted"] == 8  # c_attn, c_proj, c_fc, mlp.c_proj in 2 blocks
    head_fits = bits == 8  # int4 needs out_features % 8 == 0: the 100-word head stays fp32 and tied
    assert report["untied"] == (["lm_head"] if head_fits else [])  # a quantized copy; wte stays fp32
    assert isinstance(model.transformer.wte, nn.Embedding) and model.transformer.wte.weight.dtype == torch.float32
    quantized = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    assert len(quantized) == report["layers"] == 8 + head_fits
    assert report["kernel"] in KERNELS and "fp32" in report["kernel_us"]
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    rel = (after - before).abs().max() / before.abs().max()
    assert 0 < rel < tol  # really quantized, still close


def test_tied_head_can_be_kept_fp32_and_tied() -> None:
    model = _gpt2()
    report = quantize_weights_(model, bits=8, kernel="int8-packed", tied="keep")
    assert report["tied"] == ["lm_head"] and report["untied"] == [] and report["layers"] == 8
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(InvalidInput, match="tied must be"):
        quantize_weights_(_gpt2(), bits=8, tied="drop")  # type: ignore[arg-type]


def test_int8_dynamic_kernel_quantizes_activations_too() -> None:
    """int8 weights x int8 activations (one scale per call): close to the int8-weight result, not equal."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    x = torch.randn(4, 256)
    q = WeightOnlyLinear(lin, 8, 128, "int8-dynamic")
    ref = nn.functional.linear(x, q.dequantize(), lin.bias)
    err = (q(x) - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.02
    assert q(x[:1]).shape == (1, 96)  # one row (decode) as well as several
    torch.testing.assert_close(q.direct()(x), q(x))  # the engine's lean path, bias (held in the packed weight) included


@pytest.mark.parametrize("kernel", ["int8-packed", "int8-packed-bf16", "dequantize"])
def test_the_lean_path_equals_the_module(kernel: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 64)
    q = WeightOnlyLinear(lin, 8, 128, kernel)
    torch.testing.assert_close(q.direct()(x), q(x))


@pytest.mark.parametrize("kernel", ["int8-packed", "dequantize"])
def test_int8_kernels_agree(kernel: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(5, 64)
    q = WeightOnlyLinear(lin, 8, 128, kernel)
    ref = nn.functional.linear(x, q.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
    assert q.qweight.dtype == torch.int8


def test_int4_packed_kernel_matches_its_dequantized_weights() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(3, 256)
    packed = WeightOnlyLinear(lin, 4, 32, "int4-packed")
    plain = WeightOnlyLinear(lin, 4, 32, "dequantize")
    torch.testing.assert_close(packed(x), plain(x), atol=1e-4, rtol=1e-4)
    assert packed.qweight.numel() == 64 * 256 // 2  # two 4-bit weights per byte
    with pytest.raises(InvalidInput, match="bits must be 4 or 8"):
        quantize_weights_(nn.Sequential(lin), bits=3)


def test_weight_only_pass_on_digits_publishes_a_smaller_program(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:1", recipe=[{"pass": "weight-only", "bits": 8}], **FAST)
    assert result.manifest.format == "torch-export"
    d = result.report["deltas"]["vs_parent"]
    assert d["size_ratio"] < 0.6 and abs(d["accuracy"]) <= 0.01
    assert "kernel" in result.report["facts"]["weight_only"]


def test_torch_export_versions_get_an_exportable_kernel(digits_copy: Repository) -> None:
    """int8-dynamic's prepacked weights cannot be saved by torch.export: auto leaves it out there,
    and naming it is refused with the reason (it serves hf-causal-lm versions, saved as safetensors)."""
    result = optimize(digits_copy.root, "digits:1", recipe=[{"pass": "weight-only", "bits": 8}], **FAST)
    assert result.report["facts"]["weight_only"]["kernel"] != "int8-dynamic"
    with pytest.raises(InvalidInput, match="cannot be saved with torch.export"):
        optimize(digits_copy.root, "digits:1", recipe=[{"pass": "weight-only", "bits": 8, "kernel": "int8-dynamic"}], **FAST)
    assert digits_copy.versions("digits") == [1, 2, 3]  # the refused run published nothing
