"""Reading and publishing versions. A version folder is immutable once published: it is written to a
staging folder beside it and renamed into place under a per-model lock, so a crash never leaves half
a version, a reader never sees one, and two writers never get the same number."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shipyard.config import ModelConfig
from shipyard.errors import Conflict, IntegrityError, InvalidInput, NotFound, shown
from shipyard.repository.manifest import (
    NAME_PATTERN,
    FileEntry,
    Lineage,
    Manifest,
    Signature,
    check_model_name,
)

MANIFEST = "manifest.json"
CONFIG = "config.json"
LAST_VERSION = ".last_version"
STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 24 * 3600


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _one_line(e: ValueError) -> str:
    """A pydantic error as one line (its str() spans many), so CLI and HTTP errors stay one line."""
    if not isinstance(e, ValidationError):
        return str(e)
    return "; ".join(
        f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors()
    )


def _is_version_dir_name(name: str) -> bool:
    # Only the names `path()` makes (1, 2, ...): '²' or '٣' pass str.isdigit(), and '02' would read
    # as 2 while path(name, 2) points elsewhere.
    return name.isascii() and name.isdigit() and not name.startswith("0")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'digits' -> ('digits', None); 'digits:2' -> ('digits', 2)."""
    name, sep, version = ref.partition(":")
    if not sep:
        return check_model_name(name), None
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise InvalidInput(f"version in {shown(ref)} must be a positive integer, as in '{name}:2'")
    return check_model_name(name), int(version)


class Staging:
    """A version being written. Put files in `path`; set `metrics`/`extra`; commit publishes it."""

    def __init__(self, repo: Repository, name: str, fmt: str, signature: Signature,
                 lineage: Lineage | None, metrics: dict[str, Any] | None) -> None:
        self.repo = repo
        self.name = name
        self.format = fmt
        self.signature = signature
        self.lineage = lineage or Lineage()
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.extra: dict[str, Any] = {}
        self.path = repo.root / name / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.path.mkdir(parents=True)
        self.manifest: Manifest | None = None
        self._on_commit: list[Callable[[int], None]] = []

    def on_commit(self, write: Callable[[int], None]) -> None:
        """Call `write(version)` once the version's number is decided, before the files written so far
        get their checksums: for files that name their own version (a report). It runs under the
        model's lock, where two publishers cannot both be given the same number: keep it short."""
        self._on_commit.append(write)

    def _files(self, known: dict[str, FileEntry]) -> list[FileEntry]:
        """Entries for every file; those in `known` (hashed before) are not read again."""
        files = []
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.path).as_posix()
                if rel == MANIFEST:
                    raise InvalidInput(f"a model file may not be called {MANIFEST}")
                if rel in known:
                    files.append(known[rel])
                    continue
                files.append(FileEntry(path=rel, sha256=sha256_file(p), size=p.stat().st_size))
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        return files

    def commit(self) -> Manifest:
        files = self._files({})
        if not files:
            raise InvalidInput(f"nothing to publish for model '{self.name}': no files were written")
        model_dir = self.repo.root / self.name
        with self.repo._lock(self.name):
            # Numbers are never reused: a removed v3 must not come back as a different v3.
            version = max([*self.repo.versions(self.name), self.repo._last_version(self.name)]) + 1
            if self._on_commit:
                for write in self._on_commit:
                    write(version)
                files = self._files({f.path: f for f in files})
            manifest = Manifest(
                name=self.name, version=version, format=self.format, files=files,
                signature=self.signature, lineage=self.lineage, metrics=self.metrics,
                extra=self.extra,
            )
            _write_json_atomic(self.path / MANIFEST, manifest.model_dump_json(indent=2))
            _fsync_dir(self.path)
            target = model_dir / str(version)
            if target.exists():  # only a foreign writer ignoring the lock gets here
                raise Conflict(f"version {version} of '{self.name}' appeared while publishing")
            os.rename(self.path, target)
            _write_json_atomic(model_dir / LAST_VERSION, str(version))
            _fsync_dir(model_dir)
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Repository:
    """A folder of published models laid out as Triton's: `<model>/<version>/`, plus manifests."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and NAME_PATTERN.match(p.name) and self.versions(p.name)
        )

    def _last_version(self, name: str) -> int:
        try:
            return int((self.root / name / LAST_VERSION).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def versions(self, name: str) -> list[int]:
        check_model_name(name)
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(
            int(p.name) for p in d.iterdir()
            if _is_version_dir_name(p.name) and (p / MANIFEST).is_file()
        )

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def resolve(self, name: str, version: int | None = None) -> int:
        """The given version if it exists, else the highest; NotFound names what does exist."""
        check_model_name(name)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"model '{name}' is not in repository {self.root} (models: {known})")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise NotFound(
                f"model '{name}' has no version {version}; versions: "
                f"{', '.join(map(str, versions))}"
            )
        return version

    def manifest(self, name: str, version: int | None = None) -> Manifest:
        version = self.resolve(name, version)
        path = self.path(name, version) / MANIFEST
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise IntegrityError(f"manifest {path} is not valid: {_one_line(e)}") from None

    def verify(self, manifest: Manifest) -> None:
        """Check every file against the sha256 recorded when it was published."""
        base = self.path(manifest.name, manifest.version)
        for f in manifest.files:
            p = base / f.path
            if not p.is_file():
                raise IntegrityError(f"{p} is listed in the manifest but missing")
            if p.stat().st_size != f.size or sha256_file(p) != f.sha256:
                raise IntegrityError(
                    f"{p} does not match its manifest checksum: the published version was modified"
                )

    def model_config(self, name: str) -> ModelConfig:
        check_model_name(name)
        path = self.root / name / CONFIG
        if not path.is_file():
            return ModelConfig()
        try:
            return ModelConfig.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as e:
            raise InvalidInput(f"{path} is not a valid model config: {_one_line(e)}") from None

    def write_model_config(self, name: str, config: ModelConfig) -> None:
        check_model_name(name)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.root / name / CONFIG, config.model_dump_json(indent=2))

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def publish(self, name: str, fmt: str, signature: Signature, lineage: Lineage | None = None,
                metrics: dict[str, Any] | None = None) -> Iterator[Staging]:
        """Write files into `staging.path`; on a clean exit they become the next version."""
        check_model_name(name)
        self._clean_stale(name)
        staging = Staging(self, name, fmt, signature, lineage, metrics)
        try:
            yield staging
            staging.commit()
        except BaseException:
            staging.abort()
            raise

    def remove(self, name: str, version: int) -> None:
        """Remove one version: it disappears at once (rename), then its files are deleted."""
        version = self.resolve(name, version)
        with self._lock(name):
            version = self.resolve(name, version)  # again: another remover may have been first
            src = self.path(name, version)
            trash = self.root / name / f"{STAGING_PREFIX}removed-{version}-{uuid.uuid4().hex}"
            os.rename(src, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_stale(self, name: str) -> None:
        d = self.root / name
        if not d.is_dir():
            return
        now = time.time()
        for p in d.iterdir():
            if not p.name.startswith(STAGING_PREFIX):
                continue
            try:
                mtime = p.stat().st_mtime
            except FileNotFoundError:  # another writer committed or removed it meanwhile
                continue
            if now - mtime > STALE_STAGING_S:
                shutil.rmtree(p, ignore_errors=True)
