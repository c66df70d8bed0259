"""Training: a short real run, resume after SIGKILL mid-epoch, and two-process DDP on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from zoo.checkpoints import checkpoint_dir, read_checkpoint
from zoo.train import EpochBatches, TrainConfig, train

TINY = ["--data", "camvid", "--epochs", "2", "--batch-size", "2", "--crop", "64", "96", "--eval-every", "1",
        "--workers", "0", "--no-progress", "--threads", "1"]


def _run(args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_epoch_batches_resume_and_shard():
    full = EpochBatches(10, 2, seed=0, epoch=3)
    assert len(full) == 5 and sorted(i for b in full for i in b) == list(range(10))
    assert list(EpochBatches(10, 2, seed=0, epoch=3, start=2)) == list(full)[2:]
    r0, r1 = EpochBatches(10, 2, seed=0, epoch=3, rank=0, world=2), EpochBatches(10, 2, seed=0, epoch=3, rank=1, world=2)
    assert not {i for b in r0 for i in b} & {i for b in r1 for i in b}


def test_train_writes_best_and_last_with_metadata(tiny_camvid, tmp_path):
    res = train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, epochs=2, batch_size=2,
                            crop=(64, 96), eval_every=1, workers=0, artifacts=tmp_path, progress=False, threads=1))
    assert res["best"].is_file() and res["last"].is_file()
    assert len(res["history"]) == 2 and all("miou" in h for h in res["history"])
    meta = read_checkpoint(res["best"])["meta"]
    assert meta["model"] == "espnet_p2q8" and meta["num_classes"] == 11 and meta["dataset"] == "camvid"
    assert meta["recipe"]["epochs"] == 2 and 0 <= meta["metrics"]["miou"] <= 1
    sidecar = json.loads(res["best"].with_suffix(".json").read_text())
    assert len(sidecar["sha256"]) == 64


def test_recipe_class_weights_apply_to_the_recipe_loss_only(tiny_camvid, tmp_path):
    common = dict(model="espnet", data="camvid", data_root=tiny_camvid, recipe="espnet_cw", epochs=1,
                  batch_size=2, crop=(64, 96), eval_every=1, workers=0, progress=False, threads=1)
    own = read_checkpoint(train(TrainConfig(**common, artifacts=tmp_path / "a"))["last"])["meta"]
    assert own["class_weighting"]["method"] == "enet:1.10" and len(own["class_weighting"]["weights"]) == 11
    other = read_checkpoint(train(TrainConfig(**common, loss="lovasz", artifacts=tmp_path / "b"))["last"])["meta"]
    assert other["class_weighting"] == {"method": "none"}


def test_channels_last_step_matches_nchw():
    # The NHWC speed-up must compute the same forward and gradients (up to float rounding).
    # Weights after Adam steps are no check: Adam turns noise-level gradients (e.g. of a conv
    # bias that a BN cancels) into full-size steps of either sign.
    import copy

    import torch

    from zoo.registry import get_entry

    torch.manual_seed(0)
    nchw = get_entry("ddrnet23_slim").build(num_classes=11).train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 11, (2, 64, 96))

    def loss_of(net, images):
        return sum(torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(o, size=y.shape[-2:], mode="bilinear"), y) for o in net(images))

    loss_a, loss_b = loss_of(nchw, x), loss_of(nhwc, x.contiguous(memory_format=torch.channels_last))
    assert abs(float(loss_a) - float(loss_b)) < 1e-4 * float(loss_a)
    loss_a.backward()
    loss_b.backward()
    scale = max(float(p.grad.abs().max()) for p in nchw.parameters())
    worst = max(float((p.grad - q.grad).abs().max()) for p, q in zip(nchw.parameters(), nhwc.parameters()))
    assert worst < 1e-2 * scale, (worst, scale)


def test_channels_last_training_saves_nchw_checkpoints(tiny_camvid, tmp_path):
    res = train(TrainConfig(model="ddrnet23_slim", data="camvid", data_root=tiny_camvid, epochs=1, batch_size=2,
                            crop=(64, 96), eval_every=1, workers=0, progress=False, threads=1, artifacts=tmp_path,
                            channels_last=True))
    for path in (res["best"], res["last"]):
        state = read_checkpoint(path)
        assert state["meta"]["channels_last"] is True
        assert all(t.is_contiguous() for t in state["model"].values())


def test_resume_after_sigkill_mid_epoch(tiny_camvid, tmp_path):
    # 8 images, batch 2 -> 4 steps per epoch; die after step 6 (mid epoch 2), saving every step.
    args = ["-m", "zoo.train", "--model", "espnet", "--data-root", str(tiny_camvid), "--artifacts", str(tmp_path),
            "--save-every", "0", *TINY]
    killed = _run(args, {"EDGEZOO_FAULT_KILL_AT_STEP": "6"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = checkpoint_dir("espnet_p2q8", "camvid", "espnet", tmp_path) / "last.pt"
    state = read_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    resumed = _run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "epoch 2, step 2/4" in resumed.stderr
    history = json.loads((last.parent / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_portable_copy_resumes_without_optimizer_state(tiny_camvid, tmp_path):
    """A portable last.pt (no optimizer moments, small enough for git) resumes on a 'new machine'."""
    args = ["-m", "zoo.train", "--model", "espnet", "--data-root", str(tiny_camvid), "--save-every", "0", *TINY]
    killed = _run([*args, "--artifacts", str(tmp_path / "old")], {"EDGEZOO_FAULT_KILL_AT_STEP": "6"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    full = checkpoint_dir("espnet_p2q8", "camvid", "espnet", tmp_path / "old") / "last.pt"
    moved = checkpoint_dir("espnet_p2q8", "camvid", "espnet", tmp_path / "new") / "last.pt"
    res = _run(["-m", "zoo.checkpoints", "portable", str(full), str(moved)])
    assert res.returncode == 0, res.stderr[-2000:]
    portable = read_checkpoint(moved)
    assert "optimizer" not in portable and (portable["epoch"], portable["step_in_epoch"]) == (1, 2)
    assert portable["meta"]["portable_from"]["dropped"] == ["optimizer"]
    assert moved.stat().st_size < full.stat().st_size
    resumed = _run([*args, "--artifacts", str(tmp_path / "new"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no optimizer state" in resumed.stderr and "epoch 2, step 2/4" in resumed.stderr
    res = _run(["-m", "zoo.checkpoints", "portable", str(tmp_path / "nope.pt"), str(tmp_path / "x.pt")])
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_torchrun_two_cpu_processes(tiny_camvid, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29533", "-m", "zoo.train", "--model", "espnet",
         "--data-root", str(tiny_camvid), "--artifacts", str(tmp_path), *TINY],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = checkpoint_dir("espnet_p2q8", "camvid", "espnet", tmp_path) / "best.pt"
    assert read_checkpoint(best)["meta"]["world_size"] == 2


def test_bad_inputs_give_one_line_errors(tmp_path):
    res = _run(["-m", "zoo.train", "--model", "nosuchnet", "--no-progress"])
    assert res.returncode == 2 and "unknown model 'nosuchnet'" in res.stderr and "Traceback" not in res.stderr
    res = _run(["-m", "zoo.train", "--model", "espnet", "--data", "camvid", "--data-root", str(tmp_path / "nope")])
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nope" in res.stderr


def test_class_balanced_loss_records_its_weights(tiny_camvid, tmp_path):
    res = train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, epochs=1, batch_size=2,
                            crop=(64, 96), eval_every=1, workers=0, artifacts=tmp_path, progress=False, threads=1,
                            loss="cb_ce", seed=1))
    meta = read_checkpoint(res["best"])["meta"]
    weighting = meta["class_weighting"]
    assert weighting["method"] == "effective" and len(weighting["weights"]) == 11
    assert sum(weighting["weights"]) == pytest.approx(11, rel=1e-4)
    assert meta["recipe"]["loss"] == "cb_ce"


def test_active_seconds_leaves_out_paused_time():
    from zoo.train import active_seconds

    # epochs of 60 s, one validation epoch of 80 s, one epoch that stood paused for an hour
    elapsed = [60, 120, 200, 260, 260 + 3660, 3980]
    assert active_seconds(elapsed) == 60 + 60 + 80 + 60 + 180 + 60
    assert active_seconds([]) is None


def test_amp_auto_follows_the_hardware():
    import torch

    from zoo.hardware import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu, flags={"avx2", "avx512_bf16"}) == "bf16"
    assert resolve_amp("auto", cpu, flags={"amx_bf16"}) == "bf16"
    assert resolve_amp("auto", cpu, flags={"asimd", "bf16"}) == "bf16"      # ARM's BF16 extension
    assert resolve_amp("auto", cpu, flags={"avx2", "avx512f", "avx512_vnni"}) == "none"  # emulated bf16 is slower
    assert resolve_amp("bf16", cpu, flags=set()) == "bf16" and resolve_amp("none", cpu, flags={"amx_bf16"}) == "none"
    with pytest.raises(ValueError, match="valid: none, bf16, auto"):
        resolve_amp("fp16", cpu)


def test_resume_under_another_precision_records_it_per_epoch(tiny_camvid, tmp_path, capsys):
    """A run that moves to a machine with bf16 (or away from one) continues, says so, and every
    epoch's history entry names the precision that trained it."""
    common = dict(model="espnet", data="camvid", data_root=tiny_camvid, batch_size=2, crop=(64, 96), eval_every=1,
                  workers=0, artifacts=tmp_path, progress=False, threads=1)
    train(TrainConfig(**common, epochs=1, amp="none"))  # a session that ended after epoch 1 of 2
    res = train(TrainConfig(**common, epochs=2, amp="bf16", resume=True))
    assert [h["amp"] for h in res["history"]] == ["none", "bf16"]
    assert "epochs up to 1 trained with amp none; continuing with amp bf16" in capsys.readouterr().err
    assert read_checkpoint(res["last"])["meta"]["amp"] == "bf16"


def test_find_tcmalloc(tmp_path):
    from zoo.hardware import find_tcmalloc

    assert find_tcmalloc((str(tmp_path),)) is None
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_tcmalloc((str(tmp_path / "nope"), str(tmp_path))) == str(tmp_path / "libtcmalloc_minimal.so.4")


def test_training_commands_restart_under_tcmalloc(tmp_path):
    """The training commands re-exec themselves with TCMalloc preloaded (same PID) unless told not to."""
    from zoo.hardware import find_tcmalloc

    script = tmp_path / "probe.py"
    script.write_text("import os\nprint(os.getpid())\nfrom zoo.hardware import allocator_in_use, reexec_with_tcmalloc\n"
                      "reexec_with_tcmalloc()\nprint(allocator_in_use())\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "EDGEZOO_ALLOCATOR_TRIED")}

    def probe(**env):
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO,
                              env={**clean, "PYTHONPATH": str(REPO), **env})

    res = probe(EDGEZOO_ALLOCATOR="system")
    assert res.returncode == 0 and res.stdout.split()[-1] == "system", res.stderr
    bad = probe(EDGEZOO_ALLOCATOR="mimalloc")
    assert bad.returncode != 0 and "EDGEZOO_ALLOCATOR='mimalloc' is not valid" in bad.stderr
    if find_tcmalloc() is None:
        pytest.skip("TCMalloc is not installed (scripts/install-system-packages installs libtcmalloc-minimal4)")
    res = probe()
    lines = res.stdout.split()
    assert res.returncode == 0 and lines[-1] == "tcmalloc", res.stderr
    assert len(lines) == 3 and lines[0] == lines[1], "the restart must keep the PID (exec, not a child)"


def test_validations_since_best_counts_ties_for_the_earlier_one():
    from zoo.train import early_stop_reached, validations_since_best

    history = [{"epoch": 0, "miou": 0.5}, {"epoch": 1}, {"epoch": 2, "miou": 0.5}, {"epoch": 3, "miou": 0.4}]
    assert validations_since_best(history) == 2 and validations_since_best([]) == 0
    assert early_stop_reached(history, 3) is None and early_stop_reached(history, None) is None
    assert early_stop_reached(history, 2) == {"after_epoch": 3, "patience": 2, "best_epoch": 0, "miou": 0.5}


def test_patience_stops_early_and_a_resumed_run_stays_stopped(tiny_camvid, tmp_path, monkeypatch):
    import types

    import zoo.train as train_mod

    scores = iter([0.5, 0.4, 0.3, 0.9])  # epochs 1-4: no new best after epoch 1

    def fake_evaluate(*args, **kwargs):
        miou = next(scores)
        return types.SimpleNamespace(miou=miou, pixel_accuracy=miou, as_dict=lambda: {"miou": miou})

    monkeypatch.setattr(train_mod, "evaluate_model", fake_evaluate)
    cfg = TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, epochs=4, batch_size=2, crop=(64, 96),
                      eval_every=1, patience=2, workers=0, artifacts=tmp_path, progress=False, threads=1)
    res = train(cfg)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    last = json.loads(res["last"].with_suffix(".json").read_text())
    assert last["epoch"] == 3 and last["early_stop"] == {"after_epoch": 3, "patience": 2, "best_epoch": 1,
                                                          "miou": 0.5}
    assert read_checkpoint(res["best"])["meta"]["epoch"] == 1
    # Resuming finishes at once: no epoch trains, nothing is validated (the iterator would give 0.9).
    again = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3] and next(scores) == 0.9


def test_negative_patience_is_refused_in_one_line():
    res = _run(["-m", "zoo.train", "--model", "espnet", "--patience", "-1"])
    assert res.returncode == 2 and "--patience takes a count" in res.stderr and "Traceback" not in res.stderr
