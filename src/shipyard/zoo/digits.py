"""The digits classifier: a small CNN on scikit-learn's bundled 8x8 digits (1,797 images).

Input `pixels` FP32 [-1, 1, 8, 8] holding pixel/16 in [0, 1]; output `logits` FP32 [-1, 10].
The split and the training are seeded, so every run gives the same model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shipyard.repository import Signature, TensorSpec
from shipyard.train.callbacks import StepCallback, StepInfo

SIGNATURE = Signature(
    inputs=[TensorSpec(name="pixels", datatype="FP32", shape=[-1, 1, 8, 8])],
    outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
)
SEED = 0


@dataclass
class Split:
    pixels: np.ndarray
    labels: np.ndarray


def load(split: str = "test") -> Split:
    """'train' (80%) or 'test' (20%, stratified, fixed seed) of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    pixels = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        pixels, labels, test_size=0.2, random_state=SEED, stratify=labels
    )
    if split == "train":
        return Split(xtr, ytr)
    if split == "test":
        return Split(xte, yte)
    raise ValueError(f"unknown digits split {split!r}; use 'train' or 'test'")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def train(epochs: int = 25, batch_size: int = 64, seed: int = SEED,
          on_step: StepCallback | None = None) -> DigitsCNN:
    """Seeded training on the train split: about 2-3 s on 2 cores, ~98% test accuracy.
    `on_step` is called after every optimizer step (the CLI draws its progress bar from it)."""
    torch.manual_seed(seed)
    data = load("train")
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(StepInfo(step=step, total=steps, epoch=epoch, rank=0, world=1, loss=loss.detach(),
                                 lr=sched.get_last_lr()[0], checkpoint=None))
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def export_program(model: nn.Module, path: Path) -> None:
    example = (torch.zeros(2, 1, 8, 8),)
    program = torch.export.export(
        model.eval(), example, dynamic_shapes={"pixels": {0: torch.export.Dim.DYNAMIC}}
    )
    torch.export.save(program, str(path))


def export_onnx(model: nn.Module, path: Path) -> None:
    # The TorchScript-based exporter: fast, no onnxscript, and plain ONNX ops ORT fuses well.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(2, 1, 8, 8),), str(path),
            input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
