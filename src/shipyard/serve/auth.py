"""API keys and per-key rate limits: the protocol-neutral half of access control.

A key file (YAML) holds one record per key: an id, a random salt and the SHA-256 of salt + secret,
never the secret itself. A key is `sy_<id><secret>`: the id finds the record, the hash checks the
secret. Secrets are 256 random bits, so a fast salted hash is enough (a slow password hash guards
low-entropy secrets and would cost milliseconds on every request).

Each record names the models and channels the key may use (`*` for all, shell patterns allowed),
whether it holds the admin scope (repository control: loading and unloading models; off unless
made with `shipyard keys create --admin`, and off for records written before the scope existed)
and an optional token bucket (`rate` requests per second, `burst` at most), which holds across
every channel because all channels call the one `Guard`. The file is re-read when it changes, at
most once a second, so keys are created, rotated and revoked without a restart.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.errors import InvalidInput, NotFound, PermissionDenied, RateLimited, Unauthenticated

log = logging.getLogger("shipyard.serve")

PREFIX = "sy_"
ID_CHARS = 12
RELOAD_CHECK_S = 1.0
VERIFIED_MAX = 10_000
# Where a request's key is refused: the same words whether or not the model exists.
DENIED = "this API key may not use model '{model}'"
NOT_ADMIN = ("this API key may not {action} models: repository control needs the admin scope; "
             "make a key that has it with `shipyard keys create --admin`")


class KeyRecord(BaseModel):
    """One API key as stored: never the secret, only its salted hash."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Public id: the 12 characters after 'sy_' in the key.")
    name: str = Field("", description="A label for people (who or what uses the key).")
    salt: str = Field(description="Random salt, hex.")
    hash: str = Field(description="SHA-256 of salt bytes + secret, hex.")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Models it may use; '*' or shell patterns.")
    channels: list[str] = Field(default_factory=lambda: ["*"],
                                description="Channels it may use: rest_v2, grpc_v2, rest_v1, metrics, ... or '*'.")
    admin: bool = Field(False, description="Repository control: may load and unload models (the ones it may use).")
    rate: float | None = Field(None, gt=0, description="Requests per second (token bucket refill); none: unlimited.")
    burst: int | None = Field(None, ge=1, description="Bucket size: requests allowed at once (default: rate, at least 1).")
    created: str = Field("", description="When the key was made (UTC, ISO 8601).")

    def allows(self, names: list[str], value: str) -> bool:
        # The common cases first: on the hot path of every request.
        return "*" in names or value in names or any(fnmatch.fnmatchcase(value, p) for p in names)


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyRecord] = Field(default_factory=list)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def read_keys(path: Path) -> KeyFile:
    if not path.exists():
        return KeyFile()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        return KeyFile.model_validate(doc)
    except (yaml.YAMLError, ValidationError) as e:
        raise InvalidInput(f"key file {path} is not valid: {e}") from None


def write_keys(path: Path, keys: KeyFile) -> None:
    """Atomically (temporary file, then rename), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# shipyard API keys: only salted hashes are stored here.\n" + yaml.safe_dump(
        keys.model_dump(exclude_none=True), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def create_key(path: Path, name: str = "", models: list[str] | None = None, channels: list[str] | None = None,
               rate: float | None = None, burst: int | None = None, admin: bool = False) -> tuple[str, KeyRecord]:
    """Add a new key to the file; returns the key (shown once, stored nowhere) and its record."""
    keys = read_keys(path)
    key_id = secrets.token_hex(ID_CHARS // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    record = KeyRecord(id=key_id, name=name, salt=salt, hash=_digest(salt, secret),
                       models=models or ["*"], channels=channels or ["*"], admin=admin, rate=rate, burst=burst,
                       created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    keys.keys.append(record)
    write_keys(path, keys)
    return f"{PREFIX}{key_id}{secret}", record


def revoke_key(path: Path, ref: str) -> KeyRecord:
    """Remove the key whose id or name is `ref` (a name must be unique)."""
    keys = read_keys(path)
    found = [k for k in keys.keys if k.id == ref or k.name == ref]
    if not found:
        raise NotFound(f"no key with id or name '{ref}' in {path}; `shipyard keys list` shows them")
    if len(found) > 1:
        raise InvalidInput(f"{len(found)} keys are named '{ref}'; revoke by id: {', '.join(k.id for k in found)}")
    keys.keys = [k for k in keys.keys if k is not found[0]]
    write_keys(path, keys)
    return found[0]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


class Guard:
    """Checks a request's key, its right to the channel and model, and its rate. All channels run
    on one event loop and call this from it, so it needs no lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._buckets: dict[str, _Bucket] = {}
        # Keys already checked against their hash (valid ones only, so callers cannot grow it).
        self._verified: dict[str, KeyRecord] = {}
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if not force and stamp == self._stamp:
            return
        try:
            keys = read_keys(self.path)
        except InvalidInput as e:
            if force:
                raise
            # A half-edited file must not lock everyone out: keep the keys we had.
            log.warning("%s; keeping the %d keys loaded before", e.message, len(self._records))
            return
        self._records = {k.id: k for k in keys.keys}
        self._verified = {}
        self._buckets = {i: b for i, b in self._buckets.items() if i in self._records}
        self._stamp = stamp
        if not force:
            log.info("reloaded %d API keys from %s", len(self._records), self.path)

    def authenticate(self, token: str | None) -> KeyRecord:
        now = time.monotonic()
        if now - self._checked > RELOAD_CHECK_S:
            self._checked = now
            self._reload()
        if not token:
            raise Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
        record = self._verified.get(token)
        if record is not None:
            return record
        record = self._records.get(token[len(PREFIX):len(PREFIX) + ID_CHARS]) if token.startswith(PREFIX) else None
        if record is None or not hmac.compare_digest(
                record.hash, _digest(record.salt, token[len(PREFIX) + ID_CHARS:])):
            raise Unauthenticated("the API key is not valid (unknown, revoked or mistyped)")
        if len(self._verified) < VERIFIED_MAX:
            self._verified[token] = record
        return record

    def authorize(self, token: str | None, channel: str, model: str | None = None,
                  spend: bool = True) -> KeyRecord:
        """The key's record, or Unauthenticated / PermissionDenied / RateLimited. `spend` False
        checks without counting a request against the rate (opening a stream)."""
        record = self.authenticate(token)
        if not record.allows(record.channels, channel):
            raise PermissionDenied(f"this API key may not use the {channel} channel")
        if model is not None:
            self.check_model(record, model)
        if spend:
            self.take(record)
        return record

    @staticmethod
    def check_model(record: KeyRecord, model: str) -> None:
        if not record.allows(record.models, model):
            raise PermissionDenied(DENIED.format(model=model))

    @staticmethod
    def check_admin(record: KeyRecord | None, action: str) -> None:
        """PermissionDenied unless the key holds the admin scope (`action`: load, unload)."""
        if record is None or not record.admin:
            raise PermissionDenied(NOT_ADMIN.format(action=action))

    def take(self, record: KeyRecord) -> None:
        """Spend one token of the key's bucket, or say how long until one is free."""
        if record.rate is None:
            return
        burst = float(record.burst or max(1, round(record.rate)))
        now = time.monotonic()
        bucket = self._buckets.get(record.id)
        if bucket is None:
            bucket = self._buckets[record.id] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.last) * record.rate)
        bucket.last = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / record.rate
            raise RateLimited(f"rate limit of {record.rate:g} requests/s (burst {burst:g}) reached for this "
                              f"API key; retry in {wait:.2f} s", retry_after=wait)
        bucket.tokens -= 1.0
