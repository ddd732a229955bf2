from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from shipyard.repository import Repository

FAST = {"threads": 1, "latency_budget_s": 0.05}


@pytest.fixture
def digits_copy(digits_repo: Repository, tmp_path: Path) -> Repository:
    """A private copy of the session's digits repository (v1 torch-export, v2 onnx)."""
    root = tmp_path / "repo"
    shutil.copytree(digits_repo.root, root)
    return Repository(root)


def tiny_transformer(kind: str, folder: Path) -> Path:
    """A transformers model with random weights from a tiny config, saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64, num_labels=3,
                                         max_position_embeddings=64)
        model: Any = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        model = transformers.GPT2LMHeadModel(config)
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """'bert' (sequence classifier) and 'gpt2' (LM), both tiny with random weights, as v1."""
    from shipyard.runtimes.importer import import_model

    base = tmp_path_factory.mktemp("tiny")
    repo = Repository(base / "repo")
    import_model(repo, tiny_transformer("bert", base / "bert"), "bert")
    # A GPT-2 with no tokenizer: detection would pick hf-causal-lm (which needs one) since the
    # generate branch; these tests want the plain hf-transformers runtime, so publish it as that.
    from shipyard.runtimes import RuntimeOptions
    from shipyard.runtimes.hf import HFTransformersRuntime

    folder, options = tiny_transformer("gpt2", base / "gpt2"), RuntimeOptions()
    with repo.publish("gpt2", HFTransformersRuntime.format, HFTransformersRuntime.inspect(folder, options)) as stage:
        stage.extra.update(HFTransformersRuntime.stage(folder, stage.path, options))
    return repo


@pytest.fixture
def tiny_copy(tiny_repo: Repository, tmp_path: Path) -> Repository:
    root = tmp_path / "tiny"
    shutil.copytree(tiny_repo.root, root)
    return Repository(root)


def token_data(n: int = 16, seq: int = 8, labels: bool = False) -> Any:
    import numpy as np

    from shipyard.optimize.data import Dataset

    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, 100, (n, seq)).astype(np.int64),
              "attention_mask": np.ones((n, seq), np.int64)}
    return Dataset(inputs, rng.integers(0, 3, n).astype(np.int64) if labels else None, "tokens")
