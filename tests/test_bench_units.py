"""Harness pieces without running cells: statistics, profiles, the numpy pre-processing and
metrics against the zoo's torch versions, atomic writes, the record schema, the regression gate
and backend gating."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bench import compare as bcompare
from bench import imageops, metrics, results, timing
from zoo.io import is_temporary, remove_stale_temporaries, write_json
from tests.conftest import REPO


# -- statistics and timing ----------------------------------------------------------------------
def test_summarize_known_samples():
    s = timing.summarize([float(v) for v in range(1, 101)])
    assert s["median"] == 50.5 and s["mean"] == 50.5 and s["min"] == 1 and s["max"] == 100 and s["n"] == 100
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(math.sqrt(100 * (100**2 - 1) / 12 / 99))
    assert s["cv"] == pytest.approx(s["std"] / 50.5)
    one = timing.summarize([4.0])
    assert one["std"] == 0 and one["cv"] == 0 and one["median"] == 4.0
    flat = timing.summarize([2.0] * 5)
    assert flat["cv"] == 0 and not timing.is_unstable(flat)
    assert timing.is_unstable({"cv": 0.11}) and not timing.is_unstable({"cv": 0.11}, threshold=0.2)


class FakeClock:
    """A clock that only moves when the measured function runs (deterministic timing tests)."""

    def __init__(self, durations_ns):
        self.t = 0
        self.durations = list(durations_ns)
        self.calls = 0

    def __call__(self):
        return self.t

    def fn(self, x):
        self.t += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_measure_warmup_trials_and_raw_samples():
    clock = FakeClock([1_000_000, 2_000_000, 3_000_000])  # 1, 2, 3 ms in turn
    prof = timing.TimingProfile("t", warmup_iters=4, warmup_s=0.0, iters=6, min_time_s=0.0, trials=3)
    out = timing.measure(clock.fn, ["a", "b"], prof, clock=clock)
    st = out["stats"]
    assert st["warmup_iters"] == 4 and st["trials"] == 3 and st["n"] == 18 == len(out["samples_ms"])
    # warm-up consumed durations 1,2,3,1; timed calls continue the cycle: 2,3,1,2,3,1,...
    assert out["samples_ms"][:4] == [2.0, 3.0, 1.0, 2.0]
    assert out["trial_medians"] == [2.0, 2.0, 2.0] and st["median"] == 2.0
    # time floors: at least min_time_s of timed calls even when iters is reached earlier
    clock = FakeClock([10_000_000])
    prof = timing.TimingProfile("t", warmup_iters=1, warmup_s=0.05, iters=2, min_time_s=0.1)
    out = timing.measure(clock.fn, [0], prof, clock=clock)
    assert out["stats"]["warmup_iters"] == 5 and out["stats"]["n"] == 10


def test_profiles_and_overrides():
    ci, rel = timing.PROFILES["ci"], timing.PROFILES["release"]
    assert (ci.warmup_iters, ci.warmup_s, ci.iters, ci.min_time_s) == (50, 5.0, 300, 10.0)
    assert (rel.warmup_iters, rel.warmup_s, rel.iters, rel.min_time_s) == (50, 5.0, 1000, 30.0)
    assert timing.resolve_profile("release") is rel and timing.profile_id(rel) == "release"
    p = timing.resolve_profile("quick", iters=3, warmup=1)
    assert (p.iters, p.warmup_iters, p.warmup_s, p.min_time_s) == (3, 1, 0.0, 0.0)
    assert timing.profile_id(p) == "quick[warmup_iters=1,warmup_s=0.0,iters=3,min_time_s=0.0]"
    p = timing.resolve_profile("ci", trials=3)
    assert p.trials == 3 and p.min_time_s == 10.0 and timing.profile_id(p) == "ci[trials=3]"


# -- numpy pre-processing, post-processing and metrics vs the zoo's ------------------------------
@pytest.mark.parametrize("pre", [
    {"mean": [105.033, 108.409, 110.331], "std": [78.304, 79.461, 78.341], "bgr": False, "scale": 1.0},
    {"mean": [72.39, 82.91, 73.16], "std": [1.0, 1.0, 1.0], "bgr": True, "scale": "1/255"},
    {"mean": [0.0, 128.0, 255.0], "std": [0.5, 2.0, 3.0], "bgr": True, "scale": 0.7},
])
def test_numpy_preprocess_matches_zoo_exactly(pre):
    from zoo.data import Preprocess

    zp = Preprocess.from_dict(pre)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (13, 17, 3), dtype=np.uint8) for _ in range(3)]
    expected = zp.batch_numpy(images)
    d = zp.to_dict()
    got = imageops.preprocess_batch(images, d)
    assert got.dtype == expected.dtype and got.flags.c_contiguous
    assert np.array_equal(got, expected)
    assert np.array_equal(imageops.Preprocessor(d, (13, 17))(images), expected)
    assert np.array_equal(got[0], zp(images[0]).numpy())
    # a different input size goes through the same bilinear resize as the zoo's evaluation
    resized = imageops.Preprocessor(d, (8, 10))(images[:1])
    from PIL import Image

    ref = np.asarray(Image.fromarray(images[0]).resize((10, 8), Image.BILINEAR))
    assert np.array_equal(resized, zp.batch_numpy([ref]))


@pytest.mark.parametrize("src,dst", [((7, 9), (20, 30)), ((16, 24), (64, 96)), ((10, 10), (4, 6))])
def test_upsample_and_argmax_match_torch(src, dst):
    import torch
    import torch.nn.functional as F

    logits = np.random.default_rng(1).standard_normal((2, 5, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(logits), size=dst, mode="bilinear", align_corners=False).numpy()
    got = imageops.upsample_bilinear(logits, dst)
    assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-5)
    masks = imageops.postprocess(logits, dst)
    assert masks.dtype == np.uint8 and masks.shape == (2, *dst)
    agree = (masks == ref.argmax(1)).mean()
    assert agree > 0.999  # only exact ties could differ
    same = imageops.postprocess(ref, dst)
    assert np.array_equal(same, ref.argmax(1))


def test_confusion_matrix_is_torch_free_and_takes_tensors():
    # The ONNX Runtime cell scores with zoo.metrics; importing it must not import torch.
    import subprocess
    import sys

    code = "import sys, zoo.metrics, zoo.io; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
    import torch

    from zoo.metrics import ConfusionMatrix

    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    pred, target = np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]])
    a.update(pred, target)
    b.update(torch.as_tensor(pred), torch.as_tensor(target))
    assert np.array_equal(a.mat, b.mat)


def test_pixel_agreement_counts_all_pixels():
    ag = metrics.Agreement()
    assert ag.value is None
    ag.update(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 0]]))
    ag.update(np.zeros((2, 2)), np.zeros((2, 2)))
    assert ag.value == pytest.approx(7 / 8)
    with pytest.raises(ValueError):
        ag.update(np.zeros((2, 2)), np.zeros((2, 3)))


# -- atomic writes and records ------------------------------------------------------------------
def test_killed_writer_leaves_old_file_or_nothing(tmp_path):
    target = tmp_path / "rec.json"
    write_json(target, {"v": 1})
    code = ("import sys; from zoo.io import write_json; "
            "write_json(sys.argv[1], {'v': 2, 'pad': 'x' * 100000}, _fault_half=True)")
    for path in (target, tmp_path / "new.json"):
        proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
        assert proc.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"v": 1}  # the old version, whole
    assert not (tmp_path / "new.json").exists()  # nothing under the final name
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 2 and all(is_temporary(p) for p in leftovers)
    assert len(remove_stale_temporaries(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.json"]


def _record(**over):
    rec = {"schema": results.SCHEMA, "model": "m", "variant": "fp32", "backend": "onnxruntime", "dataset": "d",
           "split": "val", "input_hw": [64, 96], "batch": 1, "threads": 2, "weights_sha256": "ab" * 32,
           "profile": "ci", "profile_id": "ci", "images_subset": "all", "status": "ok", "error": None,
           "timestamp": "2025-01-01T00:00:00.000+00:00", "metrics": {"miou": 0.5}}
    rec.update(over)
    rec["cell_key"] = results.cell_key(rec)
    return rec


def test_record_round_trip_append_only_and_schema(tmp_path):
    rec = _record(latency_ms={"median": 1.0}, samples_ms=[1.0, 1.1], _transient=1)
    p1 = results.write_record(tmp_path, rec)
    p2 = results.write_record(tmp_path, rec)
    assert p1 != p2 and p1.is_file() and p2.is_file()  # never overwritten
    back = results.read_records(tmp_path)
    assert len(back) == 2
    for b in back:
        assert b.pop("_path")
        assert b == {k: v for k, v in rec.items() if not k.startswith("_")}
    assert results.read_records(p1)[0]["cell_key"] == rec["cell_key"]
    (tmp_path / "list.json").write_text(json.dumps([rec, _record(backend="torch")]))
    assert len(results.read_records(tmp_path / "list.json")) == 2
    with pytest.raises(ValueError, match="lacks"):
        results.write_record(tmp_path, {"schema": 2})
    with pytest.raises(ValueError, match="status"):
        results.write_record(tmp_path, _record(status="great"))
    # a schema-1 record reads with the fields its readers expect
    old = {k: v for k, v in _record().items() if k not in ("batch", "weights_sha256", "profile_id",
                                                          "images_subset", "cell_key")}
    old.update(schema=1, weights={"sha256": "cd" * 32})
    (tmp_path / "old.json").write_text(json.dumps(old))
    up = results.read_records(tmp_path / "old.json")[0]
    assert up["batch"] == 1 and up["weights_sha256"] == "cd" * 32 and up["cell_key"].startswith("model=m|")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        results.read_records(tmp_path)


def test_cell_key_fields():
    a = _record()
    for field, value in [("threads", 4), ("batch", 2), ("input_hw", [32, 32]), ("weights_sha256", "x"),
                         ("profile_id", "release"), ("images_subset", "10"), ("backend", "torch")]:
        assert results.cell_key(_record(**{field: value})) != a["cell_key"], field
    assert results.cell_key(_record(timestamp="2030")) == a["cell_key"]
    assert results.cell_key(_record(threads=4), ignore=["threads"]) == results.cell_key(a, ignore=["threads"])


# -- regression gate ----------------------------------------------------------------------------
def _timed(median, cv, n=400, seed=0, **over):
    rng = np.random.default_rng(seed)
    samples = (median * (1 + cv * rng.standard_normal(n))).tolist()
    return _record(latency_ms=timing.summarize(samples), samples_ms=samples, **over)


def test_ratio_ci():
    rng = np.random.default_rng(3)
    base = 10 + 0.2 * rng.standard_normal(500)
    lo, hi = bcompare.ratio_ci(base, 10 + 0.2 * rng.standard_normal(500))
    assert lo < 1 < hi and hi - lo < 0.02
    lo, hi = bcompare.ratio_ci(base, 12 + 0.2 * rng.standard_normal(500))
    assert 1.15 < lo < 1.2 < hi < 1.25
    assert bcompare.ratio_ci(base, base * 1.1, seed=5) == bcompare.ratio_ci(base, base * 1.1, seed=5)


@pytest.mark.parametrize("cand,verdict,why", [
    (dict(median=10.0, cv=0.02, seed=1), "ok", ""),
    (dict(median=10.3, cv=0.02, seed=1), "ok", ""),                      # +3% < 5% floor
    (dict(median=12.0, cv=0.02, seed=1), "FAIL", "latency_ms median"),   # +20%, CI above 1
    (dict(median=9.0, cv=0.02, seed=1), "ok", ""),                       # faster is fine
    (dict(median=10.0, cv=0.02, seed=1, metrics={"miou": 0.494}), "FAIL", "miou dropped"),
    (dict(median=10.0, cv=0.02, seed=1, metrics={"miou": 0.496}), "ok", ""),
    (dict(median=10.0, cv=0.02, seed=1, metrics={"miou": 0.9}), "ok", ""),  # better accuracy
])
def test_gate_cases(cand, verdict, why):
    rows = bcompare.compare_records([_timed(10.0, 0.02)], [_timed(**cand)])
    assert len(rows) == 1 and rows[0].verdict == verdict, rows[0].reasons
    assert why in "; ".join(rows[0].reasons)


def test_gate_noise_floor_missing_new_and_failed():
    noisy = _timed(10.0, 0.10)  # limit = 1 + 3 x 0.10
    assert bcompare.compare_records([noisy], [_timed(12.0, 0.10, seed=1)])[0].verdict == "ok"
    assert bcompare.compare_records([noisy], [_timed(14.0, 0.10, seed=1)])[0].verdict == "FAIL"
    # without raw samples the ratio alone decides
    bare = {k: v for k, v in _timed(12.0, 0.02).items() if k != "samples_ms"}
    assert bcompare.compare_records([_timed(10.0, 0.02)], [bare])[0].verdict == "FAIL"
    base = [_timed(10.0, 0.02), _timed(10.0, 0.02, backend="torch")]
    rows = bcompare.compare_records(base, [_timed(10.0, 0.02), _timed(5.0, 0.02, batch=4)])
    assert sorted(r.verdict for r in rows) == ["FAIL", "new", "ok"]
    rows = bcompare.compare_records(base, [_timed(10.0, 0.02)], bcompare.GateConfig(allow_missing=True))
    assert sorted(r.verdict for r in rows) == ["missing", "ok"]
    failed = _record(status="failed", error="cell process killed by SIGSEGV")
    rows = bcompare.compare_records([_timed(10.0, 0.02)], [failed])
    assert rows[0].verdict == "FAIL" and "SIGSEGV" in rows[0].reasons[0]
    # the newest ok record of a key wins over an older one and over a newer failure
    older = _timed(30.0, 0.02, timestamp="2025-01-01T00:00:00")
    newer = _timed(10.0, 0.02, timestamp="2025-02-01T00:00:00")
    later_fail = _record(status="failed", error="x", timestamp="2025-03-01T00:00:00")
    assert bcompare.compare_records([_timed(10.0, 0.02)], [older, newer, later_fail])[0].verdict == "ok"
    # matching can ignore a key field
    other_threads = _timed(10.0, 0.02, threads=4)
    assert [r.verdict for r in bcompare.compare_records([_timed(10.0, 0.02)], [other_threads])] == ["FAIL", "new"]
    rows = bcompare.compare_records([_timed(10.0, 0.02)], [other_threads], bcompare.GateConfig(ignore_key=("threads",)))
    assert [r.verdict for r in rows] == ["ok"]


def test_compare_cli(tmp_path, capsys):
    base, good, slow = tmp_path / "base", tmp_path / "good", tmp_path / "slow.json"
    results.write_record(base, _timed(10.0, 0.02))
    results.write_record(good, _timed(10.1, 0.02, seed=2))
    slow.write_text(json.dumps([_timed(13.0, 0.02, seed=2)]))
    assert bcompare.main([str(base), str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| cell") and "| m/fp32/onnxruntime/64x96/b1 | ok" in out
    assert bcompare.main([str(base), str(slow)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert bcompare.main([str(base), str(slow), "--min-slowdown", "0.5"]) == 0
    capsys.readouterr()
    assert bcompare.main([str(base), str(tmp_path / "nothing")]) == 2
    assert bcompare.main([str(base), str(good), "--tolerance", "miou=0.6", "--tolerance", "pixel_accuracy=0.1"]) == 0
    with pytest.raises(SystemExit):
        bcompare.main([str(base), str(good), "--tolerance", "miou"])


# -- backends -----------------------------------------------------------------------------------
def test_backend_gating(monkeypatch):
    import types

    from bench.backends import BACKENDS, get_backend, precision_of

    trt = get_backend("tensorrt")
    ok, reason = trt.available()
    try:
        import tensorrt  # noqa: F401
        have_trt = True
    except ImportError:
        have_trt = False
    if not have_trt:
        assert not ok and reason.startswith("tensorrt not installed: pip install tensorrt")
    import torch

    if not torch.cuda.is_available():
        fake = types.ModuleType("tensorrt")
        fake.__version__ = "10.3.0"
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        assert trt.available() == (False, "no CUDA GPU")
        fake.__version__ = "8.4.1"
        ok, reason = trt.available()
        assert not ok and ">= 8.5" in reason
        ok, reason = get_backend("torch-cuda").available()
        assert not ok and reason.startswith("no CUDA GPU")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        ok, reason = get_backend("onnxruntime-cuda").available()
        assert not ok and "CUDAExecutionProvider" in reason
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        assert not get_backend("onnxruntime-trt").available()[0]
    assert get_backend("onnxruntime").available() == (True, "")
    with pytest.raises(KeyError, match="valid backends"):
        get_backend("tpu")
    assert precision_of(trt, "fp32") == "fp16" and precision_of(trt, "fp32", {"trt_precision": "fp32"}) == "fp32"
    assert precision_of(trt, "static") == "int8" and precision_of(get_backend("onnxruntime"), "fp32") == "fp32"
    assert set(BACKENDS) == {"torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "openvino",
                             "tensorrt"}
    # a missing OpenVINO is a skipped cell with the install command, not an import crash
    monkeypatch.setitem(sys.modules, "openvino", None)
    ok, reason = get_backend("openvino").available()
    assert not ok and reason.startswith("openvino not installed") and "pip install openvino" in reason
    assert precision_of(get_backend("openvino"), "static") == "int8" and get_backend("openvino").device == "cpu"


def test_parse_sizes():
    from bench.run import parse_sizes

    assert parse_sizes(["64", "96"]) == [(64, 96)]
    assert parse_sizes(["64x96", "128", "192", "32X32"]) == [(64, 96), (128, 192), (32, 32)]
    import argparse

    for bad in (["64"], ["64", "96", "7"], ["big"]):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)


def test_api_skipped_only_sweep_and_dataframe(tiny_camvid, tmp_path, artifacts):
    """The Python API end to end on a backend that cannot run here (no cell process needed)."""
    import bench
    from bench import api

    cfg = bench.BenchConfig(models=["ddrnet"], backends=["tensorrt"], weights="random", data="camvid",
                            data_root=str(tiny_camvid), input_hw=(64, 96), out=str(tmp_path / "res"))
    logs: list[str] = []
    recs = api.run(cfg, log=logs.append)
    assert len(recs) == 1 and recs[0]["status"] == "skipped" and recs[0]["error"]
    assert recs[0]["schema"] == 2 and recs[0]["precision"] == "fp16" and recs[0]["device"] == "cuda"
    # a rerun finds it stored (the backend is still unavailable); --force writes a new record
    again = api.run(cfg, log=logs.append)
    assert again[0].get("_reused") and len(list((tmp_path / "res").glob("*.json"))) == 1
    api.run({**cfg.__dict__, "force": True}, log=logs.append)
    assert len(list((tmp_path / "res").glob("*.json"))) == 2
    df = bench.load_results(tmp_path / "res")
    assert len(df) == 2 and list(df.columns[:3]) == ["model", "variant", "backend"]
    assert {"input_h", "input_w", "cell_key", "env.cpu.model", "weights_sha256"} <= set(df.columns)
    assert "samples_ms" not in df.columns and (df["status"] == "skipped").all()
    assert df["input_h"].iloc[0] == 64


class _FakeTensorRT:
    """Just enough of the tensorrt module (and of torch.cuda, mapped to the CPU) to drive
    bench.backends.tensorrt through build, cache, binding and execution without a GPU. The
    'engine' computes output = input * 2 so the data path can be checked."""

    def __init__(self, version):
        import types

        self.calls: list = []
        calls = self.calls
        self.buffers: dict[int, object] = {}
        buffers = self.buffers
        m = types.ModuleType("tensorrt")
        m.__version__ = version
        m.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
        m.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
        m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        m.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8", GPU_FALLBACK="gpu_fallback")
        m.DeviceType = types.SimpleNamespace(DLA="dla", GPU="gpu")
        m.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        m.nptype = lambda dt: np.float32

        class Config:
            def set_memory_pool_limit(self, pool, size): calls.append(("pool", pool, size))
            def set_flag(self, flag): calls.append(("flag", flag))
            def create_timing_cache(self, blob): calls.append(("timing_cache_in", bytes(blob))); return "cache"
            def set_timing_cache(self, cache, ignore_mismatch): calls.append(("set_cache", ignore_mismatch))
            def get_timing_cache(self): return types.SimpleNamespace(serialize=lambda: b"TIMING")

        class Builder:
            num_DLA_cores = 2
            def __init__(self, logger): pass
            def create_network(self, flags): calls.append(("network_flags", flags)); return "net"
            def create_builder_config(self): return Config()
            def build_serialized_network(self, net, cfg): calls.append(("build",)); return b"ENGINE"

        class Parser:
            num_errors = 0
            def __init__(self, net, logger): pass
            def parse_from_file(self, path): calls.append(("parse", path)); return True

        class Context:
            def __init__(self): self.addr = {}
            def set_tensor_address(self, name, ptr): self.addr[name] = ptr
            def execute_async_v3(self, stream):
                calls.append(("execute", stream))
                buffers[self.addr["logits"]].copy_(buffers[self.addr["input"]] * 2)
                return True

        class Engine:
            num_io_tensors = 2
            device_memory_size = 1 << 20
            def get_tensor_name(self, i): return ["input", "logits"][i]
            def get_tensor_shape(self, name): return (1, 3, 4, 5)
            def get_tensor_dtype(self, name): return "float"
            def get_tensor_mode(self, name): return "in" if name == "input" else "out"
            def create_execution_context(self): return Context()

        class Runtime:
            DLA_core = None
            def __init__(self, logger): pass
            def deserialize_cuda_engine(self, data): assert data == b"ENGINE"; return Engine()

        m.Builder, m.OnnxParser, m.Runtime = Builder, Parser, Runtime
        self.module = m

    def patch_cuda(self, monkeypatch):
        import contextlib
        import types

        import torch

        buffers = self.buffers
        real_empty = torch.empty

        def empty(*shape, device=None, pin_memory=False, **kw):
            t = real_empty(*shape, **kw)
            buffers[t.data_ptr()] = t
            return t

        class Event:
            def __init__(self, enable_timing=False): pass
            def record(self, stream=None): pass
            def elapsed_time(self, other): return 0.5

        monkeypatch.setattr(torch, "empty", empty)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU (sm 0)")
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (1000 << 20, 2000 << 20))
        monkeypatch.setattr(torch.cuda, "Stream", lambda: types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None))
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 0)


@pytest.mark.parametrize("version,flags", [("8.5.2.2", 1), ("10.3.0", 0)])
def test_tensorrt_backend_against_a_fake_runtime(tmp_path, monkeypatch, version, flags):
    from bench.backends.tensorrt import TensorrtBackend

    fake = _FakeTensorRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    fake.patch_cuda(monkeypatch)
    assert TensorrtBackend.available() == (True, "")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    art = {"path": str(onnx), "sha256": "f" * 64}
    opts = {"cache_dir": str(tmp_path / "trt"), "variant": "fp32", "dla_core": 1}
    be = TensorrtBackend()
    built = be.prepare(art, opts)
    engine = tmp_path / "trt" / f"trt-{version}" / "Fake_GPU_sm_0" / ("f" * 16 + "_fp16_dla1_ws1024.engine")
    assert not built["cached"] and built["engine"] == str(engine) and engine.read_bytes() == b"ENGINE"
    assert (engine.parent / "timing.cache").read_bytes() == b"TIMING"
    assert ("network_flags", flags) in fake.calls  # EXPLICIT_BATCH only before TensorRT 10
    assert ("flag", "fp16") in fake.calls and ("flag", "gpu_fallback") in fake.calls
    assert ("timing_cache_in", b"") in fake.calls
    assert be.prepare(art, opts)["cached"]  # the second cell reuses the engine
    be.load(art, threads=1, options=opts)
    x = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    be.reset_device_times()
    y = be.infer(x)
    assert np.array_equal(y, 2 * x) and ("execute", 7) in fake.calls and be.device_times_ms == [0.5]
    y2 = be.infer(x + 1)
    assert np.array_equal(y, 2 * x) and np.array_equal(y2, 2 * (x + 1))  # results are not aliased
    assert be.gpu_memory()["engine_activation_mb"] == 1.0 and be.info()["precision"] == "fp16"
    opts32 = {**opts, "trt_precision": "fp32", "dla_core": None}
    fake.calls.clear()
    assert be.prepare(art, opts32)["engine"].endswith("_fp32_ws1024.engine")
    assert ("timing_cache_in", b"TIMING") in fake.calls and not any(c[0] == "flag" for c in fake.calls)
    with pytest.raises(Exception, match="DLA core 5"):
        be.prepare(art, {**opts, "dla_core": 5})


# -- artifact keys ---------------------------------------------------------------------------------
def test_fx_int8_artifact_name_changes_with_the_network_code(tmp_path, monkeypatch):
    """The PyTorch static INT8 artifact's name carries a hash of the network's source files, so an
    edited network never reuses an artifact calibrated from the old graph."""
    import torch

    from bench import runner
    from zoo.registry import get_entry

    a = runner.torch_static_name("fx-histogram-16img-seed0", "c" * 64, "1" * 64, (64, 96))
    b = runner.torch_static_name("fx-histogram-16img-seed0", "c" * 64, "2" * 64, (64, 96))
    assert a != b and "code1111111111" in a
    # The files behind a network: its builder's module and every zoo module its blocks come from.
    pidnet = get_entry("pidnet_s").build(num_classes=11, aux=False)
    names = {p.name for p in runner.network_source_files(pidnet, "pidnet_s")}
    assert {"pidnet.py", "ddrnet.py"} <= names
    # Editing one of them changes the hash.
    src = tmp_path / "net.py"
    src.write_text("class Net: pass\n")
    monkeypatch.setattr(runner, "network_source_files", lambda net, model: [src])
    net = torch.nn.Conv2d(3, 3, 1)
    before = runner.fx_int8_code_sha256(net, "ddrnet")
    assert runner.fx_int8_code_sha256(net, "ddrnet") == before  # stable
    src.write_text("class Net: x = 1\n")
    assert runner.fx_int8_code_sha256(net, "ddrnet") != before


def test_onnx_artifact_names_change_with_the_network_code(tmp_path, monkeypatch):
    """Every ONNX artifact of a cell (FP32 export, and the static / dynamic / QAT files made from it)
    is named with a hash of the network's and the exporter's code, so an edited network or a new
    onnxruntime makes new files instead of reusing ones traced from the old code."""
    import torch

    from bench import runner

    src = tmp_path / "net.py"
    src.write_text("class Net: pass\n")
    monkeypatch.setattr(runner, "network_source_files", lambda net, model: [src])
    net = torch.nn.Conv2d(3, 3, 1)
    before = runner.onnx_code_sha256(net, "ddrnet")
    assert runner.onnx_code_sha256(net, "ddrnet") == before
    src.write_text("class Net: x = 1\n")
    assert runner.onnx_code_sha256(net, "ddrnet") != before
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")  # another runtime: other static artifacts
    changed = runner.onnx_code_sha256(net, "ddrnet")
    assert changed != before
    # The FP32 export's file name carries it (no export runs: the file is already "there").
    prep = runner.Prepared(model="ddrnet", num_classes=3, preprocess={}, weights_path="w", weights_sha256="s" * 64,
                           weights_meta={}, net=net, export_dir=tmp_path, torch_artifact={}, params=0)
    assert prep.onnx_code == "code" + changed[:10]
    path = tmp_path / f"fp32-{prep.onnx_code}_8x8_b1.onnx"
    path.write_bytes(b"stands for an exported model")
    assert prep.artifact("onnx", (8, 8), 1, lambda m: None)["path"] == str(path)


def test_evalset_cache_slot_is_found_again_only_while_complete(tmp_path):
    """An evaluation set is reused by the fingerprint of its files' listing; a touched source file
    or a missing labels file means it is built again."""
    import json
    import os

    from bench.evalset_cache import contents_sha256, evalset_slot, file_listing

    src = tmp_path / "a.png"
    src.write_bytes(b"pixels")
    key = lambda: ["synthetic", "val", [8, 8], file_listing([src])]  # noqa: E731
    slot_mtime = src.stat().st_mtime_ns
    slot = evalset_slot(str(tmp_path / "art"), "synthetic", "val", key(), "_8x8")
    assert slot.meta is None and slot.folder.name.endswith("_8x8") and slot.folder.parent.name == "synthetic-val"
    slot.folder.mkdir(parents=True)
    labels = slot.folder / "labels.npz"
    labels.write_bytes(b"x")
    slot.meta_path.write_text(json.dumps({"labels": str(labels), "fingerprint": slot.fingerprint}))
    again = evalset_slot(str(tmp_path / "art"), "synthetic", "val", key(), "_8x8")
    assert again.meta == {"labels": str(labels), "fingerprint": slot.fingerprint}
    os.utime(src, ns=(0, 0))  # same bytes, other mtime: another fingerprint, another folder
    assert evalset_slot(str(tmp_path / "art"), "synthetic", "val", key(), "_8x8").fingerprint != slot.fingerprint
    labels.unlink()
    os.utime(src, ns=(src.stat().st_atime_ns, slot_mtime))
    assert evalset_slot(str(tmp_path / "art"), "synthetic", "val", key(), "_8x8").meta is None  # labels gone
    assert contents_sha256([src]) != contents_sha256([src, src])


# -- busy-machine check ---------------------------------------------------------------------------
def test_busy_cores_counts_another_process_spinning():
    """The sweep's pre-cell check sees a process that keeps a core busy (one spinning child is
    at least ~0.8 of a core over the 1 s window, whatever else runs)."""
    from bench.runner import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        import time

        time.sleep(0.3)  # let it start spinning
        busy = busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 <= busy <= (os.cpu_count() or 1) + 0.01
