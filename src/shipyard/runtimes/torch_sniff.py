"""Telling PyTorch's file kinds apart without unpickling anything: a torch.export program, a
TorchScript archive and a `torch.save` pickle are all zip files, told apart by the names inside."""

from __future__ import annotations

import zipfile
from pathlib import Path

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt"}


def zip_kind(path: Path) -> str | None:
    """'export' (torch.export program), 'torchscript', 'pickle' (torch.save) or None."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        return None
    if any(n.endswith("models/model.json") or n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return None


def is_pickle(path: Path) -> bool:
    """A file whose loading runs the pickle machinery (it can execute code)."""
    if not path.is_file():
        return False
    kind = zip_kind(path)
    if kind is not None:
        return kind == "pickle"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # pickle protocol opcode
