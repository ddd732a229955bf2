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
REMOVED_PREFIX = f"{STAGING_PREFIX}removed-"
# Beside each staging folder: a file its writer holds an flock on for as long as it writes. The
# kernel drops the lock when the writer dies, however it dies (kill -9 included).
WRITER_LOCK_SUFFIX = ".lock"
# A staging folder without a writer lock (made by a shipyard from before writer locks) is removed
# only after this long: its writer cannot be asked whether it is alive.
STALE_STAGING_S = 24 * 3600


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's sha256; `on_bytes(n)` after each chunk read, for a progress bar."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
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
        self.task: str | None = None  # what the outputs mean (shipyard.tasks), when known
        folder = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        model_dir = repo.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        # The lock first, then the folder: a cleaner never sees this folder without a live lock.
        self._lock_path = model_dir / f"{folder}{WRITER_LOCK_SUFFIX}"
        self._lock_fd: int | None = _hold_writer_lock(self._lock_path)
        self.path = model_dir / folder
        try:
            self.path.mkdir()
        except BaseException:
            self._release()
            raise
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
                extra=self.extra, task=self.task,
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
        self._release()
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        """Drop the writer lock, once the staging folder is gone (published or removed)."""
        if self._lock_fd is None:
            return
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def _hold_writer_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people: which process writes here
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_orphan_lock(lock: Path) -> None:
    """A writer killed after its folder went (published) but before it deleted its lock."""
    if lock.with_name(lock.name[: -len(WRITER_LOCK_SUFFIX)]).exists():
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _remove_if_writer_gone(folder: Path) -> bool:
    """Remove a staging folder whose writer is dead; one whose writer lives is left alone."""
    lock = folder.with_name(folder.name + WRITER_LOCK_SUFFIX)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        # No writer lock: a remover killed before it deleted its trash, or a writer from before
        # writer locks (only its age can tell).
        if not folder.name.startswith(REMOVED_PREFIX):
            try:
                if time.time() - folder.stat().st_mtime <= STALE_STAGING_S:
                    return False
            except FileNotFoundError:  # published or removed meanwhile
                return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive (or another cleaner is at it)
        gone = folder.exists()
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        return gone
    finally:
        os.close(fd)


class Repository:
    """A folder of published models laid out as Triton's: `<model>/<version>/`, plus manifests."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._swept = False

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
        problems = self.check(manifest, first_only=True)
        if problems:
            raise IntegrityError(problems[0])

    def check(self, manifest: Manifest, on_bytes: Callable[[int], None] | None = None,
              first_only: bool = False) -> list[str]:
        """Every file checked against its size and the sha256 recorded when it was published:
        one line per file that is missing or differs (none: the version is intact). `on_bytes`
        is called as files are read, for a progress bar."""
        base = self.path(manifest.name, manifest.version)
        problems = []
        for f in manifest.files:
            p = base / f.path
            if not p.is_file():
                problems.append(f"{p} is listed in the manifest but missing")
            elif p.stat().st_size != f.size or sha256_file(p, on_bytes) != f.sha256:
                problems.append(f"{p} does not match its manifest checksum: the published version was modified")
            else:
                continue
            if first_only:
                break
        return problems

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
        self._sweep(name)
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
        self._sweep(name)
        with self._lock(name):
            version = self.resolve(name, version)  # again: another remover may have been first
            src = self.path(name, version)
            trash = self.root / name / f"{STAGING_PREFIX}removed-{version}-{uuid.uuid4().hex}"
            os.rename(src, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_staging(self, name: str | None = None) -> list[Path]:
        """Remove the staging folders (and leftovers of removals) of writers that are gone, in
        one model or in all: a writer killed mid-publish leaves its half-written files there. A
        folder whose writer still holds its lock is left alone. Returns what was removed."""
        names = [check_model_name(name)] if name is not None else [
            p.name for p in (self.root.iterdir() if self.root.is_dir() else [])
            if p.is_dir() and NAME_PATTERN.match(p.name)
        ]
        removed = []
        for n in names:
            d = self.root / n
            try:
                entries = sorted(d.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            for p in entries:
                if not p.name.startswith(STAGING_PREFIX):
                    continue
                if p.name.endswith(WRITER_LOCK_SUFFIX):
                    _remove_orphan_lock(p)
                elif p.is_dir() and _remove_if_writer_gone(p):
                    removed.append(p)
        return removed

    def _sweep(self, name: str) -> None:
        """Before writing: the whole repository the first time this writer writes, then the model."""
        self.clean_staging(None if not self._swept else name)
        self._swept = True
