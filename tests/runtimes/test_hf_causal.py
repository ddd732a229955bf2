"""Importing causal LMs: a GPT-2 or Llama folder becomes `hf-causal-lm`; what cannot be generated
with is refused with the reason; its V2 `infer` still returns the logits transformers gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.generate.families import FAMILIES, family_for
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.runtimes.importer import import_model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_imports_as_hf_causal_lm_and_infers_logits(lm_folders: dict[str, Path], repo: Repository,
                                                             family: str) -> None:
    m = import_model(repo, lm_folders[family], f"lm-{family}")
    assert m.format == "hf-causal-lm"
    assert m.extra["architecture"] in ("GPT2LMHeadModel", "LlamaForCausalLM")
    assert {"tokenizer.json", "model.safetensors"} <= {f.path for f in m.files}
    rt = runtime_for(m, repo.path(m.name, m.version), RuntimeOptions(threads=1))
    rt.load()
    ids = np.array([[3, 5, 7, 9]], dtype=np.int64)
    got = rt.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ["logits"])["logits"]
    with torch.inference_mode():
        want = rt.model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert rt.tokenizer.decode(rt.tokenizer("def f").input_ids) == "def f"


def test_causal_lm_without_tokenizer_is_refused(lm_folders: dict[str, Path], repo: Repository, tmp_path: Path) -> None:
    folder = tmp_path / "no-tok"
    shutil.copytree(lm_folders["gpt2"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(InvalidInput, match=r"has no tokenizer .*tokenizer.save_pretrained\(folder\)"):
        import_model(repo, folder, "lm")
    assert repo.versions("lm") == []


def test_unsupported_causal_lm_family_is_refused(lm_folders: dict[str, Path], repo: Repository, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(lm_folders["gpt2"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="model_type 'gpt_neox' is a causal LM shipyard cannot generate with yet; supported: gpt2, llama"):
        import_model(repo, folder, "lm")


def test_the_model_types_taken_are_the_family_tables(lm_folders: dict[str, Path], repo: Repository, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # One table (shipyard.generate.families) decides: a model_type added there is imported here.
    monkeypatch.setitem(FAMILIES, "gpt_neox", "gpt2")
    folder = tmp_path / "other"
    shutil.copytree(lm_folders["gpt2"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(config))
    assert import_model(repo, folder, "lm").format == "hf-causal-lm"


def test_a_loaded_causal_lm_carries_its_family(lm_folders: dict[str, Path], repo: Repository) -> None:
    m = import_model(repo, lm_folders["llama"], "lm")
    rt = runtime_for(m, repo.path(m.name, m.version), RuntimeOptions(threads=1))
    rt.load()
    assert rt.family is family_for("llama")
