"""bench.run end to end on a tiny CamVid-layout data set, and its one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

FAST = ["--input-size", "64", "96", "--iters", "3", "--warmup", "1", "--no-progress"]
REQUIRED = ["model", "variant", "backend", "dataset", "split", "status", "error", "size_mb", "fps", "peak_rss_mb"]


def _bench(args, tmp_path, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_ARTIFACTS": str(tmp_path / "artifacts")}
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob("*.json"))]


def test_random_weights_both_backends(tiny_camvid, tmp_path):
    res = _bench(["--model", "ddrnet", "--weights", "random", "--data", "camvid", "--data-root", str(tiny_camvid),
                  *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = _records(tmp_path)
    assert {r["backend"] for r in recs} == {"torch", "onnxruntime"}
    for r in recs:
        assert r["status"] == "ok", r["error"]
        for key in REQUIRED:
            assert key in r
        assert r["latency_ms"]["median"] > 0 and r["latency_ms"]["p90"] >= r["latency_ms"]["median"]
        assert r["fps"] == pytest.approx(1000 / r["latency_ms"]["median"])
        assert r["size_mb"] > 1 and r["peak_rss_mb"] > r["rss_delta_mb"] > 0
        assert len(r["samples_ms"]) == r["latency_ms"]["n"] >= 3
        assert len(r["artifact"]["sha256"]) == 64 and r["env"]["torch"]
        assert 0 <= r["metrics"]["miou"] <= 1 and r["images"] == 3
    torch_rec, ort_rec = sorted(recs, key=lambda r: r["backend"] != "torch")
    # The same weights on two runtimes must agree (a cheap parity check until issue #4's full one).
    assert ort_rec["metrics"]["miou"] == pytest.approx(torch_rec["metrics"]["miou"], abs=0.01)
    assert "| ddrnet23_slim | fp32" in res.stdout


def test_trains_quick_checkpoint_when_missing_then_reuses_it(tiny_camvid, tmp_path):
    args = ["--model", "espnet", "--data", "camvid", "--data-root", str(tiny_camvid), "--backend", "onnxruntime",
            "--train-epochs", "2", *FAST]
    first = _bench(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training one with the quick recipe" in first.stderr
    assert (tmp_path / "artifacts/checkpoints/espnet_p2q8/camvid/quick/best.pt").is_file()
    second = _bench(args, tmp_path)
    assert second.returncode == 0 and "quick recipe" not in second.stderr and "exporting" not in second.stderr
    assert len(_records(tmp_path)) == 2  # append-only: the second run adds a record


@pytest.mark.parametrize("args,message", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--model", "ddrnet", "--backend", "tpu"], "unknown backend 'tpu'; valid: torch, onnxruntime, all"),
    (["--model", "ddrnet", "--quant", "qat"], "issue #3"),
    (["--model", "ddrnet", "--quant", "int3"], "unknown variant 'int3'"),
    (["--model", "ddrnet", "--data", "camvid", "--data-root", "/nonexistent/camvid"], "/nonexistent/camvid"),
    (["--model", "ddrnet", "--data", "nosuchdata"], "nosuchdata"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    res = _bench(args, tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_corrupt_weights(tiny_camvid, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    res = _bench(["--model", "ddrnet", "--weights", str(bad), "--data", "camvid", "--data-root", str(tiny_camvid)],
                 tmp_path, timeout=120)
    assert res.returncode == 2 and "cannot read checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_wrong_checkpoint_lists_keys(tiny_camvid, tmp_path):
    weights = REPO.parent / "shared" / "weights" / "espnet_p_2_q_8_camvid.pth"
    if not weights.exists():
        pytest.skip("../shared/weights absent (only on the project's machines)")
    res = _bench(["--model", "ddrnet", "--weights", str(weights), "--data", "camvid", "--data-root", str(tiny_camvid)],
                 tmp_path, timeout=120)
    assert res.returncode == 2 and "does not fit" in res.stderr and "missing keys" in res.stderr
