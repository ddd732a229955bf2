"""The key file and the guard on their own: hashing, reload, bad files, rate buckets, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from shipyard.errors import InvalidInput, NotFound, PermissionDenied, RateLimited, Unauthenticated
from shipyard.serve import auth
from shipyard.serve.auth import Guard, create_key, read_keys, revoke_key
from tests.fixtures import SHIPYARD


def test_only_salted_hashes_are_stored(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    k1, r1 = create_key(file, name="a")
    k2, r2 = create_key(file, name="b")
    text = file.read_text()
    assert k1[15:] not in text and k2[15:] not in text and r1.salt != r2.salt
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    guard = Guard(file)
    assert guard.authenticate(k1).name == "a" and guard.authenticate(k2).name == "b"
    for bad in (None, "", "sy_", k1[:-1], k2[:15] + k1[15:], "Bearer " + k1):
        with pytest.raises(Unauthenticated):
            guard.authenticate(bad)


def test_models_channels_and_patterns(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    key, _ = create_key(file, models=["digits*"], channels=["grpc_v2"])
    guard = Guard(file)
    assert guard.authorize(key, "grpc_v2", "digits_small").id
    with pytest.raises(PermissionDenied, match="may not use model 'two'"):
        guard.authorize(key, "grpc_v2", "two")
    with pytest.raises(PermissionDenied, match="rest_v2 channel"):
        guard.authorize(key, "rest_v2", "digits")


def test_token_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "keys.yaml"
    key, _ = create_key(file, rate=2.0, burst=3)
    guard = Guard(file)
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    for _ in range(3):
        guard.authorize(key, "rest_v2")
    with pytest.raises(RateLimited) as e:
        guard.authorize(key, "rest_v2")
    assert e.value.retry_after == pytest.approx(0.5)
    now[0] += 0.5
    guard.authorize(key, "rest_v2")  # one token refilled at 2/s
    guard.authorize(key, "rest_v2", spend=False)  # checks never spend
    now[0] += 100
    for _ in range(3):  # refill stops at the burst
        guard.authorize(key, "rest_v2")
    with pytest.raises(RateLimited):
        guard.authorize(key, "rest_v2")


def test_reload_and_a_broken_file_keeps_the_old_keys(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    key, _ = create_key(file)
    guard = Guard(file)
    guard._checked = 0.0  # noqa: SLF001 - force the once-a-second check now
    file.write_text("keys: [ {id: 1")  # half-written by an editor
    os.utime(file, (time.time() + 5, time.time() + 5))
    assert guard.authenticate(key)  # still accepted: the broken file was not taken
    with pytest.raises(InvalidInput, match="not valid"):
        Guard(file)  # at startup a broken file is an error


def test_revoke(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    create_key(file, name="same")
    create_key(file, name="same")
    with pytest.raises(InvalidInput, match="2 keys are named 'same'"):
        revoke_key(file, "same")
    with pytest.raises(NotFound, match="no key with id or name 'other'"):
        revoke_key(file, "other")
    first = read_keys(file).keys[0]
    revoke_key(file, first.id)
    assert [k.id for k in read_keys(file).keys] != [first.id] and len(read_keys(file).keys) == 1


def test_serve_refuses_a_missing_key_file(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    out = subprocess.run([*SHIPYARD, "serve", "--repository", str(tmp_path / "repo"), "--auth", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "does not exist" in out.stderr and "keys create" in out.stderr
    out = subprocess.run([*SHIPYARD, "keys", "create", "--file", str(tmp_path / "k.yaml"), "--rate", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "0.001" in out.stderr


def test_the_admin_scope_is_off_unless_asked_for_and_old_files_still_load(tmp_path: Path) -> None:
    """Any key could load and unload models (issue 13 D4): repository control is now a scope."""
    file = tmp_path / "keys.yaml"
    plain, _ = create_key(file, models=["digits"])
    admin, record = create_key(file, admin=True)
    assert record.admin and not read_keys(file).keys[0].admin
    guard = Guard(file)
    with pytest.raises(PermissionDenied, match=r"may not unload models: .*admin scope.*shipyard keys create --admin"):
        Guard.check_admin(guard.authorize(plain, "rest_v2", "digits"), "unload")
    Guard.check_admin(guard.authorize(admin, "rest_v2", "digits"), "unload")
    # A file written before the scope existed: its keys load, none of them admin.
    old = tmp_path / "old.yaml"
    old.write_text("keys:\n- id: 0123456789ab\n  name: old\n  salt: 00ff\n  hash: abcd\n  models: ['*']\n"
                   "  channels: ['*']\n  created: '2026-01-01T00:00:00+00:00'\n")
    assert [(k.name, k.admin) for k in read_keys(old).keys] == [("old", False)]


def test_keys_list_shows_the_scope(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    made = subprocess.run([*SHIPYARD, "keys", "create", "--file", str(file), "--admin", "--name", "ops"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "admin" in made.stderr
    create_key(file, name="client", models=["digits"])
    out = subprocess.run([*SHIPYARD, "keys", "list", "--file", str(file), "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert [(k["name"], k["admin"]) for k in json.loads(out)] == [("ops", True), ("client", False)]
    table = subprocess.run([*SHIPYARD, "keys", "list", "--file", str(file)], capture_output=True, text=True,
                           timeout=60, check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    rows = {line.split("│")[2].strip(): line for line in table.splitlines() if line.count("│") > 3}
    assert "admin" in rows["ops"] and "inference" in rows["client"] and "admin" not in rows["client"], table
