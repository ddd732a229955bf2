from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import TwoInputs, export_onnx

DYN = torch.export.Dim.DYNAMIC


@pytest.fixture(scope="session")
def two_inputs_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TwoInputs (a, b FP32 [-1, 4] -> a*2+b, row sums of a) saved in every importable format,
    plus the pickles the importer must refuse."""
    d = tmp_path_factory.mktemp("two_inputs")
    module = TwoInputs().eval()
    example = (torch.zeros(2, 4), torch.zeros(2, 4))
    program = torch.export.export(module, example, dynamic_shapes=({0: DYN}, {0: DYN}))
    torch.export.save(program, str(d / "two.pt2"))
    torch.jit.script(module).save(str(d / "two.ts"))
    torch.save(module, str(d / "two_module.pt"))
    torch.save(torch.nn.Linear(4, 2).state_dict(), str(d / "weights.pt"))
    return {
        "onnx": export_onnx(module, d / "two.onnx", {"a": example[0], "b": example[1]}, ["y", "sum"]),
        "torch-export": d / "two.pt2",
        "torchscript": d / "two.ts",
        "pickled-module": d / "two_module.pt",
        "state-dict": d / "weights.pt",
    }
