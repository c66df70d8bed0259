"""Detector training: YOLOv5 loss and anchor matching, box augmentation, the trainer (checkpoints,
resume after SIGKILL, DDP, fine-tuning the official checkpoint) and class weights from boxes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import complete_box_iou, complete_box_iou_loss

from tests.conftest import REPO, shared_or_skip
from zoo.checkpoints import checkpoint_dir, load_weights, read_checkpoint
from zoo.data import DetSample, Preprocess, build_dataset
from zoo.det.augment import AugmentConfig, DetTrainDataset, detection_collate, hflip
from zoo.det.loss import LossHyp, YOLOv5Loss, build_targets, ciou
from zoo.det.train import (DetTrainConfig, detection_class_weights, init_from_weights, lr_factor,
                           train_detector)
from zoo.det.yolov5 import DEFAULT_ANCHORS, STRIDES
from zoo.recipes import get_det_recipe
from zoo.registry import get_entry

ANCHORS = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32) / torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
CLASSES = ["car", "widget"]
COLOURS = {0: (230, 40, 40), 1: (40, 60, 230)}


# --------------------------------------------------------------------------------------------
# a tiny YOLO-format dataset (64x64) with its card
# --------------------------------------------------------------------------------------------

def _write_yolo_split(root: Path, split: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.full((64, 64, 3), 90, np.uint8) + rng.integers(0, 20, (64, 64, 3), dtype=np.uint8)
        lines = []
        for c in (0, 1):
            w, h = rng.integers(12, 28, size=2)
            x0, y0 = rng.integers(0, 64 - w), rng.integers(0, 64 - h)
            image[y0:y0 + h, x0:x0 + w] = COLOURS[c]
            lines.append(f"{c} {(x0 + w / 2) / 64:.6f} {(y0 + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
        Image.fromarray(image).save(root / "images" / split / f"im{i:02d}.png")
        (root / "labels" / split / f"im{i:02d}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_yolo(tmp_path_factory) -> tuple[Path, Path]:
    """(cards folder holding `tinyyolo.yaml`, data root): 4 train + 2 val images, 2 classes."""
    base = tmp_path_factory.mktemp("tinyyolo")
    root, cards = base / "data", base / "cards"
    _write_yolo_split(root, "train", 4, seed=1)
    _write_yolo_split(root, "val", 2, seed=2)
    cards.mkdir()
    (cards / "tinyyolo.yaml").write_text(
        "name: tinyyolo\ntask: detection\nformat: yolo\nclasses: [car, widget]\nnum_classes: 2\n"
        f"input_size: [64, 64]\ndefault_root: {root}\nsplits: [train, val]\n")
    return cards, root


@pytest.fixture
def tiny_env(tiny_yolo, monkeypatch):
    cards, root = tiny_yolo
    monkeypatch.setenv("EDGEZOO_DATASETS_DIR", str(cards))
    return root


def _tiny_cfg(root: Path, artifacts: Path, **kw) -> DetTrainConfig:
    base = dict(model="yolov5n", data="tinyyolo", data_root=root, recipe="quick", epochs=1, batch_size=2,
                img_size=64, eval_every=1, workers=0, threads=1, artifacts=artifacts, progress=False)
    return DetTrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------

def test_ciou_equals_torchvision_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy1, xy2 = torch.rand(200, 2, generator=g) * 10, torch.rand(200, 2, generator=g) * 10
    wh1, wh2 = torch.rand(200, 2, generator=g) * 5 + 0.1, torch.rand(200, 2, generator=g) * 5 + 0.1
    b1, b2 = torch.cat((xy1, wh1), 1), torch.cat((xy2, wh2), 1)
    xyxy = lambda b: torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)  # noqa: E731
    ref = complete_box_iou(xyxy(b1), xyxy(b2)).diagonal()
    assert torch.allclose(ciou(b1, b2), ref, atol=1e-5)
    assert torch.allclose(ciou(b1, b1), torch.ones(200), atol=1e-5)
    # same gradient as torchvision's loss (alpha held constant in both)
    p = b1.clone().requires_grad_(True)
    (1 - ciou(p, b2)).sum().backward()
    q = xyxy(b1).requires_grad_(True)
    complete_box_iou_loss(q, xyxy(b2), reduction="sum").backward()
    # d/d(cx, cy, w, h) from d/d(x0, y0, x1, y1)
    gq = q.grad
    expected = torch.cat((gq[:, :2] + gq[:, 2:], (gq[:, 2:] - gq[:, :2]) / 2), 1)
    assert torch.allclose(p.grad, expected, atol=1e-4)
    # a collapsed prediction (sigmoid underflow) stays finite
    tiny = torch.tensor([[-0.5, -0.5, 3e-10, 5e-10], [0.0, 0.0, 0.0, 0.0]])
    assert torch.isfinite(ciou(tiny, torch.tensor([[0.25, 0.75, 5.0, 1.25]] * 2))).all()


def _hand_box(img: int = 256) -> torch.Tensor:
    # 40x10 px box centred at (82, 46) px: at stride 8 the centre is cell (10.25, 5.75)
    return torch.tensor([[0, 2, 82 / img, 46 / img, 40 / img, 10 / img]])


def test_anchor_matching_picks_expected_anchors_and_cells():
    levels = build_targets(_hand_box(), ANCHORS, [(32, 32), (16, 16), (8, 8)], anchor_t=4.0)
    # P3 anchors 10x13 (w ratio exactly 4: not < 4), 16x30 (max ratio 3), 33x23 (2.3);
    # P4 / P5 anchors are all more than 4x off in one side.
    p3 = levels[0]
    got = sorted(zip(p3.anchor.tolist(), p3.gy.tolist(), p3.gx.tolist()))
    cells = [(5, 10), (5, 9), (6, 10)]  # own; left (x in the left half); below (y in the lower half)
    assert got == sorted((a, y, x) for a in (1, 2) for y, x in cells)
    assert levels[1].image.numel() == 0 and levels[2].image.numel() == 0
    # box targets: centre relative to each cell's corner, size in grid units
    for (gy, gx), xy in zip(cells, [(0.25, 0.75), (1.25, 0.75), (0.25, -0.25)]):
        rows = p3.box[(p3.gy == gy) & (p3.gx == gx)]
        assert torch.allclose(rows, torch.tensor([[*xy, 5.0, 1.25]] * 2))
    assert set(p3.cls.tolist()) == {2} and set(p3.image.tolist()) == {0}
    # a centre in the outermost cell gets no neighbour beyond the border rule
    edge = build_targets(torch.tensor([[0, 0, 4 / 256, 4 / 256, 16 / 256, 30 / 256]]), ANCHORS,
                         [(32, 32), (16, 16), (8, 8)])[0]
    assert set(zip(edge.gy.tolist(), edge.gx.tolist())) == {(0, 0)}


def _maps_for(targets: torch.Tensor, nc: int, shift: float = 0.0) -> list[torch.Tensor]:
    """Raw maps whose decoded boxes equal the targets' (plus `shift` cells in x and y)."""
    shapes = [(32, 32), (16, 16), (8, 8)]
    maps = [torch.full((1, 3, h, w, 5 + nc), -12.0) for h, w in shapes]
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    for m, lt in zip(maps, build_targets(targets, ANCHORS, shapes)):
        for k in range(lt.image.numel()):
            idx = (lt.image[k], lt.anchor[k], lt.gy[k], lt.gx[k])
            xy = (lt.box[k, :2] + shift + 0.5) / 2
            wh = torch.sqrt(lt.box[k, 2:] / lt.anchor_wh[k]) / 2
            m[idx + (slice(0, 4),)] = logit(torch.cat((xy, wh)))
            m[idx + (4,)] = 12.0
            m[idx + (5 + int(lt.cls[k]),)] = 12.0
    return maps


def test_perfect_prediction_beats_shifted_and_empty():
    t, nc = _hand_box(), 3
    crit = YOLOv5Loss(ANCHORS, nc, LossHyp().scaled(num_classes=nc, img_size=256))
    perfect, parts = crit(_maps_for(t, nc), t)
    shifted, shifted_parts = crit(_maps_for(t, nc, shift=0.2), t)
    empty, _ = crit([torch.full_like(m, -12.0) for m in _maps_for(t, nc)], t)
    assert float(parts[0]) < 1e-5 and float(shifted_parts[0]) > 1e-3  # box term: 1 - CIoU
    assert float(perfect) < float(shifted) < float(empty)
    assert torch.isfinite(perfect)


def test_loss_gradients_and_class_weights():
    t, nc = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 0, 0.3, 0.6, 0.1, 0.1]]), 3
    maps = [torch.randn(2, 3, s, s, 5 + nc, requires_grad=True) for s in (8, 4, 2)]
    anchors = ANCHORS
    hyp = LossHyp().scaled(num_classes=nc, img_size=64)
    loss, parts = YOLOv5Loss(anchors, nc, hyp)(maps, t)
    loss.backward()
    assert all(torch.isfinite(m.grad).all() for m in maps) and loss.item() > 0
    _, same = YOLOv5Loss(anchors, nc, hyp, class_weights=torch.ones(nc))(maps, t)
    _, doubled = YOLOv5Loss(anchors, nc, hyp, class_weights=torch.full((nc,), 2.0))(maps, t)
    assert torch.allclose(same, parts) and torch.allclose(doubled[2], 2 * parts[2])
    assert torch.allclose(doubled[:2], parts[:2])
    no_targets, _ = YOLOv5Loss(anchors, nc, hyp)(maps, torch.zeros((0, 6)))
    assert torch.isfinite(no_targets)


def test_loss_gain_scaling_follows_reference():
    h = LossHyp().scaled(num_classes=5, img_size=320)
    assert (h.box, h.cls, h.obj) == pytest.approx((0.05, 0.5 * 5 / 80, 0.25))
    r = get_det_recipe("yolov5")
    assert (r.lr, r.momentum, r.weight_decay, r.nbs, r.warmup_bias_lr, r.anchor_t) == (0.01, 0.937, 5e-4, 64, 0.1, 4.0)
    assert lr_factor(r, 0) == 1.0 and lr_factor(r, r.epochs) == pytest.approx(r.lrf)


def test_optimizer_groups_and_ema():
    from zoo.det.train import ModelEMA, build_optimizer
    from zoo.det.yolov5 import yolov5n

    model = yolov5n(num_classes=2)
    opt = build_optimizer(model, get_det_recipe("yolov5"), weight_decay=5e-4)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert [g["name"] for g in opt.param_groups] == ["bias", "weight", "norm"]
    assert all(p.ndim == 4 for p in groups["weight"]["params"]) and groups["weight"]["weight_decay"] == 5e-4
    assert groups["bias"]["weight_decay"] == groups["norm"]["weight_decay"] == 0.0
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert isinstance(build_optimizer(model, get_det_recipe("quick"), 5e-4), torch.optim.AdamW)
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = 0.9999 * (1 - np.exp(-1 / 2000))
    w0 = ema.ema.model[0].conv.weight
    assert torch.allclose(model.model[0].conv.weight - w0, torch.full_like(w0, d), atol=1e-6)


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------

class _Boxes:
    """A stand-in DetectionDataset: white rectangles (the boxes) on black 48x80 images."""

    def __init__(self, n: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            image = np.zeros((48, 80, 3), np.uint8)
            boxes = []
            for _ in range(3):
                w, h = rng.integers(6, 30), rng.integers(6, 30)
                x0, y0 = rng.integers(0, 80 - w + 8) - 4, rng.integers(0, 48 - h + 8) - 4
                b = np.clip([x0, y0, x0 + w, y0 + h], 0, [80, 48, 80, 48]).astype(np.float32)
                image[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 255
                boxes.append(b)
            self.items.append((image, np.stack(boxes), np.arange(3)))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> DetSample:
        image, boxes, classes = self.items[i]
        return DetSample(image=image, boxes=boxes, classes=classes, image_id=i + 1, name=str(i))


PRE = Preprocess(mean=(0, 0, 0), std=(255, 255, 255))


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_augmentation_keeps_boxes_inside_and_on_the_objects(mosaic):
    base = _Boxes()
    aug = AugmentConfig(hsv_h=0, hsv_s=0, hsv_v=0, scale=0.5, translate=0.2, mosaic=mosaic)
    ds = DetTrainDataset(base, 64, PRE, aug, rng_seed=3)
    n_boxes = 0
    for i in range(len(base)):
        x, lab = ds[i]
        assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
        cx, cy, w, h = lab[:, 1:].T
        assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
        assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
        assert (w * 64 > 2).all() and (h * 64 > 2).all()  # degenerate boxes dropped
        for c, bx, by, bw, bh in lab.tolist():
            x0, x1 = round((bx - bw / 2) * 64), round((bx + bw / 2) * 64)
            y0, y1 = round((by - bh / 2) * 64), round((by + bh / 2) * 64)
            inside = x[:, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
            if inside.numel():
                assert float(inside.mean()) > 0.9  # the box sits on its white rectangle
            n_boxes += 1
    assert n_boxes > 0


def test_flip_mirrors_image_and_boxes():
    base = _Boxes()
    still = AugmentConfig(hsv_h=0, hsv_s=0, hsv_v=0, scale=0.0, translate=0.0, fliplr=0.0)
    x0, lab0 = DetTrainDataset(base, 96, PRE, still, rng_seed=5)[2]
    x1, lab1 = DetTrainDataset(base, 96, PRE, AugmentConfig(**{**still.as_dict(), "fliplr": 1.0}), rng_seed=5)[2]
    assert torch.equal(x1, x0.flip(-1))
    assert torch.allclose(lab1[:, 1], 1 - lab0[:, 1], atol=1e-6)
    assert torch.equal(lab1[:, [0, 2, 3, 4]], lab0[:, [0, 2, 3, 4]])
    image = np.zeros((4, 10, 3), np.uint8)
    image[:, 1] = 255
    flipped, boxes = hflip(image, np.array([[1.0, 0.0, 3.0, 4.0]]))
    assert flipped[0, 8, 0] == 255 and boxes.tolist() == [[7.0, 0.0, 9.0, 4.0]]


def test_collate_prepends_the_image_index():
    a, b = (torch.zeros(3, 32, 32), torch.tensor([[1, .5, .5, .2, .2]])), (torch.ones(3, 32, 32), torch.zeros(0, 5))
    c = (torch.ones(3, 32, 32), torch.tensor([[0, .1, .1, .1, .1], [1, .2, .2, .1, .1]]))
    images, targets = detection_collate([a, b, c])
    assert images.shape == (3, 3, 32, 32) and targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [0, 2, 2] and targets[0, 1:].tolist() == pytest.approx([1, .5, .5, .2, .2])


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------

def test_two_step_training_writes_best_and_last_with_metadata(tiny_env, tmp_path):
    res = train_detector(_tiny_cfg(tiny_env, tmp_path))
    assert res["best"].is_file() and res["last"].is_file()
    assert res["best"].parent == checkpoint_dir("yolov5n", "tinyyolo", "quick", tmp_path)
    meta = read_checkpoint(res["best"])["meta"]
    assert meta["model"] == "yolov5n" and meta["num_classes"] == 2 and meta["classes"] == CLASSES
    assert meta["task"] == "detection" and meta["img_size"] == 64 and meta["recipe"]["name"] == "quick"
    assert 0 <= meta["metrics"]["map"] <= 1 and meta["epoch"] == 1 and meta["init"] == {"weights": "scratch"}
    assert len(json.loads(res["best"].with_suffix(".json").read_text())["sha256"]) == 64
    last = read_checkpoint(res["last"])
    assert (last["epoch"], last["step_in_epoch"]) == (1, 0) and last["ema"]["updates"] == 2
    assert [h["epoch"] for h in res["history"]] == [1] and "map" in res["history"][0]
    # the best checkpoint loads through the registry with the recorded class count
    loaded = load_weights(get_entry("yolov5n"), res["best"], num_classes=80)
    assert loaded.num_classes == 2 and loaded.model.detect.nc == 2


def _run(args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


TINY_CLI = ["--model", "yolov5n", "--data", "tinyyolo", "--recipe", "quick", "--epochs", "2", "--batch-size", "2",
            "--img-size", "64", "--eval-every", "1", "--workers", "0", "--threads", "1", "--no-progress"]


def test_resume_after_sigkill_mid_epoch(tiny_yolo, tmp_path):
    cards, root = tiny_yolo
    env = {"EDGEZOO_DATASETS_DIR": str(cards)}
    # 4 images, batch 2 -> 2 steps per epoch; die after step 3 (mid epoch 2), saving every step.
    args = ["-m", "zoo.train", *TINY_CLI, "--data-root", str(root), "--artifacts", str(tmp_path),
            "--save-every", "0"]
    killed = _run(args, {**env, "EDGEZOO_FAULT_KILL_AT_STEP": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = checkpoint_dir("yolov5n", "tinyyolo", "quick", tmp_path) / "last.pt"
    state = read_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1) and state["ema"]["updates"] == 3
    resumed = _run([*args, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "epoch 2, step 1/2" in resumed.stderr
    history = json.loads((last.parent / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert read_checkpoint(last)["ema"]["updates"] == 4


def test_torchrun_two_cpu_processes(tiny_yolo, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    cards, root = tiny_yolo
    args = [*TINY_CLI, "--data-root", str(root), "--artifacts", str(tmp_path)]
    args[args.index("--epochs") + 1] = "1"
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29541", "-m", "zoo.det.train", *args],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_DATASETS_DIR": str(cards)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = checkpoint_dir("yolov5n", "tinyyolo", "quick", tmp_path) / "best.pt"
    assert read_checkpoint(best)["meta"]["world_size"] == 2


def test_finetune_official_checkpoint_to_other_classes(tiny_env, tmp_path):
    path = shared_or_skip("weights", "yolov5n.pt")
    entry = get_entry("yolov5n")
    official = load_weights(entry, path, num_classes=80).model.state_dict()
    model, pre, info, build_kwargs = init_from_weights(entry, path, 2, CLASSES)
    sd = model.state_dict()
    assert model.detect.nc == 2 and pre["scale"] == pytest.approx(1 / 255) and build_kwargs["act"] == "silu"
    assert info["matched_classes"] == {"car": "car"} and info["reinitialised_classes"] == ["widget"]
    assert torch.equal(sd["model.2.cv1.conv.weight"], official["model.2.cv1.conv.weight"])
    assert torch.equal(sd["model.24.anchors"], official["model.24.anchors"])
    for i in range(3):
        new = sd[f"model.24.m.{i}.weight"].view(3, 7, -1)
        old = official[f"model.24.m.{i}.weight"].view(3, 85, -1)
        assert torch.equal(new[:, :5], old[:, :5])   # box + objectness kept
        assert torch.equal(new[:, 5], old[:, 5 + 2])  # "car" is COCO class 2
        assert not torch.equal(new[:, 6], old[:, 5 + 1])
    # and a real (2-step) fine-tuning run records where it started
    res = train_detector(_tiny_cfg(tiny_env, tmp_path, weights=path, run_name="ft"))
    meta = read_checkpoint(res["best"])["meta"]
    assert meta["init"]["source_num_classes"] == 80 and meta["init"]["matched_classes"] == {"car": "car"}
    assert meta["build_kwargs"]["act"] == "silu" and res["best"].parent.name == "ft"


def test_class_weights_from_box_counts(tiny_env):
    ds = build_dataset("tinyyolo", root=tiny_env, split="train")
    w, info = detection_class_weights(ds, 2, "effective")
    assert info["counts"] == [4, 4] and float(w.sum()) == pytest.approx(2.0)
    assert detection_class_weights(ds, 2, "none") == (None, {"method": "none"})

    class Skewed:
        def __len__(self):
            return 3

        def targets(self, i):
            return np.zeros((0, 4)), np.array([0, 0, 0, 0, 1] if i else [0, 2])

    w, info = detection_class_weights(Skewed(), 3, "effective")
    assert info["counts"] == [9, 2, 1] and float(w.sum()) == pytest.approx(3.0)
    assert w[0] < w[1] < w[2]
    w, _ = detection_class_weights(Skewed(), 3, "inverse")
    assert float(w.sum()) == pytest.approx(3.0)


def test_patience_stops_the_detector_trainer_early(tiny_env, tmp_path, monkeypatch):
    import types

    import zoo.evaluate

    maps = iter([0.3, 0.2, 0.1, 0.9])  # epochs 1-4: no new best after epoch 1

    def fake_evaluate(*args, **kwargs):
        value = next(maps)
        return types.SimpleNamespace(map=value, map50=value, images=1, as_dict=lambda: {"map": value}), None

    monkeypatch.setattr(zoo.evaluate, "evaluate_detector", fake_evaluate)  # train_detector imports it late
    res = train_detector(_tiny_cfg(tiny_env, tmp_path, epochs=4, patience=2))
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    last = json.loads(res["last"].with_suffix(".json").read_text())
    assert last["early_stop"] == {"after_epoch": 3, "patience": 2, "best_epoch": 1, "map": 0.3}
