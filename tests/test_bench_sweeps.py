"""Sweeps that go wrong: a sweep killed with SIGKILL resumes without losing or repeating a
cell, and cells that segfault or hang become failed records while the sweep goes on."""
from __future__ import annotations

import json
import re
import signal
from collections import Counter

import pytest

from tests.test_bench import FAST, _bench, _records

BASE = ["--model", "ddrnet", "--weights", "random", "--data", "camvid", "--threads", "1", *FAST]


@pytest.fixture(scope="session")
def bench_artifacts(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "bench-artifacts"  # the same folder as test_bench.py's
    path.mkdir(exist_ok=True)
    return path


def _keys(recs, status="ok"):
    return Counter(r["cell_key"] for r in recs if r["status"] == status)


def test_sigkill_mid_write_then_resume(tiny_camvid, tmp_path, bench_artifacts):
    args = [*BASE, "--data-root", str(tiny_camvid), "--backend", "onnxruntime", "tensorrt", "--batch", "1", "2"]
    # Cells in order: b1/onnxruntime, b1/tensorrt (skipped), b2/onnxruntime, b2/tensorrt (skipped).
    # Die half-way through writing the third record, after its cell has run.
    first = _bench(args, tmp_path, artifacts=bench_artifacts, env={"EDGEZOO_BENCH_KILL_IN_WRITE": "3"})
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    out = tmp_path / "results"
    done = _records(tmp_path)  # every *.json parses: no half-written record under a final name
    assert [(r["backend"], r["batch"]) for r in sorted(done, key=lambda r: r["timestamp"])] == [
        ("onnxruntime", 1), ("tensorrt", 1)]
    stray = [p for p in out.iterdir() if not p.name.endswith(".json")]
    assert len(stray) == 1 and stray[0].name.startswith(".") and stray[0].name.endswith(".tmp")

    second = _bench(args, tmp_path, artifacts=bench_artifacts)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "half-written record of a killed sweep" in second.stderr
    assert second.stderr.count("stored (") == 2  # b1 cells reused, not rerun
    # the closing line counts what the rerun did: b2/onnxruntime measured, b2/tensorrt skipped
    assert re.search(r"sweep: 4 cells in [0-9.]+ min wall: 1 measured \([0-9.]+ min in cell processes\), "
                     r"2 stored \(reused\), 1 skipped, 0 failed", second.stdout), second.stdout[-500:]
    recs = _records(tmp_path)
    assert [p.name for p in out.iterdir() if not p.name.endswith(".json")] == []
    assert len(recs) == 4 and len({r["cell_key"] for r in recs}) == 4  # every cell exactly once
    assert set(_keys(recs, "ok").values()) == {1} and len(_keys(recs, "ok")) >= 2
    b2 = next(r for r in recs if r["backend"] == "onnxruntime" and r["batch"] == 2)
    assert b2["images_per_s"] == pytest.approx(2 * b2["fps"]) and b2["images"] == 3  # 3 images, last batch padded
    assert b2["metrics"]["pixel_agreement"] >= 0.99

    third = _bench(args, tmp_path, artifacts=bench_artifacts)  # nothing left to do
    assert third.returncode == 0 and third.stderr.count("stored (") == 4 and len(_records(tmp_path)) == 4
    assert "images/s" in third.stdout and "batch" in third.stdout.splitlines()[0]


def test_crashing_and_hanging_cells_become_failed_records(tiny_camvid, tmp_path, bench_artifacts):
    def args(*batches):
        return [*BASE, "--data-root", str(tiny_camvid), "--backend", "onnxruntime", "--timeout", "12",
                "--batch", *map(str, batches)]

    fault = "segv:*/onnxruntime/*/b1,hang:*/onnxruntime/*/b2"
    res = _bench(args(1, 2, 3), tmp_path, artifacts=bench_artifacts, env={"EDGEZOO_BENCH_FAULT": fault})
    assert res.returncode == 1, res.stderr[-3000:]  # failed cells: non-zero exit, but the sweep finished
    recs = {r["batch"]: r for r in _records(tmp_path)}
    assert set(recs) == {1, 2, 3}
    assert recs[1]["status"] == "failed" and "killed by SIGSEGV" in recs[1]["error"]
    assert recs[2]["status"] == "failed" and "timed out after 12 s" in recs[2]["error"]
    assert recs[3]["status"] == "ok" and recs[3]["latency_ms"]["median"] > 0
    for r in recs.values():
        json.dumps(r)  # complete records, also for the failures
        assert r["schema"] == 2 and r["env"] and r["cell_key"]
    assert "failed: cell process killed by SIGSEGV" in res.stdout
    assert "1 measured" in res.stdout and "0 stored (reused), 0 skipped, 2 failed" in res.stdout
    # a rerun retries a failed cell (failures are not "stored") and keeps the ok one
    rerun = _bench(args(1, 3), tmp_path, artifacts=bench_artifacts)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("stored (ok") == 1
    recs = _records(tmp_path)
    assert len(recs) == 4 and sorted(_keys(recs).values()) == [1, 1]
