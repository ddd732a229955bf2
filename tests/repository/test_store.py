"""Publishing, reading, verifying and removing versions in one process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard import __version__
from shipyard.config import BatchingConfig, ModelConfig
from shipyard.errors import Conflict, IntegrityError, InvalidInput, NotFound
from shipyard.repository import Lineage, Manifest, Repository, check_model_name, parse_ref
from shipyard.repository.store import sha256_file
from tests.repository.workers import SIGNATURE, staging_dirs


def publish(repo: Repository, name: str = "m", content: bytes = b"weights", **kwargs: object) -> Manifest:
    with repo.publish(name, "onnx", SIGNATURE, **kwargs) as staging:  # type: ignore[arg-type]
        (staging.path / "model.onnx").write_bytes(content)
    assert staging.manifest is not None
    return staging.manifest


def test_publish_numbers_versions_from_one(repo: Repository) -> None:
    assert [publish(repo, content=bytes([i])).version for i in range(3)] == [1, 2, 3]
    assert repo.versions("m") == [1, 2, 3]
    assert repo.models() == ["m"]
    assert sorted(p.name for p in (repo.root / "m").iterdir() if not p.name.startswith(".")) == ["1", "2", "3"]
    # Another model counts on its own.
    assert publish(repo, "other").version == 1
    assert repo.models() == ["m", "other"]


def test_manifest_on_disk_records_everything(repo: Repository) -> None:
    before = datetime.now(UTC)
    with repo.publish("m", "onnx", SIGNATURE, Lineage(parent=None, source="/data/m.onnx"),
                      metrics={"accuracy": 0.9}) as staging:
        (staging.path / "model.onnx").write_bytes(b"abc")
        (staging.path / "extra").mkdir()
        (staging.path / "extra" / "vocab.txt").write_text("hello")
        staging.extra["opset"] = 17
    raw = json.loads((repo.path("m", 1) / "manifest.json").read_text())
    assert raw["schema_version"] == 1
    assert raw["name"] == "m" and raw["version"] == 1 and raw["format"] == "onnx"
    assert raw["shipyard_version"] == __version__
    assert raw["files"] == [
        {"path": "extra/vocab.txt", "sha256": sha256_file(repo.path("m", 1) / "extra/vocab.txt"), "size": 5},
        {"path": "model.onnx", "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3},
    ]
    assert raw["signature"] == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert raw["lineage"] == {"parent": None, "recipe": [], "source": "/data/m.onnx"}
    assert raw["metrics"] == {"accuracy": 0.9}
    assert raw["extra"] == {"opset": 17}
    created = datetime.fromisoformat(raw["created"])
    assert created.tzinfo is not None and before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    m = repo.manifest("m")
    assert m.size_bytes == 8
    repo.verify(m)


def test_lineage_records_parent_and_recipe(repo: Repository) -> None:
    publish(repo)
    recipe = [{"pass": "quantize", "bits": 8}, {"pass": "export", "format": "onnx"}]
    m = publish(repo, lineage=Lineage(parent=1, recipe=recipe))
    again = repo.manifest("m", m.version)
    assert again.lineage.parent == 1 and again.lineage.recipe == recipe


def test_metrics_set_during_staging_are_recorded(repo: Repository) -> None:
    with repo.publish("m", "onnx", SIGNATURE) as staging:
        (staging.path / "model.onnx").write_bytes(b"x")
        staging.metrics = {"latency_b1_p50_ms": 0.25}
    assert repo.manifest("m", 1).metrics == {"latency_b1_p50_ms": 0.25}


def test_verify_detects_a_modified_file(repo: Repository) -> None:
    m = publish(repo, content=b"original")
    path = repo.path("m", 1) / "model.onnx"
    path.write_bytes(b"originaX")  # same size, different content
    with pytest.raises(IntegrityError, match=r"model.onnx does not match its manifest checksum"):
        repo.verify(m)
    path.write_bytes(b"original, longer")
    with pytest.raises(IntegrityError, match="does not match"):
        repo.verify(m)
    path.unlink()
    with pytest.raises(IntegrityError, match="listed in the manifest but missing"):
        repo.verify(m)


def test_corrupt_manifest_is_an_integrity_error(repo: Repository) -> None:
    publish(repo)
    (repo.path("m", 1) / "manifest.json").write_text('{"name": "m"}')
    with pytest.raises(IntegrityError, match="manifest.json is not valid") as e:
        repo.manifest("m", 1)
    assert "version: Field required" in e.value.message and "\n" not in e.value.message
    (repo.path("m", 1) / "manifest.json").write_text("{truncated")
    with pytest.raises(IntegrityError, match="manifest.json is not valid: .*Invalid JSON"):
        repo.manifest("m", 1)


def test_published_versions_are_never_overwritten(repo: Repository) -> None:
    first = publish(repo, content=b"one")
    second = publish(repo, content=b"two")
    assert (first.version, second.version) == (1, 2)
    assert (repo.path("m", 1) / "model.onnx").read_bytes() == b"one"
    assert repo.manifest("m", 1) == first
    repo.verify(repo.manifest("m", 1))
    repo.verify(repo.manifest("m", 2))


def test_publish_refuses_a_folder_that_is_in_the_way(repo: Repository) -> None:
    publish(repo)
    squatter = repo.root / "m" / "2"  # e.g. a copy in progress by someone ignoring the lock
    squatter.mkdir()
    (squatter / "model.onnx").write_bytes(b"not ours")
    with pytest.raises(Conflict, match="version 2 of 'm' appeared while publishing"):
        publish(repo, content=b"new")
    assert (squatter / "model.onnx").read_bytes() == b"not ours"
    assert not (squatter / "manifest.json").exists()
    assert staging_dirs(repo.root, "m") == []
    assert repo.versions("m") == [1]


def test_exception_inside_publish_leaves_nothing(repo: Repository) -> None:
    publish(repo)
    with pytest.raises(RuntimeError, match="export failed"):
        with repo.publish("m", "onnx", SIGNATURE) as staging:
            (staging.path / "model.onnx").write_bytes(b"half")
            raise RuntimeError("export failed")
    assert not staging.path.exists()
    assert staging.manifest is None
    assert repo.versions("m") == [1]
    assert staging_dirs(repo.root, "m") == []
    # The failed attempt did not use up a number.
    assert publish(repo).version == 2


def test_failed_first_publish_leaves_no_model(repo: Repository) -> None:
    with pytest.raises(KeyError):
        with repo.publish("fresh", "onnx", SIGNATURE) as staging:
            (staging.path / "model.onnx").write_bytes(b"x")
            raise KeyError("boom")
    assert repo.models() == []
    with pytest.raises(NotFound):
        repo.resolve("fresh")


def test_empty_publish_is_refused(repo: Repository) -> None:
    with pytest.raises(InvalidInput, match="nothing to publish for model 'm'"):
        with repo.publish("m", "onnx", SIGNATURE):
            pass
    assert repo.versions("m") == []
    assert staging_dirs(repo.root, "m") == []


def test_a_model_file_may_not_be_called_manifest(repo: Repository) -> None:
    with pytest.raises(InvalidInput, match="may not be called manifest.json"):
        with repo.publish("m", "onnx", SIGNATURE) as staging:
            (staging.path / "manifest.json").write_text("{}")
    assert repo.versions("m") == []


@pytest.mark.parametrize("name", ["../x", "", "a/b", ".", "..", ".hidden", "-x", "a b", "x" * 129, "caf\u00e9", "a\nb"])
def test_bad_model_names_are_rejected(repo: Repository, name: str) -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        check_model_name(name)
    with pytest.raises(InvalidInput, match="is not allowed"):
        with repo.publish(name, "onnx", SIGNATURE):
            pytest.fail("publish must refuse the name before staging")  # pragma: no cover
    with pytest.raises(InvalidInput):
        repo.resolve(name)
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


@pytest.mark.parametrize("name", ["digits", "a", "bert-base_v2.1", "X9", "x" * 128])
def test_good_model_names_are_accepted(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(("ref", "expected"), [
    ("digits", ("digits", None)),
    ("digits:2", ("digits", 2)),
    ("digits:10", ("digits", 10)),
    ("bert-base.v2:1", ("bert-base.v2", 1)),
])
def test_parse_ref(ref: str, expected: tuple[str, int | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["digits:x", "digits:0", "digits:", "digits:-1", "digits:1.5", "digits:2:3", "digits:\u00b2"])
def test_parse_ref_rejects_bad_versions(ref: str) -> None:
    with pytest.raises(InvalidInput, match=r"must be a positive integer, as in 'digits:2'"):
        parse_ref(ref)


def test_parse_ref_rejects_bad_names() -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        parse_ref("../x:1")
    with pytest.raises(InvalidInput, match="is not allowed"):
        parse_ref(":1")


def test_resolve_names_what_exists(repo: Repository) -> None:
    with pytest.raises(NotFound) as e:
        repo.resolve("digits")
    assert "models: none" in e.value.message
    publish(repo, "digits")
    publish(repo, "digits")
    publish(repo, "bert")
    assert repo.resolve("digits") == 2
    assert repo.resolve("digits", 1) == 1
    with pytest.raises(NotFound) as e:
        repo.resolve("digits", 7)
    assert e.value.message == "model 'digits' has no version 7; versions: 1, 2"
    with pytest.raises(NotFound) as e:
        repo.resolve("nope")
    assert "model 'nope' is not in repository" in e.value.message
    assert "(models: bert, digits)" in e.value.message
    with pytest.raises(NotFound, match="no version 3; versions: 1, 2"):
        repo.manifest("digits", 3)


def test_reader_ignores_folders_that_are_not_versions(repo: Repository) -> None:
    publish(repo)
    (repo.root / "m" / "5").mkdir()  # no manifest: not a version
    (repo.root / "m" / "notes").mkdir()
    (repo.root / "m" / "7").write_text("a file, not a folder")
    (repo.root / "empty").mkdir()
    (repo.root / ".git").mkdir()
    (repo.root / "README").write_text("hi")
    assert repo.versions("m") == [1]
    assert repo.models() == ["m"]
    assert repo.resolve("m") == 1


@pytest.mark.parametrize("folder", ["\u00b2", "\u0663", "02", "0"])
def test_versions_ignore_folders_path_would_not_name(repo: Repository, folder: str) -> None:
    publish(repo)
    odd = repo.root / "m" / folder
    odd.mkdir()
    (odd / "manifest.json").write_bytes((repo.path("m", 1) / "manifest.json").read_bytes())
    assert repo.versions("m") == [1]
    assert publish(repo).version == 2


def test_missing_repository_has_no_models(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "nowhere")
    assert repo.models() == [] and repo.versions("m") == []


def test_remove_makes_one_version_disappear(repo: Repository) -> None:
    for i in range(3):
        publish(repo, content=f"v{i + 1}".encode())
    repo.remove("m", 2)
    assert repo.versions("m") == [1, 3]
    assert not repo.path("m", 2).exists()
    assert staging_dirs(repo.root, "m") == []
    for v in (1, 3):
        m = repo.manifest("m", v)
        repo.verify(m)
        assert (repo.path("m", v) / "model.onnx").read_bytes() == f"v{v}".encode()
    with pytest.raises(NotFound, match="no version 2; versions: 1, 3"):
        repo.manifest("m", 2)
    with pytest.raises(NotFound, match="no version 2; versions: 1, 3"):
        repo.remove("m", 2)
    repo.remove("m", 1)
    repo.remove("m", 3)
    assert repo.models() == []


def test_remove_unknown_model(repo: Repository) -> None:
    with pytest.raises(NotFound, match="model 'ghost' is not in repository"):
        repo.remove("ghost", 1)


def test_model_config_defaults(repo: Repository) -> None:
    publish(repo)
    config = repo.model_config("m")
    assert config == ModelConfig()
    assert config.batching.max_batch_size == 32
    assert config.batching.max_queue_delay_us == 0
    assert config.batching.max_queue_size == 256
    assert config.version_policy == "latest" and config.versions == [] and config.threads is None
    assert repo.model_config("never-published") == ModelConfig()


def test_model_config_round_trip(repo: Repository) -> None:
    config = ModelConfig(batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=500),
                         version_policy="specific", versions=[1, 3], threads=2)
    repo.write_model_config("m", config)
    assert repo.model_config("m") == config
    assert json.loads((repo.root / "m" / "config.json").read_text())["batching"]["max_batch_size"] == 8
    # A config alone does not make a model.
    assert repo.models() == []


def test_partial_model_config_keeps_other_defaults(repo: Repository) -> None:
    (repo.root / "m").mkdir(parents=True)
    (repo.root / "m" / "config.json").write_text('{"batching": {"max_batch_size": 4}}')
    config = repo.model_config("m")
    assert config.batching.max_batch_size == 4
    assert config.batching.max_queue_size == 256
    assert config.version_policy == "latest"


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "not a valid model config"),
    ('{"batching": {"max_batch_size": 0}}', "max_batch_size"),
    ('{"version_policy": "newest"}', "version_policy"),
    ('{"batch_size": 4}', "batch_size"),
    ('{"threads": 1000}', "threads"),
    ("[]", "not a valid model config"),
])
def test_invalid_model_config_names_the_file(repo: Repository, text: str, words: str) -> None:
    (repo.root / "m").mkdir(parents=True)
    path = repo.root / "m" / "config.json"
    path.write_text(text)
    with pytest.raises(InvalidInput) as e:
        repo.model_config("m")
    assert str(path) in e.value.message
    assert words in e.value.message
    assert "\n" not in e.value.message


def test_write_model_config_checks_the_name(repo: Repository) -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        repo.write_model_config("../escape", ModelConfig())
    assert not (repo.root.parent / "escape").exists()


def test_removed_version_numbers_are_never_reused(tmp_path: Path) -> None:
    from shipyard.repository import Repository, Signature, TensorSpec

    repo = Repository(tmp_path / "repo")
    sig = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1])],
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1])])
    for i in range(3):
        with repo.publish("m", "onnx", sig) as st:
            (st.path / "model.onnx").write_bytes(b"v%d" % i)
    repo.remove("m", 3)
    with repo.publish("m", "onnx", sig) as st:
        (st.path / "model.onnx").write_bytes(b"new")
    assert repo.versions("m") == [1, 2, 4]


def test_names_are_checked_before_touching_disk(tmp_path: Path) -> None:
    from shipyard.errors import InvalidInput
    from shipyard.repository import Repository

    repo = Repository(tmp_path / "repo")
    for call in (lambda: repo.versions("../x"), lambda: repo.model_config("../x")):
        with pytest.raises(InvalidInput, match="not allowed"):
            call()


def test_folders_that_are_not_model_names_are_ignored(tmp_path: Path) -> None:
    from shipyard.repository import Repository

    repo = Repository(tmp_path / "repo")
    (repo.root / "not a model" / "1").mkdir(parents=True)
    (repo.root / "not a model" / "1" / "manifest.json").write_text("{}")
    assert repo.models() == []


def test_on_commit_writes_files_that_name_the_version_they_get(tmp_path: Path) -> None:
    """A report written before commit could only guess its number: here a second publisher commits
    first, and the first one's file still names the version it was given."""
    repo = Repository(tmp_path / "repo")
    sig = SIGNATURE
    with repo.publish("m", "onnx", sig) as first:
        (first.path / "model.onnx").write_bytes(b"a")
        first.on_commit(lambda v: (first.path / "report.json").write_text(f'{{"version": {v}}}'))
        with repo.publish("m", "onnx", sig) as second:
            (second.path / "model.onnx").write_bytes(b"b")
    assert second.manifest is not None and second.manifest.version == 1
    assert first.manifest is not None and first.manifest.version == 2
    assert (repo.path("m", 2) / "report.json").read_text() == '{"version": 2}'
    repo.verify(repo.manifest("m", 2))  # the file written at commit is in the manifest, checksummed
    assert [f.path for f in first.manifest.files] == ["model.onnx", "report.json"]
