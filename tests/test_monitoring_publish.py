"""Publishing monitoring runs: run folders never overwrite one another, temporary names never collide (threads or
containers with the same PID), `latest` switches only to a complete run and never dangles, pruning keeps it."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nbs_lib import publishing
from nbs_lib.drift import MonitorResult
from nbs_lib.publishing import publish, read_latest, run_folders

T0 = datetime(2025, 1, 31, 12, tzinfo=UTC)


def result(**summary) -> MonitorResult:
    return MonitorResult(summary={"dataset_drift": False, **summary})


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_a_run_name_another_publisher_has_claimed_is_never_overwritten(tmp_path):
    (tmp_path / "20250131T120000Z").mkdir()   # another container claimed this second and is about to fill it
    run = publish(result(), tmp_path, now=T0)
    assert run.name == "20250131T120000Z-1"
    assert list((tmp_path / "20250131T120000Z").iterdir()) == []
    assert read_latest(tmp_path)["run"] == "20250131T120000Z-1"


def test_a_failed_rename_raises_and_leaves_latest_on_the_previous_complete_run(tmp_path, monkeypatch):
    first = publish(result(n=1), tmp_path, now=T0)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(publishing.os, "rename", refuse)
    with pytest.raises(PermissionError):
        publish(result(n=2), tmp_path, now=T0 + timedelta(minutes=1))
    monkeypatch.undo()
    assert (tmp_path / "latest").resolve() == first.resolve()
    assert read_latest(tmp_path) == {"dataset_drift": False, "n": 1, "run": "20250131T120000Z"}
    assert [p.name for p in run_folders(tmp_path)] == ["20250131T120000Z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20250131T120000Z", "latest"]


def test_the_latest_link_temporary_name_does_not_collide_with_another_container_of_the_same_pid(tmp_path):
    other = tmp_path / f".latest-{os.getpid()}"
    os.symlink("20250131T115900Z", other)   # another container (same PID 1) is switching `latest` right now
    publish(result(), tmp_path, now=T0)
    assert (other.is_symlink(), os.readlink(other)) == (True, "20250131T115900Z")
    assert os.readlink(tmp_path / "latest") == "20250131T120000Z"


def test_concurrent_publishers_in_the_same_second_get_distinct_complete_runs(tmp_path):
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            publish(result(n=i), tmp_path, now=T0)
        except BaseException as e:  # noqa: BLE001 - the test reports every publisher's failure
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    runs = run_folders(tmp_path)
    assert [p.name for p in runs] == ["20250131T120000Z"] + [f"20250131T120000Z-{i}" for i in range(1, 8)]
    assert sorted(json.loads((p / "summary.json").read_text())["n"] for p in runs) == list(range(8))
    assert all(json.loads((p / "summary.json").read_text())["run"] == p.name for p in runs)
    assert read_latest(tmp_path)["run"] in {p.name for p in runs}
    assert hidden(tmp_path) == []


def test_read_latest_with_a_dangling_link_returns_the_newest_complete_run(tmp_path):
    publish(result(n=1), tmp_path, now=T0)
    publish(result(n=2), tmp_path, now=T0 + timedelta(minutes=1))
    (tmp_path / "20250131T120200Z").mkdir()   # claimed, not complete: no summary.json
    (tmp_path / "latest").unlink()
    os.symlink("20250131T130000Z", tmp_path / "latest")   # a folder that does not exist
    assert read_latest(tmp_path) == {"dataset_drift": False, "n": 2, "run": "20250131T120100Z"}


def test_read_latest_with_a_dangling_link_and_no_complete_run_is_none(tmp_path):
    os.symlink("20250131T130000Z", tmp_path / "latest")
    assert read_latest(tmp_path) is None


def test_pruning_never_deletes_the_run_latest_points_at(tmp_path):
    publish(result(), tmp_path, now=T0 + timedelta(minutes=5))
    publish(result(), tmp_path, now=T0 + timedelta(minutes=6))
    late = publish(result(), tmp_path, keep_runs=2, now=T0)   # a publisher whose clock is behind
    assert read_latest(tmp_path)["run"] == late.name == "20250131T120000Z"
    assert [p.name for p in run_folders(tmp_path)] == ["20250131T120000Z", "20250131T120500Z", "20250131T120600Z"]
    publish(result(), tmp_path, keep_runs=2, now=T0 + timedelta(minutes=7))
    assert [p.name for p in run_folders(tmp_path)] == ["20250131T120600Z", "20250131T120700Z"]
