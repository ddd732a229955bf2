"""Hugging Face transformers folders: safetensors imported and run; pickle weights refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shipyard.errors import InvalidInput, UnsafeModel
from shipyard.repository import Repository, TensorSpec
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.runtimes.hf import HFTransformersRuntime
from shipyard.runtimes.importer import import_model

VOCAB, LABELS = 100, 3


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny random BertForSequenceClassification (2 layers, hidden 32) saved with safetensors."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)
    model = BertForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    model.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    return model, folder


def batch(rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows * 100 + length)
    ids = rng.integers(0, VOCAB, (rows, length), dtype=np.int64)
    mask = np.ones((rows, length), dtype=np.int64)
    if rows > 1:
        mask[1, length // 2 :] = 0  # a padded row
    return ids, mask


def test_import_hf_folder(repo: Repository, bert: tuple[Any, Path]) -> None:
    _, folder = bert
    m = import_model(repo, folder, "tiny-bert")
    assert m.format == "hf-transformers"
    assert sorted(f.path for f in m.files) == ["config.json", "model.safetensors"]
    assert m.extra["architecture"] == "BertForSequenceClassification"
    assert m.signature.inputs == [
        TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
        TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1]),
    ]
    assert m.signature.outputs == [TensorSpec(name="logits", datatype="FP32", shape=[-1, LABELS])]
    repo.verify(m)


def test_hf_runtime_matches_transformers(repo: Repository, bert: tuple[Any, Path]) -> None:
    model, folder = bert
    m = import_model(repo, folder, "tiny-bert")
    rt = runtime_for(m, repo.path("tiny-bert", m.version), RuntimeOptions(threads=1))
    assert isinstance(rt, HFTransformersRuntime)
    rt.load()
    for rows, length in ((1, 5), (4, 11)):
        ids, mask = batch(rows, length)
        logits = rt.infer({"input_ids": ids, "attention_mask": mask}, ["logits"])["logits"]
        with torch.no_grad():
            expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        assert logits.shape == (rows, LABELS) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-5)
    rt.unload()


def test_hf_folder_with_only_pickle_weights(repo: Repository, bert: tuple[Any, Path], tmp_path: Path) -> None:
    """Refused by default (naming --trust-pickle); with trust, stored as safetensors and equal."""
    # What save_pretrained(safe_serialization=False) wrote (transformers 5 only writes safetensors).
    model, _ = bert
    folder = tmp_path / "bin-bert"
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), str(folder / "pytorch_model.bin"))
    with pytest.raises(UnsafeModel) as e:
        import_model(repo, folder, "bin-bert")
    assert "pytorch_model.bin" in e.value.message and "--trust-pickle" in e.value.message
    assert repo.models() == []
    m = import_model(repo, folder, "bin-bert", trust_pickle=True)
    files = {f.path for f in m.files}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    rt = runtime_for(m, repo.path("bin-bert", m.version), RuntimeOptions(threads=1))
    rt.load()
    ids, mask = batch(2, 7)
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    np.testing.assert_allclose(rt.infer({"input_ids": ids, "attention_mask": mask}, ["logits"])["logits"],
                               expected.numpy(), rtol=0, atol=1e-5)


def test_hf_folder_without_weights(repo: Repository, bert: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = bert
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty / "config.json")
    with pytest.raises(InvalidInput, match="has config.json but no \\*.safetensors weights"):
        import_model(repo, empty, "m")


def test_hf_config_without_architectures(repo: Repository, bert: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = bert
    broken = tmp_path / "no-arch"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["architectures"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="names no 'architectures'.*save_pretrained"):
        import_model(repo, broken, "m")


def test_hf_config_that_is_not_json(repo: Repository, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{oops")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInput, match="config.json is not readable JSON"):
        import_model(repo, folder, "m")
