"""Instance segmentation from semantic labels (issue #10): pseudo-labels, copy-paste, grouping,
baselines, PQ, the network, a smoke training and the evaluation CLI, on hand-made arrays."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo import registry
from zoo.instances.baselines import cc_instances, watershed_instances
from zoo.instances.metrics import MaskAP, PQAccumulator, pq_things, touching_instances
from zoo.instances.net import split_outputs
from zoo.instances.postprocess import GroupConfig, find_centres, group_pixels, panoptic_instances
from zoo.instances.pseudo import (CleanFilter, InstanceBank, PasteConfig, Patch, dt_peaks, make_targets,
                                  paste_touching, pseudo_instances, solidity, touching_offset)

CAR = 8
YY, XX = np.mgrid[0:60, 0:80]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: one intra-op thread is faster, and on a loaded 2-core machine two threads
    # spin-wait on each other (measured: 10 s instead of 0.1 s for the first forward/backward).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _disk(cy, cx, r):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def _sem(*masks, cls=CAR):
    sem = np.zeros(YY.shape, np.uint8)
    for m in masks:
        sem[m] = cls
    return sem


# --- pseudo-labels -----------------------------------------------------------------------------

def test_two_blobs_give_two_ids_centres_are_means_and_offsets_point_to_them():
    a, b = _disk(20, 20, 8), np.zeros_like(YY, bool)
    b[30:50, 50:60] = True
    inst = pseudo_instances(_sem(a, b), [CAR])
    assert inst.count == 2 and list(inst.classes[1:]) == [CAR, CAR]
    assert inst.clean[1:].all(), inst.reasons
    assert {len(np.unique(inst.ids[m])) for m in (a, b)} == {1}
    t = make_targets(inst.ids, inst.clean, sigma=3.0)
    for m in (a, b):
        cy, cx = YY[m].mean(), XX[m].mean()
        np.testing.assert_allclose(YY[m] + t.offset[0][m], cy, atol=1e-4)
        np.testing.assert_allclose(XX[m] + t.offset[1][m], cx, atol=1e-4)
        peak = np.unravel_index(np.argmax(np.where(m, t.heat, 0)), m.shape)
        assert abs(peak[0] - cy) <= 0.5 and abs(peak[1] - cx) <= 0.5
    assert t.heat.max() <= 1.0 and (t.offset_weight == (inst.ids > 0)).all()
    assert (t.offset[:, inst.ids == 0] == 0).all()


def test_clean_filter_rejects_non_convex_and_two_peaked_blobs():
    filt = CleanFilter(min_area=10)
    c_shape = np.zeros(YY.shape, bool)
    c_shape[10:50, 10:50] = True
    c_shape[20:40, 20:50] = False                      # a "C": solidity 0.625
    assert solidity(c_shape) < 0.7 and filt.check(c_shape) == "solidity"
    dumbbell = _disk(30, 25, 10) | _disk(30, 41, 10)   # two overlapping disks: convex-ish, two DT peaks
    assert solidity(dumbbell) > 0.9
    assert len(dt_peaks(dumbbell)) == 2 and filt.check(dumbbell) == "peaks"
    ellipse = ((YY - 30) / 8.0) ** 2 + ((XX - 40) / 25.0) ** 2 <= 1   # digitised ridge: still one peak
    bar = np.zeros(YY.shape, bool)
    bar[10:14, 5:70] = True                                            # DT plateau: one peak
    assert filt.check(ellipse) == "clean" and filt.check(bar) == "clean"
    tiny = np.zeros(YY.shape, bool)
    tiny[5:7, 5:7] = True
    assert filt.check(tiny) == "small"
    # unclean components get no centre / offset supervision
    inst = pseudo_instances(_sem(c_shape), [CAR], filt)
    t = make_targets(inst.ids, inst.clean)
    assert not inst.clean[1] and t.heat.max() == 0 and (t.heat_weight[c_shape] == 0).all()
    assert (t.heat_weight[~c_shape] == 1).all() and t.offset_weight.sum() == 0


def test_touching_offset_places_patch_beside_without_overlap():
    anchor = np.zeros((40, 60), bool)
    anchor[10:30, 20:35] = True
    patch = np.ones((12, 8), bool)
    for side in (-1, 1):
        x = touching_offset(anchor, patch, 15, side)
        placed = np.zeros_like(anchor)
        placed[15:27, x:x + 8] = True
        assert not (placed & anchor).any()
        assert touching_instances(anchor.astype(np.int32) + 2 * placed, np.array([-1, CAR, CAR]), gap=0)[1:].all()


def test_copy_paste_builds_touching_clusters_with_exact_ids():
    rng = np.random.default_rng(0)
    sem = np.zeros((60, 80), np.uint8)
    sem[30:50, 10:25] = CAR                          # one clean anchor
    image = np.zeros((60, 80, 3), np.uint8)
    image[sem == CAR] = 200
    inst = pseudo_instances(sem, [CAR])
    assert inst.clean[1]
    bank = InstanceBank(min_area=4)
    patch_mask = np.ones((10, 6), bool)
    bank.by_class[CAR] = [Patch(image=np.full((10, 6, 3), 77, np.uint8), mask=patch_mask, cls=CAR)]
    cfg = PasteConfig(prob=1.0, max_clusters=1, max_neighbours=3, max_overlap=0.0)
    img2, sem2, out = paste_touching(image, sem, inst, bank, rng, cfg)
    pasted = [k for k in range(2, out.count + 1) if (out.ids == k).any()]
    assert pasted and all(out.clean[k] and out.classes[k] == CAR for k in pasted)
    # ids are exact: every car pixel has exactly one id, pasted pixels carry the pasted colour
    assert ((out.ids > 0) == (sem2 == CAR)).all()
    for k in pasted:
        assert (img2[out.ids == k] == 77).all()
    assert (out.ids == 1).sum() == (sem == CAR).sum()  # no overlap: the anchor kept every pixel
    # the anchor and the pasted instances form one touching cluster that CC cannot split
    assert touching_instances(out.ids, out.classes, gap=0)[[1, *pasted]].all()
    cc_ids, _ = cc_instances(sem2, [CAR])
    assert len(np.unique(cc_ids[out.ids > 0])) < 1 + len(pasted)
    # original inputs untouched
    assert (sem == CAR).sum() == 300 and inst.count == 1


# --- metrics -----------------------------------------------------------------------------------

def _two_instances():
    gt = np.zeros((20, 40), np.int32)
    gt[2:12, 2:12] = 1
    gt[2:12, 20:30] = 2
    return gt, np.array([-1, CAR, CAR])


def test_pq_hand_computed_cases():
    gt, cls = _two_instances()
    r = pq_things(gt, cls, gt, cls, [CAR])
    assert (r.pq, r.sq, r.rq) == (1.0, 1.0, 1.0)
    # one false positive: a prediction where there is nothing -> RQ = 2 / (2 + 0.5)
    pred = gt.copy()
    pred[14:18, 2:6] = 3
    r = pq_things(gt, cls, pred, np.array([-1, CAR, CAR, CAR]), [CAR])
    assert r.counts == {"tp": 2, "fp": 1, "fn": 0} and r.pq == pytest.approx(2 / 2.5)
    # one false negative -> RQ = 1 / (1 + 0.5); the TP's IoU 80/100 -> PQ = 0.8 * 2/3
    pred = np.zeros_like(gt)
    pred[2:10, 2:12] = 1
    r = pq_things(gt, cls, pred, np.array([-1, CAR]), [CAR])
    assert r.counts == {"tp": 1, "fp": 0, "fn": 1}
    assert r.sq == pytest.approx(0.8) and r.rq == pytest.approx(2 / 3) and r.pq == pytest.approx(0.8 * 2 / 3)
    # merging two objects: IoU 100/200 = 0.5 is not a match -> 1 FP, 2 FN, PQ 0
    merged = np.zeros_like(gt)
    merged[2:12, 2:12] = merged[2:12, 20:30] = 1
    r = pq_things(gt, cls, merged, np.array([-1, CAR]), [CAR])
    assert r.counts == {"tp": 0, "fp": 1, "fn": 2} and r.pq == 0.0
    # a wrong class never matches
    r = pq_things(gt, cls, gt, np.array([-1, CAR, 9]), [CAR, 9])
    assert r.per_class[str(CAR)]["tp"] == 1 and r.per_class["9"]["fp"] == 1


def test_pq_void_and_touching_subset():
    gt, cls = _two_instances()
    void = np.zeros(gt.shape, bool)
    void[14:18, :] = True
    pred = gt.copy()
    pred[14:18, 2:6] = 3                       # lies on void: not a false positive
    pred[12, 2:12] = 1                         # spills onto unlabelled background: IoU 100/110
    r = pq_things(gt, cls, pred, np.array([-1, CAR, CAR, CAR]), [CAR], void=void)
    assert r.counts == {"tp": 2, "fp": 0, "fn": 0} and r.sq == pytest.approx((100 / 110 + 1) / 2)
    # restricted to instance 2: instance 1 is ignored; a far-away prediction is no FP
    counted = np.array([False, False, True])
    pred = gt.copy()
    pred[16:19, 35:39] = 3
    r = pq_things(gt, cls, np.where(gt == 1, 0, pred), np.array([-1, CAR, CAR, CAR]), [CAR], counted=counted)
    assert r.counts == {"tp": 1, "fp": 0, "fn": 0}


def test_touching_instances_and_mask_ap():
    ids = np.zeros((10, 20), np.int32)
    ids[1:5, 1:5] = 1
    ids[1:5, 6:9] = 2                          # one-pixel gap to 1 (a void outline)
    ids[7:9, 15:18] = 3
    cls = np.array([-1, CAR, CAR, CAR])
    assert list(touching_instances(ids, cls, gap=1)) == [False, True, True, False]
    assert not touching_instances(ids, cls, gap=0).any()
    ap = MaskAP([CAR])
    ap.add(ids, cls, ids, cls, np.array([0, 0.9, 0.8, 0.7]))
    assert ap.result()["ap"] == pytest.approx(1.0)


# --- grouping and baselines --------------------------------------------------------------------

def test_centre_nms_and_grouping_follow_the_offsets():
    heat = np.zeros((30, 40), np.float32)
    for cy, cx, v in ((10, 10, 0.9), (10, 30, 0.6), (11, 11, 0.5)):   # (11, 11) is suppressed by NMS
        heat = np.maximum(heat, v * np.exp(-((np.mgrid[0:30, 0:40][0] - cy) ** 2 + (np.mgrid[0:30, 0:40][1] - cx) ** 2) / 8))
    centres, scores = find_centres(heat, threshold=0.1, nms_kernel=5)
    assert centres.tolist() == [[10, 10], [10, 30]] and scores[0] > scores[1]
    thing = np.zeros((30, 40), bool)
    thing[5:15, 5:35] = True
    yy, xx = np.mgrid[0:30, 0:40]
    # pixels left of column 25 vote for (10, 10), the others for (10, 30): not the spatially
    # nearest split (column 20), so grouping must use the offsets
    ty, tx = 10.0, np.where(xx < 25, 10.0, 30.0)
    offset = np.stack([ty - yy, tx - xx]).astype(np.float32)
    labels = group_pixels(thing, offset, centres)
    assert (labels[thing & (xx < 25)] == 1).all() and (labels[thing & (xx >= 25)] == 2).all()
    assert (labels[~thing] == 0).all()
    sem = np.where(thing, CAR, 0).astype(np.uint8)
    image_wide = dict(threshold=0.1, nms_kernel=5, split_components=False, min_votes=0)  # Panoptic-DeepLab's
    ids, cls, score = panoptic_instances(sem, heat, offset, [CAR], GroupConfig(**image_wide))
    assert ids.max() == 2 and list(cls) == [-1, CAR, CAR]
    assert len(np.unique(ids[thing & (xx < 25)])) == 1 and score[1:].min() > 0.5
    # no centre at all: every component stays whole (connected-component fallback)
    ids, cls, _ = panoptic_instances(sem, np.zeros_like(heat), offset, [CAR])
    assert ids.max() == 1 and (ids[thing] == 1).all()
    # a small object whose centre was missed: its votes land far from both centres, so it stays
    # its own instance instead of being glued to the nearest centre (vote_radius 0, as Panoptic-DeepLab)
    blob = np.zeros_like(thing)
    blob[25:29, 0:4] = True
    sem2 = np.where(thing | blob, CAR, 0).astype(np.uint8)
    off2 = offset.copy()
    off2[0][blob], off2[1][blob] = 27.0 - yy[blob], 2.0 - xx[blob]     # votes 19 px from any centre
    ids, cls, _ = panoptic_instances(sem2, heat, off2, [CAR], GroupConfig(**image_wide))
    assert ids.max() == 3 and len(np.unique(ids[blob])) == 1 and ids[blob][0] not in ids[thing]
    ids, _, _ = panoptic_instances(sem2, heat, off2, [CAR], GroupConfig(**{**image_wide, "vote_radius": 0}))
    assert ids.max() == 2 and (ids[blob] == ids[10, 10]).all()
    # split_components: grouping may only split connected components
    ids, _, _ = panoptic_instances(sem2, heat, off2, [CAR], GroupConfig(nms_kernel=5, vote_radius=0,
                                                                        split_components=True, min_votes=0))
    assert ids.max() == 3 and ids[blob][0] not in ids[thing]


def test_min_votes_splits_a_component_only_between_centres_with_enough_votes():
    yy, xx = np.mgrid[0:30, 0:40]
    thing = np.zeros((30, 40), bool)
    thing[5:15, 5:35] = True                  # one component, 300 px
    sem = np.where(thing, CAR, 0).astype(np.uint8)
    heat = np.zeros((30, 40), np.float32)
    heat[10, 10], heat[10, 30] = 0.9, 0.8
    # the left 200 px vote for (10, 10), the right 100 px for (10, 30)
    offset = np.stack([10.0 - yy, np.where(xx < 25, 10.0, 30.0) - xx]).astype(np.float32)
    cfg = dict(nms_kernel=3, split_components=True)
    ids, cls, _ = panoptic_instances(sem, heat, offset, [CAR], GroupConfig(**cfg, min_votes=100))
    assert ids.max() == 2 and list(cls) == [-1, CAR, CAR]
    assert len(np.unique(ids[thing & (xx < 25)])) == 1 and ids[10, 30] != ids[10, 10]
    # the right centre collects 100 votes < 101: the component stays whole, as connected components
    ids, _, _ = panoptic_instances(sem, heat, offset, [CAR], GroupConfig(**cfg, min_votes=101))
    assert ids.max() == 1 and (ids[thing] == 1).all()
    # a third, stray centre with 2 votes does not split: its voters join the nearest confident centre
    heat[12, 20] = 0.7
    off3 = offset.copy()
    off3[0][5, 19:21], off3[1][5, 19:21] = 7.0, 0.0          # two pixels vote for (12, 20)
    ids, _, _ = panoptic_instances(sem, heat, off3, [CAR], GroupConfig(**cfg, min_votes=50))
    assert ids.max() == 2 and ids[5, 19] == ids[10, 10] and ids[5, 20] == ids[10, 10]


def test_offset_scale_travels_with_the_weights_and_old_checkpoints_load_as_raw_pixels():
    import torch

    from zoo.instances.net import OFFSET_SCALE, PanopticLite, split_outputs

    torch.manual_seed(0)
    net = PanopticLite(num_classes=3).eval()
    assert float(net.offset_scale) == OFFSET_SCALE
    torch.nn.init.normal_(net.offset[1].weight, std=0.1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        scaled = split_outputs(net(x), 3)[2]
        state = {k: v for k, v in net.state_dict().items() if k != "offset_scale"}  # a pre-scale checkpoint
        old = PanopticLite(num_classes=3).eval()
        old.load_state_dict(state)
        raw = split_outputs(old(x), 3)[2]
    assert float(old.offset_scale) == 1.0
    torch.testing.assert_close(scaled, raw * OFFSET_SCALE, rtol=1e-4, atol=1e-4)


def test_instance_decoder_option_gives_the_regressions_their_own_decoder_and_travels_with_checkpoints(tmp_path):
    from zoo.checkpoints import save_checkpoint
    from zoo.instances.evaluate import load_instance_model
    from zoo.instances.net import PanopticLite

    torch.manual_seed(0)
    shared, dual = PanopticLite(num_classes=3), PanopticLite(num_classes=3, instance_decoder=True)
    assert dual.build_kwargs == {"instance_decoder": True} and shared.build_kwargs == {}
    extra = set(dual.state_dict()) - set(shared.state_dict())
    assert extra and all(k.startswith(("instance_skip.", "instance_decoder.")) for k in extra)
    assert set(shared.state_dict()) <= set(dual.state_dict())   # default checkpoints keep their keys
    for head in (dual.center, dual.offset):   # zero-initialised: no gradient would reach the decoder
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = dual.train()(x)
    assert out.shape == (2, 6, 64, 64)
    # the semantic logits do not depend on the instance decoder, the regressions do
    out[:, 3:].sum().backward()
    for part in (dual.instance_skip, dual.instance_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in dual.semantic.parameters())
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": dual.state_dict(), "meta": {
        "task": "instance", "model": "panoptic_lite_fastdepthseg", "num_classes": 3,
        "build_kwargs": {"instance_decoder": True}}})
    loaded, _ = load_instance_model(path)
    assert loaded.instance_decoder is not None
    dual.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), dual(x))
    from tests.conftest import assert_onnx_matches_torch

    assert_onnx_matches_torch(dual, (64, 64))


def test_min_area_ignores_small_ground_truth_and_small_unmatched_predictions():
    gt = np.zeros((30, 30), np.int32)
    gt[0:10, 0:10] = 1                   # 100 px car, found
    gt[20:22, 20:22] = 2                 # 4 px car, missed
    classes = np.array([-1, CAR, CAR])
    pred = np.zeros_like(gt)
    pred[0:10, 0:10] = 1                 # exact
    pred[15:16, 0:3] = 2                 # 3 px spurious car
    pred[25:30, 0:4] = 3                 # 20 px spurious car
    pcls = np.array([-1, CAR, CAR, CAR])

    def rq(min_area):
        acc = PQAccumulator([CAR])
        acc.add(gt, classes, pred, pcls, min_area=min_area)
        c = acc.result().counts
        return c["tp"], c["fp"], c["fn"]

    assert rq(0) == (1, 2, 1)
    assert rq(10) == (1, 1, 0)           # the 4 px car and the 3 px prediction are ignored
    assert rq(50) == (1, 0, 0)


def test_cc_merges_and_watershed_splits_two_touching_squares():
    sem = np.zeros((44, 50), np.uint8)
    sem[5:25, 5:25] = CAR
    sem[19:39, 25:45] = CAR          # touches the first square along six rows
    cc, _ = cc_instances(sem, [CAR])
    ws, ws_cls = watershed_instances(sem, [CAR])
    assert cc.max() == 1
    assert ws.max() == 2 and list(ws_cls) == [-1, CAR, CAR]
    assert ws[10, 10] != ws[30, 40] and (ws[sem == CAR] > 0).all()
    gt = np.zeros_like(ws)
    gt[5:25, 5:25], gt[19:39, 25:45] = 1, 2
    assert pq_things(gt, ws_cls, ws, ws_cls, [CAR]).rq == 1.0
    assert pq_things(gt, ws_cls, cc, np.array([-1, CAR]), [CAR]).pq == 0.0


# --- network, training, evaluation -------------------------------------------------------------

def test_network_forward_backward_and_registry():
    entry = registry.get_entry("panoptic_lite")
    assert entry.task == "instance" and "panoptic_lite_fastdepthseg" in registry.list_models(task="instance")
    torch.manual_seed(0)
    model = entry.build(num_classes=11).train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 14, 64, 96)
    sem, heat, off = split_outputs(out, 11)
    assert sem.shape[1] == 11 and heat.shape[1] == 1 and off.shape[1] == 2
    assert heat.abs().max() == 0 and off.abs().max() == 0      # zero-initialised regressors
    from zoo.instances.train import instance_loss

    target = torch.randint(0, 11, (2, 64, 96))
    loss, parts = instance_loss(out, target, torch.rand(2, 1, 64, 96), torch.ones(2, 1, 64, 96),
                                torch.randn(2, 2, 64, 96), torch.ones(2, 1, 64, 96), num_classes=11)
    loss.backward()
    assert math.isfinite(loss.item()) and set(parts) == {"semantic", "center", "offset"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_network_exports_to_onnx_and_decodes():
    from tests.conftest import assert_onnx_matches_torch, calibrate_bn
    from zoo.instances.postprocess import decode_output

    torch.manual_seed(0)
    model = calibrate_bn(registry.build("panoptic_lite", num_classes=5))
    assert_onnx_matches_torch(model, (64, 64))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))[0].numpy()
    probs, heat, off = decode_output(out, 5)
    assert probs.shape == (5, 64, 64) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert (heat == out[5]).all() and (off == out[6:]).all()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch on 4 tiny synthetic images, shared by the training and evaluation tests."""
    from zoo.instances.train import InstanceTrainConfig, train

    base = tmp_path_factory.mktemp("inst")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEZOO_CACHE", str(base / "cache"))
        cfg = InstanceTrainConfig(num_images=4, size=(96, 128), epochs=1, batch_size=2, crop=(64, 64),
                                  artifacts=base / "artifacts", workers=0, progress=False)
        yield cfg, train(cfg), base / "cache"


def test_smoke_training_writes_checkpoints_and_resumes(tiny_run):
    from zoo.checkpoints import read_checkpoint
    from zoo.instances.train import train

    cfg, res, cache = tiny_run
    assert res["best"].is_file() and res["last"].is_file() and len(res["history"]) == 1
    meta = read_checkpoint(res["best"])["meta"]
    assert meta["task"] == "instance" and meta["num_classes"] == 11 and meta["thing_classes"]
    assert meta["supervision"].startswith("semantic labels only")
    assert sum(meta["pseudo_instances"]["components"].values()) > 0
    cfg.epochs, cfg.resume = 2, True
    with pytest.raises(ValueError, match="other loss_weights"):   # another recipe cannot resume this run
        train(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, offset=0.5)))
    with pytest.raises(ValueError, match="other build_kwargs"):   # nor another network
        train(dataclasses.replace(cfg, build_kwargs={"instance_decoder": True}))
    # a run saved before a setting existed resumes at the setting's old behaviour, and only there
    from zoo.instances.train import InstanceTrainConfig, LossWeights, _check_resume
    from zoo.recipes import get_recipe

    old_meta = {"loss_weights": {"center": 200.0, "offset": 0.1, "semantic_top_k": 0.2}}
    _check_resume(Path("old.pt"), old_meta, InstanceTrainConfig(), get_recipe("panoptic_lite"))
    with pytest.raises(ValueError, match="small_instance_weight"):
        _check_resume(Path("old.pt"), old_meta, InstanceTrainConfig(loss=LossWeights(small_instance_weight=3.0)),
                      get_recipe("panoptic_lite"))
    res2 = train(cfg)
    assert [h["epoch"] for h in res2["history"]] == [1, 2]
    # a portable copy (no optimizer state, as kept in trained/) resumes on another machine
    from zoo.checkpoints import portable_copy

    moved = dataclasses.replace(cfg, artifacts=Path(cfg.artifacts).parent / "moved", epochs=3)
    portable_copy(res2["last"], Path(moved.artifacts) / Path(res2["last"]).relative_to(cfg.artifacts))
    res3 = train(moved)
    assert [h["epoch"] for h in res3["history"]] == [1, 2, 3]


def test_training_refuses_negative_loss_weights(capsys):
    from zoo.instances.train import main

    assert main(["--offset-weight", "-0.1", "--epochs", "1", "--no-progress"]) == 2
    assert "loss weights must be finite and >= 0" in capsys.readouterr().err
    assert main(["--small-instance-weight", "0", "--epochs", "1", "--no-progress"]) == 2
    assert "--small-instance-weight must be finite and > 0" in capsys.readouterr().err


def test_small_instance_weights_mark_only_pixels_of_small_components():
    from zoo.instances.train import small_instance_weights

    ids = np.zeros((10, 10), np.int32)
    ids[0:2, 0:2] = 1          # 4 px: small
    ids[5:10, 0:10] = 2        # 50 px: large
    ids[3, 9] = 3              # 1 px: small
    w = small_instance_weights(ids, 10, 3.0)
    assert w.dtype == np.float32 and w.shape == ids.shape
    assert (w[ids == 1] == 3).all() and (w[ids == 3] == 3).all()
    assert (w[ids == 2] == 1).all() and (w[ids == 0] == 1).all()   # background is never "small"
    assert (small_instance_weights(ids, 0, 3.0) == 1).all()        # area 0: nothing is small


def test_semantic_weights_scale_the_cross_entropy_before_hard_pixel_selection():
    from zoo.instances.train import LossWeights, instance_loss

    torch.manual_seed(0)
    out = torch.randn(1, 5, 8, 8)
    sem = torch.randint(0, 2, (1, 8, 8))
    zeros, ones = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    plain = LossWeights(semantic_top_k=1.0)
    _, base = instance_loss(out, sem, zeros, ones, torch.zeros(1, 2, 8, 8), ones, num_classes=2, weights=plain)
    _, doubled = instance_loss(out, sem, zeros, ones, torch.zeros(1, 2, 8, 8), ones, num_classes=2, weights=plain,
                               sem_w=torch.full((1, 8, 8), 2.0))
    assert doubled["semantic"] == pytest.approx(2 * base["semantic"], rel=1e-5)
    assert doubled["center"] == base["center"] and doubled["offset"] == base["offset"]


def test_evaluation_cli_prints_pq_for_all_methods(tiny_run, capsys, monkeypatch):
    from zoo.instances.evaluate import main

    cfg, res, cache = tiny_run
    monkeypatch.setenv("EDGEZOO_CACHE", str(cache))
    assert main(["--weights", str(res["best"]), "--num-images", "2", "--size", "96", "128", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for method in ("learned", "cc", "watershed"):
        assert f"{method:<10} all" in out and f"{method:<10} touching" in out
    assert "PQ" in out and "mask AP" in out
    assert "semantic mask of the model(s): mIoU" in out and "thing IoU Car" in out


def test_tuned_settings_written_next_to_the_checkpoint_are_used_by_evaluate(tiny_run, capsys, monkeypatch, tmp_path):
    import shutil

    from zoo.errors import UsageError
    from zoo.instances import evaluate, tune
    from zoo.instances.postprocess import group_sidecar, read_group_sidecar

    cfg, res, cache = tiny_run
    monkeypatch.setenv("EDGEZOO_CACHE", str(cache))
    weights = tmp_path / "best.pt"            # a copy: the shared run keeps no sidecar
    shutil.copy(res["best"], weights)
    common = ["--weights", str(weights), "--num-images", "2", "--size", "96", "128", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:                              # oracle settings are not written
        tune.main([*common, "--semantic", "gt", "--write"])
    assert exit_info.value.code == 2
    assert "--write stores settings for deployment" in capsys.readouterr().err
    assert not group_sidecar(weights).exists()
    assert tune.main([*common, "--split", "val", "--thresholds", "0.3", "--nms-kernels", "5",
                      "--min-votes", "0", "--write"]) == 0
    assert f"wrote {group_sidecar(weights)}" in capsys.readouterr().out
    group, how = read_group_sidecar(weights)
    assert (group.threshold, group.nms_kernel, group.split_components) == (0.3, 5, False)
    assert how["split"] == "val" and how["semantic"] == "pred" and how["weights"] == [str(weights)]

    ecfg = evaluate.InstanceEvalConfig(weights=[str(weights)], num_images=2, size=(96, 128), progress=False)
    assert evaluate.resolve_group(ecfg, weights) == (group, str(group_sidecar(weights)))
    over = dataclasses.replace(ecfg, group_overrides={"threshold": 0.5})
    g, source = evaluate.resolve_group(over, weights)
    assert g.threshold == 0.5 and g.nms_kernel == 5 and source.endswith("+ command line")
    assert evaluate.resolve_group(ecfg, None) == (GroupConfig(), "defaults")
    assert evaluate.main(common) == 0
    assert "learned grouping: threshold 0.3, NMS 5, image-wide" in capsys.readouterr().out

    group_sidecar(weights).write_text('{"group": {"threshold": 0.3, "kernel": 5}}')
    with pytest.raises(UsageError, match="not a grouping sidecar"):
        read_group_sidecar(weights)


def test_true_heads_oracle_makes_the_learned_method_exact_on_true_semantics(tiny_run, monkeypatch):
    """With the true semantic mask and both heads replaced by targets from the true instances,
    grouping must recover the instances (the post-processing is right); a one-epoch model's own
    heads cannot, which is what the oracle is for: telling which head limits the learned row."""
    from zoo.errors import UsageError
    from zoo.instances.evaluate import InstanceEvalConfig, run_eval

    cfg, res, cache = tiny_run
    monkeypatch.setenv("EDGEZOO_CACHE", str(cache))
    # Panoptic-DeepLab's image-wide grouping: exact with true heads (the default component
    # splitting cannot be: an object cut in two by an occluder stays two components)
    group = GroupConfig(threshold=0.1, nms_kernel=3, split_components=False, min_votes=0)
    base = dict(weights=[str(res["best"])], num_images=3, size=(96, 128), semantic="gt", progress=False, group=group)
    oracle = run_eval(InstanceEvalConfig(**base, true_heads="both"))
    own = run_eval(InstanceEvalConfig(**base))
    assert oracle["true_heads"] == "both"
    pq_oracle = oracle["summary"]["learned"]["all"]["pq"]["mean"]
    assert pq_oracle > 0.9 and pq_oracle > own["summary"]["learned"]["all"]["pq"]["mean"]
    with pytest.raises(UsageError, match="--true-heads must be one of"):
        run_eval(InstanceEvalConfig(**base, true_heads="heat"))


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_is_bit_identical(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "EDGEZOO_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "zoo.instances.train", "--num-images", "8", "--size", "96", "128", "--epochs", "2",
           "--batch-size", "2", "--crop", "64", "64", "--workers", "0", "--threads", "1", "--no-progress",
           "--artifacts", str(tmp_path), "--save-every", "0"]

    def run(*extra, **env_extra):
        return subprocess.run([*cli, *extra], env={**env, **env_extra}, capture_output=True, text=True, cwd=repo,
                              timeout=300)

    assert run("--run-name", "straight").returncode == 0
    killed = run("--run-name", "killed", EDGEZOO_FAULT_KILL_AT_STEP="6")   # 4 steps per epoch: mid epoch 2
    assert killed.returncode == -9
    resumed = run("--run-name", "killed", "--resume")
    assert resumed.returncode == 0 and "epoch 2, step 2/4" in resumed.stderr
    runs = tmp_path / "checkpoints" / "panoptic_lite_fastdepthseg" / "synthetic"
    a = torch.load(runs / "straight" / "best.pt", weights_only=True)["model"]
    b = torch.load(runs / "killed" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _toy_discs(index: int, split: int):
    """64x64 image of shaded discs (class 1: bright centre, dark rim), most in touching pairs."""
    rng = np.random.default_rng([split, index])
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.zeros((64, 64, 3), np.float32) + rng.uniform(40, 90, 3)
    ids = np.zeros((64, 64), np.int32)
    for _ in range(rng.integers(1, 4)):
        r1, (cy, cx) = rng.uniform(5, 9), rng.uniform(12, 52, 2)
        discs = [(cy, cx, r1)]
        if rng.random() < 0.6:
            r2, a = rng.uniform(5, 9), rng.uniform(0, 2 * np.pi)
            d = (r1 + r2) * rng.uniform(0.75, 0.95)
            discs.append((cy + d * np.sin(a), cx + d * np.cos(a), r2))
        col = rng.uniform(150, 250, 3)
        for y, x, r in discs:
            d2 = ((yy - y) ** 2 + (xx - x) ** 2) / r ** 2
            ids[d2 <= 1] = ids.max() + 1
            img[d2 <= 1] = col * (1.0 - 0.5 * d2[d2 <= 1, None])
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), (ids > 0).astype(np.uint8), ids


@pytest.mark.slow
def test_learns_to_split_touching_discs_from_semantic_labels_only():
    """Smoke check of the whole method (about 1.5 min on one core): trained on semantic masks of
    toy discs only, it must split touching discs far better than both baselines."""
    from zoo.data import Preprocess
    from zoo.instances.data import InstanceData, InstanceSample
    from zoo.instances.net import PanopticLite
    from zoo.instances.postprocess import decode_output
    from zoo.instances.train import PseudoInstanceSet, instance_loss

    class Toy:
        def __init__(self, n, split, with_ids):
            self.n, self.split, self.with_ids = n, split, with_ids

        def __len__(self):
            return self.n

        def load(self, i):
            img, sem, ids = _toy_discs(i, self.split)
            cls = np.array([-1] + [1] * int(ids.max())) if self.with_ids else None
            return InstanceSample(img, sem, ids if self.with_ids else None, cls, str(i))

    pre = Preprocess(mean=(128,) * 3, std=(64,) * 3)
    train_data = InstanceData("toy", "train", ("bg", "disc"), (1,), 255, pre, Toy(96, 0, False))
    ds = PseudoInstanceSet(train_data, crop=(64, 64), scale_range=(0.9, 1.1), sigma=2.0,
                           clean=CleanFilter(min_area=10), paste=PasteConfig(min_height=4), seed=0)
    torch.manual_seed(0)
    model = PanopticLite(num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    for epoch in range(100):  # 6 steps of 16 images each
        ds.epoch = epoch
        perm = np.random.default_rng(epoch).permutation(len(ds))
        for b in range(0, len(ds), 16):
            x, sem, sem_w, heat, hw, off, ow = (torch.stack(t) for t in zip(*[ds[int(j)] for j in perm[b:b + 16]]))
            loss, _ = instance_loss(model(x), sem, heat, hw, off, ow, num_classes=2, sem_w=sem_w)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    acc = {m: PQAccumulator((1,)) for m in ("learned", "cc", "watershed")}
    test = Toy(64, 1, True)
    with torch.no_grad():
        for i in range(len(test)):
            s = test.load(i)
            probs, heat, off = decode_output(model(pre(s.image)[None])[0].numpy(), 2)
            sem = probs.argmax(0).astype(np.uint8)
            touching = touching_instances(s.ids, s.classes)
            # Panoptic-DeepLab's grouping: the defaults' 50-vote minimum is sized for 360x480 scenes
            group = GroupConfig(threshold=0.1, nms_kernel=3, split_components=False, min_votes=0)
            preds = {"learned": panoptic_instances(sem, heat, off, (1,), group)[:2], "cc": cc_instances(sem, (1,)),
                     "watershed": watershed_instances(sem, (1,))}
            for m, (ids, cls) in preds.items():
                acc[m].add(s.ids, s.classes, ids, cls, counted=touching)
    pq = {m: a.result().pq for m, a in acc.items()}
    assert pq["learned"] > pq["cc"] + 0.3 and pq["learned"] > pq["watershed"] + 0.3, pq


def test_tuning_grid_scores_grouping_configurations_on_kept_outputs():
    from zoo.instances.tune import _Kept, grid, score

    gt = np.zeros((40, 60), np.int32)
    gt[5:25, 5:25] = 1
    gt[5:25, 25:45] = 2                  # two touching cars
    classes = np.array([-1, CAR, CAR])
    t = make_targets(gt, np.ones(3, bool), sigma=3.0)
    kept = [_Kept(np.where(gt > 0, CAR, 0).astype(np.uint8), t.heat, t.offset, gt, classes,
                  np.zeros(gt.shape, bool), touching_instances(gt, classes))]
    configs = grid([0.5, 1.5], [3], [0, 50], vote_radius=16.0)
    assert [(c.threshold, c.split_components, c.min_votes) for c in configs] == [
        (0.5, False, 0), (0.5, True, 50), (1.5, False, 0), (1.5, True, 50)]
    pq = [score(kept, c, [CAR], ["Car"]) for c in configs]
    assert pq[0]["touching"] == pytest.approx(1.0) and pq[1]["touching"] == pytest.approx(1.0)
    # a threshold above every peak finds no centre: the two cars stay one component, no match
    assert pq[2]["touching"] == 0.0 and pq[3]["all"] == 0.0
