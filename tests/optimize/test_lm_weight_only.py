"""Weight-only int8/int4 causal LMs: `shipyard optimize` on an hf-causal-lm version publishes a
compact hf-causal-lm version that the generation engine serves through the OpenAI channel."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from safetensors import safe_open

from shipyard.errors import InvalidInput
from shipyard.optimize import optimize
from shipyard.quant.lm_folder import load_weight_only
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import SHIPYARD, ServerProcess

PROMPT = "def add(a, b):"
TOKENS = 12


@pytest.fixture(scope="module")
def lm_repo(lm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repository, Path]]:
    """`lm` (GPT-2) v1 fp32, v2 int8 through the CLI preset; `lm-llama` v1 fp32, v2 int4 by recipe."""
    base = tmp_path_factory.mktemp("lm-wo")
    repo = Repository(base / "repo")
    import_model(repo, lm_folders["gpt2"], "lm")
    import_model(repo, lm_folders["llama"], "lm-llama")
    text = base / "eval.txt"  # held-out text: this engine's own source
    text.write_text((Path(__file__).parents[2] / "src/shipyard/generate/model.py").read_text())
    # `lm`: int8 weights with exact fp32 activations (the packed kernel named in a recipe file).
    recipe = base / "int8.yaml"
    recipe.write_text("passes:\n  - pass: weight-only\n    bits: 8\n    kernel: int8-packed\n")
    done = subprocess.run([*SHIPYARD, "optimize", "lm", "--recipe", str(recipe), "--eval", str(text),
                           "--repository", str(repo.root), "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # `lm-auto`: the preset, whose kernel is measured and picked (bf16 activations where that wins).
    import_model(repo, lm_folders["gpt2"], "lm-auto")
    optimize(repo.root, "lm-auto", preset_name="int8-weight-only", eval_data=str(text), threads=1)
    optimize(repo.root, "lm-llama", recipe=[{"pass": "weight-only", "bits": 4, "group_size": 32}],
             eval_data=str(text), threads=1)
    yield repo, text
    shutil.rmtree(base, ignore_errors=True)


def test_int8_version_is_compact_safetensors(lm_repo: tuple[Repository, Path]) -> None:
    repo, _ = lm_repo
    parent, new = repo.manifest("lm", 1), repo.manifest("lm", 2)
    assert new.format == "hf-causal-lm" and new.lineage.parent == 1
    folder = repo.path("lm", 2)
    assert not [f for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pkl", ".pickle")]  # no pickle
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("transformer.h.0.mlp.c_fc.qweight").dtype == torch.int8
        assert f.get_tensor("transformer.h.0.mlp.c_fc.scales").shape == (256,)  # one scale per output
    assert "transformer.h.0.mlp.c_fc.weight" not in keys and "lm_head.weight" not in keys  # tied: stored once
    old = (repo.path("lm", 1) / "model.safetensors").stat().st_size
    assert (folder / "model.safetensors").stat().st_size < 0.6 * old
    assert parent.format == "hf-causal-lm"


def test_report_has_heldout_perplexity_delta(lm_repo: tuple[Repository, Path]) -> None:
    repo, text = lm_repo
    report = json.loads((repo.path("lm", 2) / "report.json").read_text())
    rows = {r["role"]: r["metrics"] for r in report["rows"]}
    delta = report["deltas"]["vs_parent"]
    assert delta["perplexity"] == pytest.approx(rows["new"]["perplexity"] - rows["parent"]["perplexity"], abs=1e-3)
    assert abs(delta["perplexity_ratio"] - 1) < 0.02  # int8 per channel barely moves a 2-layer model
    assert report["facts"]["eval"]["data"] == str(text) and report["facts"]["eval"]["tokens"] > 1000
    assert any("held-out perplexity" in n for n in report["notes"])
    assert (repo.path("lm", 2) / "report.html").is_file()
    assert repo.manifest("lm", 2).metrics["perplexity_delta"] == delta["perplexity"]


def test_int4_llama_packs_two_weights_per_byte(lm_repo: tuple[Repository, Path]) -> None:
    repo, _ = lm_repo
    folder = repo.path("lm-llama", 2)
    meta = json.loads((folder / "weight_only.json").read_text())
    assert meta["bits"] == 4 and meta["group_size"] == 32
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.mlp.up_proj.q4")
    assert q.dtype == torch.uint8 and q.shape == (meta["layers"]["model.layers.0.mlp.up_proj"]["out"], 32)  # 64 in / 2
    report = json.loads((folder / "report.json").read_text())
    assert abs(report["deltas"]["vs_parent"]["perplexity_ratio"] - 1) < 0.2


def test_saved_int8_loads_back_to_the_same_numbers(lm_repo: tuple[Repository, Path], lm_folders: dict[str, Path]) -> None:
    """Loading the files gives exactly the in-memory quantized model's logits; against fp32 the
    int8 error stays bounded (max 5% of the logit range, mean 0.5%, on this deliberately wide init)."""
    from transformers import AutoModelForCausalLM

    from shipyard.optimize import quantize_weights_

    repo, _ = lm_repo
    fp32 = AutoModelForCausalLM.from_pretrained(str(lm_folders["gpt2"])).eval()
    fresh = AutoModelForCausalLM.from_pretrained(str(lm_folders["gpt2"])).eval()
    quantize_weights_(fresh, bits=8, kernel=json.loads((repo.path("lm", 2) / "weight_only.json").read_text())["kernel"])
    int8 = load_weight_only(repo.path("lm", 2))
    ids = torch.arange(3, 40)[None]
    with torch.inference_mode():
        a, b, c = fp32(ids).logits, int8(ids).logits, fresh(ids).logits
    assert torch.allclose(b, c, atol=1e-4)
    span = a.max() - a.min()
    assert 0 < (a - b).abs().max() < 0.05 * span
    assert (a - b).abs().mean() < 0.005 * span


@pytest.fixture(scope="module")
def client(lm_repo: tuple[Repository, Path]) -> Iterator[openai.OpenAI]:
    repo, _ = lm_repo
    server = ServerProcess(repo.root, "--kv-cache-mb", "8")
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert server.stop() == 0, server.output()


def _generate(model: Any, folder: Path) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


@pytest.mark.parametrize("model", ["lm", "lm-auto", "lm-llama"])
def test_served_quantized_greedy_matches_its_own_generate(client: openai.OpenAI, lm_repo: tuple[Repository, Path],
                                                          model: str) -> None:
    """The engine (PagedLM over WeightOnlyLinear, GPT-2's qkv split on the converted c_attn) gives
    exactly what transformers' generate gives for the same quantized model."""
    repo, _ = lm_repo
    r = client.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=TOKENS,
                                  extra_body={"ignore_eos": True})
    folder = repo.path(model, 2)
    assert r.choices[0].text == _generate(load_weight_only(folder), folder)
    assert r.usage is not None and r.usage.completion_tokens == TOKENS


def test_served_int8_greedy_equals_fp32(client: openai.OpenAI, lm_folders: dict[str, Path]) -> None:
    """Closeness criterion: on the tiny GPT-2 the int8 version (fp32 activations) gives the fp32
    model's first 12 greedy tokens. (bf16 activations, `lm-auto` here, can flip near-ties on this
    deliberately wide random init; their served output is checked against their own generate.)"""
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(str(lm_folders["gpt2"])).eval()
    stream = client.chat.completions.create(model="lm", messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0, max_tokens=TOKENS, stream=True,
                                            extra_body={"ignore_eos": True})
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    r = client.completions.create(model="lm", prompt=PROMPT, temperature=0, max_tokens=TOKENS,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == _generate(fp32, lm_folders["gpt2"])
    assert streamed  # the chat path streams from the int8 model too


def test_other_passes_are_refused_on_a_causal_lm(lm_repo: tuple[Repository, Path]) -> None:
    repo, text = lm_repo
    before = repo.versions("lm")
    with pytest.raises(InvalidInput, match="only use the 'weight-only' pass.*prune-structured"):
        optimize(repo.root, "lm:1", preset_name="prune-structured-50", eval_data=str(text), threads=1)
    with pytest.raises(InvalidInput, match="evaluated on text.*--eval"):
        optimize(repo.root, "lm:1", preset_name="int8-weight-only", eval_data=None, threads=1)
    with pytest.raises(InvalidInput, match="group_size 24 must be a multiple of 16"):
        optimize(repo.root, "lm:1", recipe=[{"pass": "weight-only", "bits": 4, "group_size": 24}],
                 eval_data=str(text), threads=1)
    assert repo.versions("lm") == before  # nothing published


def test_corrupt_weight_file_is_named(lm_repo: tuple[Repository, Path], tmp_path: Path) -> None:
    repo, _ = lm_repo
    copy = tmp_path / "v"
    shutil.copytree(repo.path("lm", 2), copy)
    meta = json.loads((copy / "weight_only.json").read_text())
    meta["layers"].pop("transformer.h.0.mlp.c_fc")
    (copy / "weight_only.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="does not match its config"):
        load_weight_only(copy)


def test_code_lm_defaults_to_its_heldout_files(code_lm_repo: tuple[Repository, Any], tmp_path: Path) -> None:
    """`shipyard optimize code-lm --preset int8-weight-only` needs no --eval: the held-out stdlib files."""
    repo, _ = code_lm_repo
    root = tmp_path / "repo"
    shutil.copytree(repo.root, root)  # the session's code-lm repository stays as other tests expect it
    done = subprocess.run([*SHIPYARD, "optimize", "code-lm", "--preset", "int8-weight-only", "--repository", str(root),
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "held-out perplexity" in done.stdout
    new = Repository(root).manifest("code-lm", 2)
    report = json.loads((Repository(root).path("code-lm", 2) / "report.json").read_text())
    assert report["facts"]["eval"]["data"] == "code-lm held-out stdlib files"
    assert new.metrics["perplexity_delta"] == report["deltas"]["vs_parent"]["perplexity"]
    assert "zoo" not in new.extra  # the demo keeps reusing its fp32 v1
