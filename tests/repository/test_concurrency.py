"""Several processes publishing at once, and publishers killed half way: readers only ever see
whole versions, and every writer gets its own number."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from shipyard.repository import Repository
from shipyard.repository.store import STALE_STAGING_S
from tests.repository import workers
from tests.repository.workers import SIGNATURE, staging_dirs

# spawn, not fork: the test process may hold torch/OpenMP threads that a fork would copy mid-state.
CTX = multiprocessing.get_context("spawn")
WRITERS, PUBLISHES = 4, 5


def seed(repo: Repository, name: str = "m", count: int = 2) -> None:
    for i in range(count):
        with repo.publish(name, "onnx", SIGNATURE) as staging:
            (staging.path / "model.onnx").write_bytes(workers.payload(-1, i))


def test_concurrent_writers_get_distinct_versions_and_all_are_intact(repo: Repository) -> None:
    barrier = CTX.Barrier(WRITERS)
    procs = [
        CTX.Process(target=workers.publish_many, args=(str(repo.root), "m", w, PUBLISHES, barrier))
        for w in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    total = WRITERS * PUBLISHES
    assert repo.versions("m") == list(range(1, total + 1))
    seen = set()
    for v in repo.versions("m"):
        m = repo.manifest("m", v)
        assert m.version == v
        repo.verify(m)
        writer, i = m.metrics["writer"], m.metrics["i"]
        seen.add((writer, i))
        # The files are the ones that writer wrote for that publish, not another's.
        assert (repo.path("m", v) / "model.onnx").read_bytes() == workers.payload(writer, i)
        assert (repo.path("m", v) / "sub" / "writer.txt").read_text().startswith(f"{writer} {i} ")
        assert [f.path for f in m.files] == ["model.onnx", "sub/writer.txt"]
    assert seen == {(w, i) for w in range(WRITERS) for i in range(PUBLISHES)}
    assert staging_dirs(repo.root, "m") == []
    # Each writer's own publishes got increasing numbers.
    for w in range(WRITERS):
        mine = [v for v in repo.versions("m") if repo.manifest("m", v).metrics["writer"] == w]
        assert [repo.manifest("m", v).metrics["i"] for v in mine] == list(range(PUBLISHES))


def kill_when_ready(target: object, repo: Repository, name: str) -> None:
    ready = CTX.Event()
    proc = CTX.Process(target=target, args=(str(repo.root), name, ready))
    proc.start()
    try:
        assert ready.wait(60), "child never got going"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def test_publish_killed_half_way_leaves_no_version(repo: Repository) -> None:
    seed(repo)
    before = {v: repo.manifest("m", v) for v in repo.versions("m")}

    kill_when_ready(workers.publish_then_hang, repo, "m")

    # The half-written files are still on disk, in a staging folder no reader looks at.
    leftovers = staging_dirs(repo.root, "m")
    assert len(leftovers) == 1
    assert (leftovers[0] / "model.onnx").stat().st_size == 1000
    assert not (leftovers[0] / "manifest.json").exists()

    assert repo.versions("m") == [1, 2]
    assert repo.models() == ["m"]
    assert repo.resolve("m") == 2
    for v, m in before.items():
        assert repo.manifest("m", v) == m
        repo.verify(m)

    # The next writer gets the next number and removes the leftover: its writer is dead (issue
    # 13 D13; it used to stay for 24 hours, and only until that model's next publish).
    seed(Repository(repo.root), count=1)
    assert repo.versions("m") == [1, 2, 3]
    assert staging_dirs(repo.root, "m") == []
    assert sorted(p.name for p in (repo.root / "m").iterdir()) == [".last_version", ".lock", "1", "2", "3"]


def test_killed_first_publish_leaves_no_model(repo: Repository) -> None:
    kill_when_ready(workers.publish_then_hang, repo, "fresh")
    assert len(staging_dirs(repo.root, "fresh")) == 1
    assert repo.models() == []
    assert repo.versions("fresh") == []


def test_writer_killed_holding_the_lock_does_not_block_others(repo: Repository) -> None:
    seed(repo, count=1)
    kill_when_ready(workers.hold_lock_then_hang, repo, "m")
    start = time.monotonic()
    seed(repo, count=1)
    assert time.monotonic() - start < 10
    assert repo.versions("m") == [1, 2]


def test_any_writer_starting_removes_dead_writers_staging_and_keeps_live_ones(repo: Repository) -> None:
    """A writer killed by SIGKILL mid-publish leaves its staging folder; the next writer to start
    removes it, whatever model it writes; the staging folder of a writer that is alive stays."""
    seed(repo, name="a", count=1)
    seed(repo, name="b", count=1)
    kill_when_ready(workers.publish_then_hang, repo, "a")
    assert len(staging_dirs(repo.root, "a")) == 1
    ready = CTX.Event()
    live = CTX.Process(target=workers.publish_then_hang, args=(str(repo.root), "b", ready))
    live.start()
    try:
        assert ready.wait(60), "child never got going"
        assert staging_dirs(repo.root, "a") == []  # the writer of 'b' removed it as it started
        (alive,) = staging_dirs(repo.root, "b")
        seed(Repository(repo.root), name="c", count=1)
        assert staging_dirs(repo.root, "b") == [alive]
        assert (alive / "model.onnx").stat().st_size == 1000
        assert repo.clean_staging() == []
    finally:
        os.kill(live.pid, signal.SIGKILL)  # type: ignore[arg-type]
        live.join(30)
    assert repo.clean_staging() == [alive]
    assert staging_dirs(repo.root, "b") == []
    assert sorted(p.name for p in (repo.root / "b").iterdir()) == [".last_version", ".lock", "1"]
    assert repo.versions("a") == [1] and repo.versions("b") == [1] and repo.versions("c") == [1]


def test_the_server_removes_dead_writers_staging_at_start_up(repo: Repository) -> None:
    from tests.fixtures import ServerProcess

    seed(repo, count=1)
    kill_when_ready(workers.publish_then_hang, repo, "m")
    assert len(staging_dirs(repo.root, "m")) == 1
    server = ServerProcess(repo.root, "--grpc-port", "0")
    try:
        assert staging_dirs(repo.root, "m") == []
        assert repo.versions("m") == [1]
    finally:
        assert server.stop() == 0, server.output()


def test_staging_without_a_writer_lock_goes_only_when_stale(repo: Repository) -> None:
    """A folder from a shipyard without writer locks cannot say whether its writer lives: its
    age decides, as before."""
    seed(repo, count=1)
    old_style = repo.root / "m" / ".staging-0123456789abcdef"
    old_style.mkdir()
    (old_style / "model.onnx").write_bytes(b"half")
    seed(Repository(repo.root), count=1)
    assert old_style.exists()
    old = time.time() - STALE_STAGING_S - 60
    os.utime(old_style, (old, old))
    assert repo.clean_staging("m") == [old_style]
    assert staging_dirs(repo.root, "m") == []
    assert repo.versions("m") == [1, 2]


def test_staged_files_are_invisible_until_commit(repo: Repository) -> None:
    seed(repo, count=1)
    with repo.publish("m", "onnx", SIGNATURE) as staging:
        (staging.path / "model.onnx").write_bytes(b"complete")
        assert repo.versions("m") == [1]
        assert repo.resolve("m") == 1
    assert repo.versions("m") == [1, 2]
    repo.verify(repo.manifest("m", 2))
