"""One broken manifest no longer hides the repository (issue 13 D14), and `shipyard models verify`
checks every published file against its manifest's sha256."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import fails, shipyard

GARBAGE = "{not json"


def test_list_marks_a_broken_manifest_and_lists_the_rest(digits_copy: Path) -> None:
    (digits_copy / "digits" / "1" / "manifest.json").write_text(GARBAGE)
    r = shipyard("models", "list", "--json", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    rows = {row["version"]: row for row in json.loads(r.stdout)}
    assert rows[2]["format"] == "onnx" and rows[2]["error"] is None
    assert rows[1]["name"] == "digits" and "manifest.json is not valid" in rows[1]["error"]
    assert "Invalid JSON" in rows[1]["error"]

    r = shipyard("models", "list", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    assert "broken" in r.stdout and "onnx" in r.stdout
    assert "digits:1 is broken: manifest" in r.stdout

    r = shipyard("models", "show", "digits:2", "-r", digits_copy)  # its lineage has the broken v1
    assert r.returncode == 0, r.stderr
    assert "v1 broken" in r.stdout and "v2 onnx" in r.stdout
    assert "is not valid" in fails(shipyard("models", "show", "digits:1", "-r", digits_copy))


def test_verify_passes_an_intact_repository(digits_copy: Path) -> None:
    r = shipyard("models", "verify", "--json", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["name"], row["version"], row["ok"], row["problems"]) for row in rows] == [
        ("digits", 1, True, []), ("digits", 2, True, [])]
    assert all(row["files"] >= 1 and row["size_bytes"] > 0 for row in rows)
    r = shipyard("models", "verify", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 versions intact" in r.stdout


def test_verify_finds_a_flipped_byte_a_missing_file_and_a_broken_manifest(digits_copy: Path) -> None:
    model = digits_copy / "digits" / "2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    model.write_bytes(bytes(data))

    r = shipyard("models", "verify", "digits:2", "--json", "-r", digits_copy)
    assert r.returncode == 1, r.stdout + r.stderr
    (row,) = json.loads(r.stdout)
    assert row["ok"] is False and len(row["problems"]) == 1
    assert "model.onnx does not match its manifest checksum" in row["problems"][0]
    r = shipyard("models", "verify", "digits:1", "-r", digits_copy)
    assert r.returncode == 0, r.stdout + r.stderr  # the other version is intact

    r = shipyard("models", "verify", "-r", digits_copy)
    assert r.returncode == 1
    assert "FAILED" in r.stdout and "1 of 2 versions intact, 1 failed" in r.stdout

    for f in (digits_copy / "digits" / "1").iterdir():
        if f.name != "manifest.json" and f.is_file():
            f.unlink()
            break
    (digits_copy / "digits" / "2" / "manifest.json").write_text(GARBAGE)
    r = shipyard("models", "verify", "digits", "--json", "-r", digits_copy)
    assert r.returncode == 1
    rows = {row["version"]: row for row in json.loads(r.stdout)}
    assert "listed in the manifest but missing" in rows[1]["problems"][0]
    assert "manifest.json is not valid" in rows[2]["problems"][0] and rows[2]["files"] is None


def test_verify_of_an_unknown_model_is_one_line(digits_copy: Path) -> None:
    assert "no version 9" in fails(shipyard("models", "verify", "digits:9", "-r", digits_copy))
    assert "'nope' is not in repository" in fails(shipyard("models", "verify", "nope", "-r", digits_copy))
