"""The model repository on disk: layout, manifests, versions, lineage, atomic publishing."""

from shipyard.repository.manifest import (
    FileEntry,
    Lineage,
    Manifest,
    Signature,
    TensorSpec,
    check_model_name,
)
from shipyard.repository.store import Repository, Staging, parse_ref

__all__ = [
    "FileEntry",
    "Lineage",
    "Manifest",
    "Repository",
    "Signature",
    "Staging",
    "TensorSpec",
    "check_model_name",
    "parse_ref",
]
