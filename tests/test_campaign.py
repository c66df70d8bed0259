"""zoo.campaign: networks trained in turn, kept copies, finished runs skipped, new-machine resume,
no silent warm restarts."""
from __future__ import annotations

import json

import pytest

from zoo.campaign import DEFAULT_MODELS, export, main, plan, train_campaign
from zoo.checkpoints import read_checkpoint
from zoo.registry import get_entry

SMALL = dict(epochs=1, batch_size=2, crop=(64, 96), eval_every=1)


def test_default_models_are_registered_segmentation_networks():
    runs = plan(list(DEFAULT_MODELS), "camvid")
    assert all(get_entry(r.model).task == "segmentation" for r in runs)
    assert "ddrnet23_slim" not in {r.model for r in runs}  # trained before the campaign existed
    espnet = next(r for r in runs if r.model == "espnet_p2q8")
    assert espnet.recipe.name == "espnet_cw" and espnet.recipe.class_weights == "enet:1.10"
    assert espnet.kept.name == "espnet_cw"


def test_plan_refuses_a_detector(tmp_path):
    with pytest.raises(ValueError, match="segmentation"):
        plan(["yolov5n"], "camvid", artifacts=tmp_path)


def test_campaign_trains_in_turn_keeps_copies_and_skips_finished_runs(tiny_camvid, tmp_path):
    keep, logs = tmp_path / "trained", []
    runs = plan(["espnet", "fastdepthseg"], "camvid", artifacts=tmp_path / "a", keep=keep, **SMALL)
    train_campaign(runs, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1,
                   progress=False, log=logs.append)
    for run in runs:
        assert {p.name for p in run.kept.iterdir()} >= {"best.pt", "best.json", "last.pt", "last.json"}
        kept_last = read_checkpoint(run.kept / "last.pt")
        assert "optimizer" not in kept_last and kept_last["epoch"] == 1
        assert run.state()["done"]
    # A second call trains nothing.
    logs.clear()
    train_campaign(runs, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1,
                   progress=False, log=logs.append)
    assert all("skipped" in line for line in logs)


def test_a_new_machine_continues_from_the_kept_copy(tiny_camvid, tmp_path):
    from zoo.train import TrainConfig, TrainHooks, train

    class Stop(Exception):
        pass

    def stop_after_first_epoch(model, epoch, epochs):
        if epoch == 1:
            raise Stop

    keep = tmp_path / "trained"
    two = {**SMALL, "epochs": 2}
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=keep, **two)[0]
    with pytest.raises(Stop):  # machine A: the session ends after epoch 1 of 2
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a",
                          threads=1, workers=0, progress=False, **two),
              TrainHooks(on_epoch_start=stop_after_first_epoch))
    export(run)
    # Machine B: empty cache; the run continues at epoch 2 from the kept portable copy.
    runs_b, logs = plan(["espnet"], "camvid", artifacts=tmp_path / "b", keep=keep, **two), []
    out = train_campaign(runs_b, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "b", threads=1,
                         progress=False, log=logs.append)
    assert any("continuing from the kept copy" in line for line in logs)
    assert out[0]["epoch"] == 2 and read_checkpoint(keep / "espnet_p2q8/camvid/espnet/last.pt")["epoch"] == 2
    history = json.loads(read_checkpoint(runs_b[0].cache / "last.pt")["history"])
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_run_started_with_another_schedule_is_not_warm_restarted(tiny_camvid, tmp_path):
    keep, logs = tmp_path / "trained", []
    runs = plan(["espnet"], "camvid", artifacts=tmp_path, keep=keep, **SMALL)
    train_campaign(runs, data="camvid", data_root=tiny_camvid, artifacts=tmp_path, threads=1, progress=False,
                   log=logs.append)
    longer = plan(["espnet"], "camvid", artifacts=tmp_path, keep=keep, **{**SMALL, "epochs": 3})
    assert longer[0].state()["schedule_mismatch"] == 1
    logs.clear()
    out = train_campaign(longer, data="camvid", data_root=tiny_camvid, artifacts=tmp_path, threads=1,
                         progress=False, log=logs.append)
    assert out[0]["skipped"] and "1-epoch schedule" in logs[0]
    assert read_checkpoint(longer[0].cache / "last.pt")["epoch"] == 1


def test_export_and_plan_cli(tiny_camvid, tmp_path, capsys):
    runs = plan(["espnet"], "camvid", artifacts=tmp_path, keep=tmp_path / "kept", **SMALL)
    assert export(runs[0]) == []  # nothing started yet
    assert main(["--data", "camvid", "--models", "espnet", "--artifacts", str(tmp_path), "--keep",
                 str(tmp_path / "kept"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "espnet_p2q8" in out and "300" in out
    with pytest.raises(SystemExit) as exc:
        main(["--models", "nonexistent_net", "--plan"])
    assert exc.value.code != 0
    assert "unknown model 'nonexistent_net'" in capsys.readouterr().err


def test_every_segmentation_network_has_a_recipe_its_loss_accepts():
    from zoo.losses import build_loss
    from zoo.recipes import get_recipe
    from zoo.registry import get_entry, list_models

    for name in list_models():
        entry = get_entry(name)
        if entry.task != "segmentation":
            continue
        recipe = get_recipe(entry.default_recipe)
        assert recipe.epochs > 0 and recipe.notes, entry.name
        build_loss(recipe.loss, ignore_index=255, **recipe.loss_kwargs)
