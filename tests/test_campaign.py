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
        # finished: the weights that count and the record of the finished schedule, no final-epoch copy
        assert {p.name for p in run.kept.iterdir()} == {"best.pt", "best.json", "last.json"}
        assert json.loads((run.kept / "last.json").read_text())["epoch"] == 1
        assert run.state()["done"]
    # A second call trains nothing.
    logs.clear()
    train_campaign(runs, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1,
                   progress=False, log=logs.append)
    assert len(logs) == 2 and all("skipped" in line for line in logs)


def test_a_new_machine_continues_from_the_kept_copy(tiny_camvid, tmp_path):
    from zoo.train import TrainConfig, TrainHooks, train

    keep = tmp_path / "trained"
    two = {**SMALL, "epochs": 2}
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=keep, **two)[0]
    with pytest.raises(Stop):  # machine A: the session ends after epoch 1 of 2
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a",
                          threads=1, workers=0, progress=False, **two),
              TrainHooks(on_epoch_start=_stop_at(1)))
    export(run)
    # Machine B: empty cache; the run continues at epoch 2 from the kept portable copy.
    runs_b, logs = plan(["espnet"], "camvid", artifacts=tmp_path / "b", keep=keep, **two), []
    out = train_campaign(runs_b, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "b", threads=1,
                         progress=False, log=logs.append)
    assert any("continuing from the kept copy" in line for line in logs)
    assert out[0]["epoch"] == 2 and json.loads((keep / "espnet_p2q8/camvid/espnet/last.json").read_text())["epoch"] == 2
    history = json.loads(read_checkpoint(runs_b[0].cache / "last.pt")["history"])
    assert [h["epoch"] for h in history] == [1, 2]


class Stop(Exception):
    """The session ending, as seen by a training hook."""


def _stop_at(epoch_to_stop):
    def hook(model, epoch, epochs):
        if epoch == epoch_to_stop:
            raise Stop
    return hook


def test_kept_copies_during_training_and_on_an_exception(tiny_camvid, tmp_path, monkeypatch):
    import zoo.train as ztrain

    keep = tmp_path / "trained"
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=keep, **{**SMALL, "epochs": 3})[0]
    real_train = ztrain.train
    stop = _stop_at(2)

    def train_then_stop(cfg, hooks):  # the campaign's own hook runs first, then the session "ends"
        def both(model, epoch, epochs):
            hooks.on_epoch_start(model, epoch, epochs)
            if epoch == 1:
                assert read_checkpoint(run.kept / "last.pt")["epoch"] == 1  # the export_every=1 copy
            stop(model, epoch, epochs)
        return real_train(cfg, ztrain.TrainHooks(on_epoch_start=both))

    monkeypatch.setattr(ztrain, "train", train_then_stop)
    logs = []
    with pytest.raises(Stop):
        train_campaign([run], data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1,
                       export_every=1, progress=False, log=logs.append)
    assert read_checkpoint(run.kept / "last.pt")["epoch"] == 2  # exported on the way out
    assert any("epoch 2/3" in line and "h left for it" in line for line in logs)  # clock from epoch 1


def test_a_stale_cache_never_overwrites_a_kept_copy_that_is_further_along(tiny_camvid, tmp_path):
    keep = tmp_path / "trained"
    two = {**SMALL, "epochs": 2}
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=keep, **two)[0]
    train_campaign([run], data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1,
                   progress=False, log=lambda m: None)
    # Machine B has an older cache (epoch 1 of the same recipe) and pulls the finished kept copy.
    from zoo.train import TrainConfig, TrainHooks, train

    stop = _stop_at(1)
    with pytest.raises(Stop):
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "b",
                          threads=1, workers=0, progress=False, **two), TrainHooks(on_epoch_start=stop))
    stale = plan(["espnet"], "camvid", artifacts=tmp_path / "b", keep=keep, **two)[0]
    assert export(stale) == [] and json.loads((keep / "espnet_p2q8/camvid/espnet/last.json").read_text())["epoch"] == 2
    state = stale.state()
    assert state["done"] and state["kept_ahead"] and state["epoch"] == 2
    # An unfinished recipe (3 epochs, a new trial folder) continues from the kept copy and moves
    # the stale cache aside.
    keep3 = tmp_path / "trained3"
    three = {**SMALL, "epochs": 3}
    first = plan(["espnet"], "camvid", artifacts=tmp_path / "c", keep=keep3, **three)[0]
    with pytest.raises(Stop):
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "c",
                          threads=1, workers=0, progress=False, **three), TrainHooks(on_epoch_start=_stop_at(2)))
    export(first)  # kept: epoch 2 of 3
    older = plan(["espnet"], "camvid", artifacts=tmp_path / "d", keep=keep3, **three)[0]
    with pytest.raises(Stop):
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "d",
                          threads=1, workers=0, progress=False, **three), TrainHooks(on_epoch_start=stop))
    logs = []
    out = train_campaign([older], data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "d", threads=1,
                         progress=False, log=logs.append)
    assert any("continuing from the kept copy" in line for line in logs)
    history = json.loads(read_checkpoint(older.cache / "last.pt")["history"])
    assert out[0]["epoch"] == 3 and [h["epoch"] for h in history] == [1, 2, 3]
    assert len(list(older.cache.parent.glob("espnet.stale-*"))) == 1


def test_a_finished_run_that_was_never_kept_is_kept_on_the_next_call(tiny_camvid, tmp_path):
    from zoo.train import TrainConfig, train

    run = plan(["espnet"], "camvid", artifacts=tmp_path, keep=tmp_path / "trained", **SMALL)[0]
    train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path, threads=1,
                      workers=0, progress=False, **SMALL))  # as if the campaign died before its export
    assert not run.kept.exists()
    train_campaign([run], data="camvid", data_root=tiny_camvid, artifacts=tmp_path, threads=1, progress=False,
                   log=lambda m: None)
    assert (run.kept / "best.pt").is_file() and json.loads((run.kept / "last.json").read_text())["epoch"] == 1
    assert not (run.kept / "last.pt").exists()


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
    assert "--data camvid" in logs[0] and "--recipe espnet --epochs 1 --resume" in logs[0]
    assert read_checkpoint(longer[0].cache / "last.pt")["epoch"] == 1
    # nor does a shorter recipe make a run that stopped part-way through its own schedule "finished"
    shorter = plan(["espnet"], "camvid", artifacts=tmp_path, keep=keep, **{**SMALL, "epochs": 3})
    train_campaign(shorter, data="camvid", data_root=tiny_camvid, artifacts=tmp_path, threads=1, progress=False,
                   log=lambda m: None)  # skipped: mismatch (1 vs 3)


def test_export_and_plan_cli(tiny_camvid, tmp_path, capsys):
    runs = plan(["espnet"], "camvid", artifacts=tmp_path, keep=tmp_path / "kept", **SMALL)
    assert export(runs[0]) == []  # nothing started yet
    assert main(["--data", "camvid", "--models", "espnet", "--artifacts", str(tmp_path), "--keep",
                 str(tmp_path / "kept"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "espnet_p2q8" in out and "300" in out
    # a trial campaign must name its own folders
    assert main(["--models", "espnet", "--epochs", "1"]) == 2
    assert "--keep DIR and --artifacts DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--models", "nonexistent_net", "--plan"])
    assert exc.value.code != 0
    assert "unknown model 'nonexistent_net'" in capsys.readouterr().err


def test_every_recipe_is_usable_and_every_segmentation_network_has_one():
    from zoo.class_weights import parse_method
    from zoo.losses import build_loss
    from zoo.recipes import RECIPES, get_recipe
    from zoo.registry import get_entry, list_models

    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.epochs > 0 and recipe.notes, name
        build_loss(recipe.loss, ignore_index=255, **recipe.loss_kwargs)
        parse_method(recipe.class_weights)
    for name in list_models():
        entry = get_entry(name)
        if entry.task == "segmentation":
            get_recipe(entry.default_recipe)


def test_kept_weights_are_found_when_no_checkpoint_is_given(tmp_path, monkeypatch):
    """zoo.api.find_fp32_checkpoint (bench.run, quant.qat, zoo.load without --weights): the
    best-scoring of the cache's family-recipe run and the kept trained/ runs of registered recipes
    for this model and dataset; else the cache's quick run."""
    from zoo.api import find_fp32_checkpoint
    from zoo.checkpoints import checkpoint_dir

    def put(path, miou, **meta):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        path.with_suffix(".json").write_text(json.dumps({"metrics": {"miou": miou}, **meta}))
        return path

    art, kept = tmp_path / "art", tmp_path / "trained"
    monkeypatch.setenv("EDGEZOO_TRAINED", str(kept))
    assert find_fp32_checkpoint("espnet", "camvid", art) is None
    quick = put(checkpoint_dir("espnet_p2q8", "camvid", "quick", art) / "best.pt", 0.1)
    assert find_fp32_checkpoint("espnet", "camvid", art) == quick
    family_kept = put(kept / "espnet_p2q8/camvid/espnet/best.pt", 0.4, model="espnet_p2q8", dataset="camvid")
    assert find_fp32_checkpoint("espnet", "camvid", art) == family_kept
    better = put(kept / "espnet_p2q8/camvid/espnet_cw/best.pt", 0.5)
    assert find_fp32_checkpoint("espnet", "camvid", art) == better
    # not FP32 weights of this network and dataset: never picked, whatever they score
    put(kept / "espnet_p2q8/camvid/qat-espnet-0123456789ab/best.pt", 0.9)
    put(kept / "espnet_p2q8/camvid/ddrnet/best.pt", 0.9, dataset="cityscapes")
    put(kept / "espnet_p2q8/camvid/quick/best.pt", 0.9, qat={"scheme": "symmetric"})
    assert find_fp32_checkpoint("espnet", "camvid", art) == better
    # a cached run of the family recipe counts by its score too (a 2-epoch trial does not win)
    put(checkpoint_dir("espnet_p2q8", "camvid", "espnet", art) / "best.pt", 0.2)
    assert find_fp32_checkpoint("espnet", "camvid", art) == better
    cached = put(checkpoint_dir("espnet_p2q8", "camvid", "espnet", art) / "best.pt", 0.5)
    assert find_fp32_checkpoint("espnet", "camvid", art) == cached  # the cache first on a tie
    monkeypatch.setenv("EDGEZOO_TRAINED", "")  # disabled
    cached.unlink()
    assert find_fp32_checkpoint("espnet", "camvid", art) == quick


def test_zoo_list_names_the_kept_weights_and_their_progress(tmp_path, monkeypatch):
    from zoo.list import trained_summary

    folder = tmp_path / "espnet_p2q8" / "camvid" / "espnet_cw"
    folder.mkdir(parents=True)
    (folder / "best.json").write_text(json.dumps({"epoch": 30, "metrics": {"miou": 0.4567},
                                                  "recipe": {"epochs": 180}}))
    (folder / "last.json").write_text(json.dumps({"epoch": 42, "recipe": {"epochs": 180}}))
    monkeypatch.setenv("EDGEZOO_TRAINED", str(tmp_path))
    assert trained_summary("espnet_p2q8") == "camvid/espnet_cw: mIoU 45.67 (epoch 30 of 180; training at 42/180)"
    assert trained_summary("pidnet_s") == "-"
    monkeypatch.setenv("EDGEZOO_TRAINED", "")
    assert trained_summary("espnet_p2q8") == "-"


def test_export_drops_the_final_epoch_weights_of_a_finished_kept_run(tmp_path):
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=tmp_path / "trained", **SMALL)[0]
    run.kept.mkdir(parents=True)
    (run.kept / "last.pt").write_bytes(b"weights of the final epoch")
    epochs = run.recipe.epochs
    (run.kept / "last.json").write_text(json.dumps({"epoch": epochs, "recipe": {"epochs": epochs}, "file": "last.pt"}))
    assert export(run) == [run.kept / "last.json"] and not (run.kept / "last.pt").exists()
    kept = json.loads((run.kept / "last.json").read_text())
    assert kept["epoch"] == epochs and kept["file"] is None and "best.pt" in kept["weights_not_kept"]
    assert run.state()["done"]
    # an unfinished kept run keeps its resumable weights
    (run.kept / "last.pt").write_bytes(b"weights")
    (run.kept / "last.json").write_text(json.dumps({"epoch": 0, "recipe": {"epochs": epochs}}))
    assert export(run) == [] and (run.kept / "last.pt").is_file()


def test_large_kept_copies_go_in_parts_and_a_new_machine_continues_from_them(tiny_camvid, tmp_path, monkeypatch):
    import zoo.checkpoints as ck
    from zoo.api import find_fp32_checkpoint, load_fp32
    from zoo.train import TrainConfig, TrainHooks, train

    monkeypatch.setattr(ck, "KEPT_PART_BYTES", 400_000)  # ESPNet's ~1.5 MB weights: 4 parts
    monkeypatch.setenv(ck.ARTIFACTS_ENV, str(tmp_path / "joined-cache"))
    keep, two = tmp_path / "trained", {**SMALL, "epochs": 2}
    run = plan(["espnet"], "camvid", artifacts=tmp_path / "a", keep=keep, **two)[0]
    with pytest.raises(Stop):
        train(TrainConfig(model="espnet", data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a",
                          threads=1, workers=0, progress=False, **two), TrainHooks(on_epoch_start=_stop_at(1)))
    export(run)
    assert len(ck.kept_parts(run.kept / "last.pt")) == 4 and not (run.kept / "last.pt").exists()
    assert len(ck.kept_parts(run.kept / "best.pt")) == 4 and not (run.kept / "best.pt").exists()
    assert not (run.cache / "portable").exists()
    runs_b, logs = plan(["espnet"], "camvid", artifacts=tmp_path / "b", keep=keep, **two), []
    out = train_campaign(runs_b, data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "b", threads=1,
                         progress=False, log=logs.append)
    assert any("continuing from the kept copy" in line for line in logs) and out[0]["epoch"] == 2
    history = json.loads(read_checkpoint(runs_b[0].cache / "last.pt")["history"])
    assert [h["epoch"] for h in history] == [1, 2]
    # finished: best.pt in parts, no last.pt parts left; found and loaded without --weights
    assert ck.kept_parts(run.kept / "best.pt") and not ck.weights_exist(run.kept / "last.pt")
    monkeypatch.setenv("EDGEZOO_TRAINED", str(keep))
    found = find_fp32_checkpoint("espnet", "camvid", tmp_path / "empty")
    assert found == run.kept / "best.pt"
    loaded = load_fp32("espnet", dataset="camvid", weights=found, train_if_missing=False)
    from zoo.io import sha256_file

    assert loaded.path == found and loaded.sha256 == sha256_file(ck.resolve_weights(found))


def test_bench_measures_each_finished_network_under_the_system_allocator(tiny_camvid, tmp_path, monkeypatch):
    import zoo.campaign as campaign

    calls = []
    monkeypatch.setattr(campaign.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 3)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /opt/own.so")
    monkeypatch.setenv("EDGEZOO_ALLOCATOR_TRIED", "1")
    keep, logs = tmp_path / "trained", []
    runs = plan(["fastdepthseg"], "camvid", artifacts=tmp_path / "a", keep=keep, **SMALL)
    kwargs = dict(data="camvid", data_root=tiny_camvid, artifacts=tmp_path / "a", threads=1, progress=False,
                  bench_out=tmp_path / "results", log=logs.append)
    first = train_campaign(runs, **kwargs)
    second = train_campaign(runs, **kwargs)  # finished: skipped, measured again (bench skips stored cells)
    assert [s["bench_rc"] for s in first + second] == [3, 3]
    assert any("exited with status 3" in m for m in logs)  # logged, and the campaign went on
    cmd, env = calls[0]
    assert cmd[1:3] == ["-m", "bench.run"]
    assert cmd[cmd.index("--weights") + 1] == str(runs[0].kept / "best.pt")
    assert (runs[0].kept / "best.pt").is_file()
    assert cmd[cmd.index("--quant") + 1:cmd.index("--backend")] == ["fp32", "static", "dynamic", "qat"]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "results") and "--threads" in cmd
    assert "--no-progress" in cmd  # the campaign ran without bars: so does its sweep
    assert env["LD_PRELOAD"] == "/opt/own.so" and "EDGEZOO_ALLOCATOR_TRIED" not in env
