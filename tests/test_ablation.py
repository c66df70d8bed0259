"""Issue #8 part 3: the loss ablation command (zoo.ablation) and the long-tailed synthetic set;
plus the part 1/2 checks that tests/test_losses.py does not cover."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from zoo import ablation as ab
from zoo import class_weights as cw
from zoo.data import build_dataset, load_card

TINY = ["--model", "espnet", "--data", "camvid", "--epochs", "1", "--batch-size", "2", "--crop", "64", "96",
        "--workers", "0", "--threads", "1"]
CLASSES = list(load_card("camvid").classes)


def _args(root, tmp_path, *extra):
    return [*TINY, "--data-root", str(root), "--artifacts", str(tmp_path / "art"), "--out", str(tmp_path / "out"),
            *extra]


def _pixel_counts(root) -> np.ndarray:
    ds = build_dataset("camvid", root=root, split="train")
    n = np.zeros(11, np.int64)
    for i in range(len(ds)):
        lab = ds[i].label
        n += np.bincount(lab[lab != 255], minlength=11)
    return n


# --------------------------------------------------------------------------------------------
# plan and options
# --------------------------------------------------------------------------------------------

def test_plan_expands_losses_by_seeds(tiny_camvid, tmp_path):
    cfg = ab.AblationConfig(data="camvid", data_root=tiny_camvid, losses=("ce", "cb_ce", "ohem:effective"),
                            seeds=2, first_seed=5, artifacts=tmp_path).resolved()
    runs = ab.plan(cfg)
    assert [(r.loss.name, r.seed) for r in runs] == [
        ("ce", 5), ("ce", 6), ("cb_ce", 5), ("cb_ce", 6), ("ohem:effective", 5), ("ohem:effective", 6)]
    assert [(r.loss.loss, r.loss.weights) for r in runs[::2]] == [("ce", "none"), ("cb_ce", "effective"),
                                                                  ("ohem", "effective")]
    assert len({r.run_dir for r in runs}) == 6
    assert all(r.run_dir.parent == tmp_path / "checkpoints" / "ddrnet23_slim" / "camvid" for r in runs)
    assert cfg.epochs == ab.DEFAULT_EPOCHS and cfg.crop == ab.DEFAULT_CROP and cfg.recipe == "ddrnet"
    # beta changes the weighted runs' identity, not the unweighted ones'
    other = ab.plan(ab.AblationConfig(**{**cfg.__dict__, "beta": 0.99}).resolved())
    assert other[0].run_name == runs[0].run_name and other[2].run_name != runs[2].run_name
    # the default list holds the losses
    assert {"ce", "cb_ce", "cb_focal", "ohem", "lovasz"} <= set(ab.DEFAULT_LOSSES)


def test_dry_run_prints_the_plan(tiny_camvid, tmp_path, capsys):
    assert ab.main(_args(tiny_camvid, tmp_path, "--losses", "ce", "cb_focal", "--seeds", "3", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "2 losses x 3 seeds = 6 runs" in out and out.count(" todo ") == 6
    assert not (tmp_path / "art").exists() and not (tmp_path / "out").exists()


def test_bad_loss_is_a_one_line_error(tiny_camvid, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ab.main(_args(tiny_camvid, tmp_path, "--losses", "ce,focal"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown loss 'focal'" in err
    assert all(name in err for name in ab.LOSS_VARIANTS) and "LOSS:WEIGHTS" in err
    with pytest.raises(SystemExit):
        ab.main(_args(tiny_camvid, tmp_path, "--tail-k", "11"))
    assert "--tail-k" in capsys.readouterr().err
    # a weighting with its parameter is a valid LOSS:WEIGHTS; a parameter on another method is not
    assert ab.parse_loss("cb_ce:enet:1.10").weights == "enet:1.10"
    with pytest.raises(ab.UsageError):
        ab.parse_loss("cb_ce:inverse:2")


def test_class_split_from_counts():
    tail, head = ab.class_split([50, 3, 7, 3, 0, 90], 3)
    assert tail == [4, 1, 3] and head == [0, 2, 5]


# --------------------------------------------------------------------------------------------
# a tiny ablation end to end
# --------------------------------------------------------------------------------------------

def test_tiny_ablation_report_rerun_and_report_only(tiny_camvid, tmp_path, capsys, monkeypatch):
    args = _args(tiny_camvid, tmp_path, "--losses", "ce,cb_ce", "--seeds", "2", "--tail-k", "4")
    assert ab.main(args) == 0
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert files == {"ablation.md", "ablation.csv", "ablation_runs.csv", "ablation.json", "runs"}  # no temporaries
    rep = json.loads((out / "ablation.json").read_text())
    assert rep["complete"] and len(rep["runs"]) == 4 and all(r["status"] == "done" for r in rep["runs"])

    # tail/head split: the 4 rarest classes by training pixels, counted independently here
    counts = _pixel_counts(tiny_camvid)
    order = sorted(range(11), key=lambda i: (counts[i], i))
    assert rep["tail_classes"] == [CLASSES[i] for i in order[:4]]
    assert sorted(rep["head_classes"]) == sorted(CLASSES[i] for i in order[4:])
    assert rep["train_counts"] == {c: int(counts[i]) for i, c in enumerate(CLASSES)}

    # per-run tail/head from per-class IoU; mean and sample std over seeds
    for run in rep["runs"]:
        ious = run["per_class_iou"]
        tail = [ious[c] for c in rep["tail_classes"] if ious[c] is not None]
        assert run["tail_miou"] == pytest.approx(sum(tail) / len(tail))
    for s in rep["summary"]:
        vals = [r["miou"] for r in rep["runs"] if r["loss"] == s["loss"]]
        assert s["seeds_done"] == 2
        assert s["miou_mean"] == pytest.approx(np.mean(vals))
        assert s["miou_std"] == pytest.approx(np.std(vals, ddof=1))
        tails = [r["tail_miou"] for r in rep["runs"] if r["loss"] == s["loss"]]
        assert s["tail_miou_mean"] == pytest.approx(np.mean(tails))
    cb = next(s for s in rep["summary"] if s["loss"] == "cb_ce")
    ce = next(s for s in rep["summary"] if s["loss"] == "ce")
    assert cb["delta_tail_miou"] == pytest.approx(cb["tail_miou_mean"] - ce["tail_miou_mean"])
    assert cb["class_balanced"] and not ce["class_balanced"]
    assert isinstance(rep["target_met"], bool) and "Issue #8 target" in rep["target_text"]
    assert "stated for CamVid" not in rep["target_text"]  # the data is a camvid card here

    with open(out / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["loss"] for r in rows] == ["ce", "cb_ce"]
    for col in ("miou_mean", "miou_std", "tail_miou_mean", "tail_miou_std", "head_miou_mean", "head_miou_std",
                "delta_tail_miou", "winner", *(f"iou_{c}" for c in CLASSES)):
        assert col in rows[0], col
    with open(out / "ablation_runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert [(r["loss"], r["seed"]) for r in runs] == [("ce", "0"), ("ce", "1"), ("cb_ce", "0"), ("cb_ce", "1")]
    md = (out / "ablation.md").read_text()
    assert "| loss | training loss | class weights | seeds | mIoU | tail mIoU | head mIoU |" in md
    assert "## Per-class IoU" in md and f"{rep['tail_classes'][0]} †" in md
    weights = next(r for r in rep["runs"] if r["loss"] == "cb_ce")["weights"]
    assert sum(weights.values()) == pytest.approx(11, rel=1e-4)

    # rerun: every run is finished, nothing trains
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ab, "_train_one", no_training)
    best = ab.plan(ab.config_from_args(ab.build_parser().parse_args(args), args).resolved())[0].run_dir / "best.pt"
    mtime = best.stat().st_mtime_ns
    capsys.readouterr()
    assert ab.main(args) == 0
    assert "4 finished, 0 to run" in capsys.readouterr().err
    assert best.stat().st_mtime_ns == mtime

    # --report-only rebuilds the same report from the finished runs
    for p in out.iterdir():
        if p.is_file():
            p.unlink()
    assert ab.main([*args, "--report-only"]) == 0
    again = json.loads((out / "ablation.json").read_text())
    assert again["summary"] == rep["summary"] and again["runs"] == rep["runs"]

    # a new machine: the artifact cache is gone, the records kept next to the report are not
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{r['run_name']}.json" for r in rep["runs"])
    shutil.rmtree(tmp_path / "art")
    capsys.readouterr()
    assert ab.main(args) == 0
    assert "4 finished, 0 to run" in capsys.readouterr().err
    again = json.loads((out / "ablation.json").read_text())
    assert again["summary"] == rep["summary"] and again["runs"] == rep["runs"]


def test_failed_run_is_recorded_and_retried(tiny_camvid, tmp_path, monkeypatch):
    real = ab._train_one

    def flaky(cfg, run):
        if run.loss.name == "lovasz":
            raise FloatingPointError("loss became nan at epoch 1 step 0; lower --lr")
        return real(cfg, run)

    monkeypatch.setattr(ab, "_train_one", flaky)
    args = _args(tiny_camvid, tmp_path, "--losses", "ce", "lovasz", "--seeds", "1")
    assert ab.main(args) == 0  # the sweep goes on
    rep = json.loads((tmp_path / "out" / "ablation.json").read_text())
    status = {r["loss"]: r for r in rep["runs"]}
    assert status["ce"]["status"] == "done" and status["lovasz"]["status"] == "failed"
    assert "FloatingPointError: loss became nan" in status["lovasz"]["error"]
    assert not rep["complete"] and "provisional: 1 of 2 runs" in rep["winner_text"]
    assert "failed" in (tmp_path / "out" / "ablation.md").read_text()
    monkeypatch.setattr(ab, "_train_one", real)
    assert ab.main(args) == 0  # retried, now fine
    rep = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert rep["complete"]


def test_killed_run_resumes(tiny_camvid, tmp_path, capsys, monkeypatch):
    # 8 images, batch 2 -> 4 steps per epoch, 2 epochs; the process dies at step 6 (mid epoch 2)
    args = [*_args(tiny_camvid, tmp_path, "--losses", "ce", "--seeds", "1")]
    args[args.index("--epochs") + 1] = "2"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_FAULT_KILL_AT_STEP": "6"}
    killed = subprocess.run([sys.executable, "-m", "zoo.ablation", *args], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cfg = ab.config_from_args(ab.build_parser().parse_args(args), args).resolved()
    (run,) = ab.plan(cfg)
    assert ab.run_state(run, 2) == ("partial", 1)
    monkeypatch.delenv("EDGEZOO_FAULT_KILL_AT_STEP", raising=False)
    assert ab.main(args) == 0  # the rerun resumes it
    err = capsys.readouterr().err
    assert "resuming after epoch 1/2" in err and "[train] resuming" in err
    assert ab.run_state(run, 2) == ("done", 2)
    history = json.loads((run.run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


# --------------------------------------------------------------------------------------------
# the long-tailed synthetic set
# --------------------------------------------------------------------------------------------

LT_KW = dict(num_images={"train": 30, "val": 2, "test": 1}, size=(72, 96), progress=False)


def _hist(ds) -> np.ndarray:
    h = np.zeros(11, np.int64)
    for i in range(len(ds)):
        lab = ds.load(i).label
        h += np.bincount(lab[lab != 255], minlength=11)
    return h


def test_long_tailed_synthetic_is_deterministic_and_steeper():
    parent = build_dataset("synthetic", split="train", **LT_KW)
    lt = build_dataset("synthetic-lt", split="train", **LT_KW)
    again = build_dataset("synthetic-lt", split="train", **LT_KW)
    assert lt.files == again.files  # deterministic
    assert len(lt) == round(0.4 * len(parent)) and set(lt.files) <= set(parent.files)
    assert lt.card.name == "synthetic-lt" and lt.card.classes == parent.card.classes
    # measured from the labels: the parent's rarest classes hold a smaller share of the pixels
    hp, hl = _hist(parent), _hist(lt)
    rare = np.argsort(hp, kind="stable")[:5]
    share = lambda h: h[rare].sum() / h.sum()  # noqa: E731
    assert share(hl) < 0.85 * share(hp)
    assert lt.long_tail["train_tail_share"] == pytest.approx(share(hl), abs=1e-5)
    assert lt.long_tail["pool_tail_share"] == pytest.approx(share(hp), abs=1e-5)
    # val/test are the parent's, unchanged
    assert build_dataset("synthetic-lt", split="val", **LT_KW).files == \
        build_dataset("synthetic", split="val", **LT_KW).files
    # temperature -> large approaches a random subset: the seed matters, the tail is milder
    hot = [build_dataset("synthetic-lt", split="train", temperature=50.0, select_seed=s, **LT_KW) for s in (0, 1)]
    assert hot[0].files != hot[1].files
    assert np.mean([share(_hist(d)) for d in hot]) > share(hl)


def test_long_tail_selection_rules():
    from zoo.data.errors import DataError
    from zoo.data.synthetic import long_tail_selection

    rng = np.random.default_rng(0)
    hist = rng.integers(0, 1000, size=(20, 4))
    hist[:, 0] += 20000  # a head class
    a = long_tail_selection(hist, keep=0.5, temperature=0.0, seed=0)
    assert list(a) == sorted(a) and len(a) == 10
    assert np.array_equal(a, long_tail_selection(hist, keep=0.5, temperature=0.0, seed=7))  # no noise at T=0
    for bad in (dict(keep=0.0, temperature=1.0), dict(keep=1.5, temperature=1.0), dict(keep=0.5, temperature=-1)):
        with pytest.raises(DataError):
            long_tail_selection(hist, seed=0, **bad)


# --------------------------------------------------------------------------------------------
# issue #8 parts 1-2: checks not already in tests/test_losses.py
# --------------------------------------------------------------------------------------------

def test_effective_number_approaches_inverse_frequency_monotonically():
    counts = np.array([5e4, 2e3, 70.0, 9e3])
    target = cw.inverse_freq(counts)
    errors = [np.abs(cw.effective_number(counts, 1 - 10.0 ** -e) - target).max() for e in (2, 3, 4, 6, 9)]
    assert all(b < a for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-3
    assert errors[0] > 0.1  # and it is a real change, not the same weights throughout


def test_unweighted_focal_with_gamma_zero_is_plain_cross_entropy():
    from zoo.losses import build_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, 0, :3] = 255
    focal = build_loss("cb_focal", ignore_index=255, gamma=0.0)(logits, target)
    assert float(focal) == pytest.approx(float(F.cross_entropy(logits, target, ignore_index=255)), rel=1e-6)
    # and gamma > 0 only ever lowers each pixel's loss
    assert float(build_loss("cb_focal", ignore_index=255, gamma=2.0)(logits, target)) < float(focal)


def test_uniform_weights_change_nothing():
    from zoo.losses import build_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 5, generator=g)
    target = torch.randint(0, 4, (2, 5, 5), generator=g)
    ones = torch.ones(4)
    for name in ("cb_ce", "cb_focal", "lovasz"):
        a = build_loss(name, ignore_index=255)(logits, target)
        b = build_loss(name, ignore_index=255, weight=ones)(logits, target)
        assert float(a) == pytest.approx(float(b), rel=1e-6), name
    assert math.isclose(float(build_loss("cb_ce", ignore_index=255, weight=ones)(logits, target)),
                        float(F.cross_entropy(logits, target)), rel_tol=1e-6)


def test_run_minutes_ignore_time_the_run_stood_still(tmp_path):
    """A run paused (SIGSTOP) for 47 minutes between two epochs reports its training time, not the pause."""
    import json
    from types import SimpleNamespace

    from zoo.ablation import _active_seconds

    run = SimpleNamespace(run_dir=tmp_path)
    rec = {"train_seconds": 3060.0}
    assert _active_seconds(run, rec, 4) == 3060.0  # no history: the wall time is all there is
    (tmp_path / "history.json").write_text(json.dumps(
        [{"epoch": i + 1, "elapsed_s": t} for i, t in enumerate([60.0, 120.0, 3000.0, 3060.0])]))
    assert _active_seconds(run, rec, 4) == 240.0  # 4 epochs x the median epoch of 60 s
