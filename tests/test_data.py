"""Tests of the dataset layer: cards, the CamVid / Cityscapes / synthetic loaders, transforms.

Everything runs on tiny fixtures written into tmp_path, except the real-CamVid checks, which
skip when the shared data folder (``../shared`` next to the repository) is absent.
"""
from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import (DataError, DatasetCard, EvalTransform, Preprocess, Sample, TrainTransform,
                      build_dataset, list_datasets, load_card)
from zoo.data import synthetic as syn
from zoo.data.cityscapes import LABEL_TO_TRAIN
from zoo.data.pngio import encode_png, write_png

REPO = Path(__file__).resolve().parents[1]
SHARED_CAMVID = REPO.parent / "shared" / "data" / "camvid"

TINY = (64, 96)  # synthetic size used by the tests (H, W)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    """SegNet layout: 3 train + 2 val pairs of 8x12 images; train.txt gives a custom order."""
    root = tmp_path / "camvid"
    names = {"train": ["b_001.png", "a_002.png", "c_003.png"], "val": ["v_001.png", "v_002.png"]}
    for split, files in names.items():
        for k, name in enumerate(files):
            _png(root / split / name, _rgb(8, 12, k))
            label = (np.arange(8 * 12).reshape(8, 12) % 12).astype(np.uint8)  # 0..11 incl. void
            _png(root / f"{split}annot" / name, label)
    # SegNet list files carry the authors' absolute paths: only the names may be used
    (root / "train.txt").write_text("".join(
        f"/SegNet/CamVid/train/{n} /SegNet/CamVid/trainannot/{n}\n" for n in names["train"]))
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """Official layout, 2 cities; the first label holds every labelId 0..33 and 255."""
    root = tmp_path / "cityscapes"
    ids = np.array(list(range(34)) + [255], dtype=np.uint8)
    label = np.tile(ids, (4, 1))
    for city, stem in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        _png(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png",
             _rgb(4, len(ids), 1))
        _png(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", label)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# cards
# --------------------------------------------------------------------------------------------

def test_list_datasets() -> None:
    assert list_datasets() == ["camvid", "cityscapes", "coco", "synthetic", "synthetic-det", "synthetic-lt"]


@pytest.mark.parametrize("name,n,size", [("camvid", 11, (360, 480)),
                                         ("synthetic", 11, (360, 480)),
                                         ("cityscapes", 19, (1024, 2048))])
def test_cards(name: str, n: int, size: tuple[int, int]) -> None:
    card = load_card(name)
    assert isinstance(card, DatasetCard)
    assert card.name == name and card.task == "segmentation"
    assert card.num_classes == n == len(card.classes) == len(card.palette)
    assert card.ignore_index == 255
    assert card.input_size == size
    assert len(card.mean) == len(card.std) == 3 and all(0 < s < 128 for s in card.std)
    assert set(card.splits) == {"train", "val", "test"}
    hash(card)  # frozen and hashable despite the free-form `extra`


def test_synthetic_card_matches_camvid() -> None:
    syn_card, cam = load_card("synthetic"), load_card("camvid")
    assert syn_card.classes == cam.classes and syn_card.palette == cam.palette
    assert syn_card.thing_classes == ("Car", "Pedestrian", "Bicyclist", "SignSymbol", "Pole")
    assert syn_card.thing_ids == syn.THING_IDS
    gen = syn_card.extra["generator"]
    assert gen["version"] == syn.GENERATOR_VERSION
    assert gen["num_images"] == syn.DEFAULT_COUNTS


def test_unknown_dataset_lists_valid_ones() -> None:
    with pytest.raises(DataError) as e:
        load_card("camvd")
    msg = str(e.value)
    assert "camvid, cityscapes, coco, synthetic, synthetic-det" in msg and "did you mean 'camvid'" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="valid datasets"):
        build_dataset("nope")


def test_cards_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "datasets" / "camvid.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(text.replace("name: camvid", "name: mine"))
    (tmp_path / "broken.yaml").write_text("name: broken\ntask: segmentation\n")
    monkeypatch.setenv("EDGEZOO_DATASETS_DIR", str(tmp_path))
    assert list_datasets() == ["broken", "mine"]
    assert load_card("mine").num_classes == 11
    with pytest.raises(DataError, match=r"broken\.yaml' lacks key\(s\): classes"):
        load_card("broken")


# --------------------------------------------------------------------------------------------
# CamVid (SegNet layout)
# --------------------------------------------------------------------------------------------

def test_camvid_reads_pairs_in_list_order_and_maps_void(camvid_root: Path) -> None:
    ds = build_dataset("camvid", root=camvid_root, split="train")
    assert len(ds) == 3 and ds.card.name == "camvid"
    assert [p[0].name for p in ds.files] == ["b_001.png", "a_002.png", "c_003.png"]
    assert all(img.parent.name == "train" and lab.parent.name == "trainannot"
               for img, lab in ds.files)
    s = ds[0]
    assert isinstance(s, Sample) and s.name == "b_001"
    assert s.image.shape == (8, 12, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (8, 12) and s.label.dtype == np.uint8
    raw = (np.arange(96).reshape(8, 12) % 12)
    assert (s.label[raw == 11] == 255).all()
    assert (s.label[raw < 11] == raw[raw < 11]).all()
    np.testing.assert_array_equal(s.image, _rgb(8, 12, 0))
    # no list file for val: sorted folder listing; splits can be joined
    assert [p[0].name for p in build_dataset("camvid", root=camvid_root, split="val").files] == \
        ["v_001.png", "v_002.png"]
    assert len(build_dataset("camvid", root=camvid_root, split="train+val")) == 5


def test_camvid_transform_hook(camvid_root: Path) -> None:
    ds = build_dataset("camvid", root=camvid_root, split="val",
                       transform=EvalTransform(Preprocess.from_card(load_card("camvid"))))
    x, y = ds[1]
    assert x.shape == (3, 8, 12) and y.dtype == torch.int64
    with pytest.raises(IndexError):
        ds[2]


def test_camvid_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_dataset("camvid", root=root)
    msg = str(e.value)
    assert f"CamVid root '{root}' not found" in msg
    assert f"{root}/{{train,val,test}}annot/*.png (SegNet layout)" in msg
    assert "--data-root" in msg and "\n" not in msg


def test_camvid_missing_split(camvid_root: Path) -> None:
    with pytest.raises(DataError, match=r"split 'test' not found .*available splits there: "
                                        r"train, val"):
        build_dataset("camvid", root=camvid_root, split="test")
    with pytest.raises(DataError, match="unknown CamVid split 'training'"):
        build_dataset("camvid", root=camvid_root, split="training")


def test_camvid_image_without_label(camvid_root: Path) -> None:
    _png(camvid_root / "val" / "v_003.png", _rgb(8, 12, 3))
    with pytest.raises(DataError) as e:
        build_dataset("camvid", root=camvid_root, split="val")
    assert "v_003.png' has no label" in str(e.value)
    assert str(camvid_root / "valannot" / "v_003.png") in str(e.value)


def test_camvid_size_mismatch(camvid_root: Path) -> None:
    _png(camvid_root / "valannot" / "v_002.png", np.zeros((9, 12), np.uint8))
    ds = build_dataset("camvid", root=camvid_root, split="val")
    ds[0]  # fine: checks are lazy, per sample
    with pytest.raises(DataError, match=r"sizes differ for 'v_002\.png': image 12x8 vs label "
                                        r"12x9"):
        ds[1]


def test_camvid_bad_label_value(camvid_root: Path) -> None:
    bad = np.zeros((8, 12), np.uint8)
    bad[3, 4] = 17
    path = camvid_root / "valannot" / "v_001.png"
    _png(path, bad)
    with pytest.raises(DataError) as e:
        build_dataset("camvid", root=camvid_root, split="val")[0]
    assert f"label '{path}' has value 17" in str(e.value) and "0..11, 255" in str(e.value)


def test_camvid_colour_label_rejected(camvid_root: Path) -> None:
    path = camvid_root / "valannot" / "v_001.png"
    _png(path, _rgb(8, 12, 5))
    with pytest.raises(DataError, match="RGB image; CamVid labels must be 8-bit"):
        build_dataset("camvid", root=camvid_root, split="val")[0]


def test_unexpected_option_rejected(camvid_root: Path) -> None:
    with pytest.raises(DataError, match="unexpected option"):
        build_dataset("camvid", root=camvid_root, num_images=3)


# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------

def test_cityscapes_label_mapping(cityscapes_root: Path) -> None:
    ds = build_dataset("cityscapes", root=cityscapes_root, split="train")
    assert len(ds) == 2 and [p[0].parent.name for p in ds.files] == ["aachen", "bonn"]
    assert ds.files[0][1].name == "aachen_000000_000019_gtFine_labelIds.png"
    row = ds[0].label[0]
    mapped = dict(zip(list(range(34)) + [255], row.tolist()))
    assert mapped[7] == 0 and mapped[26] == 13 and mapped[33] == 18
    assert mapped[0] == 255 and mapped[29] == 255 and mapped[255] == 255
    expected = {i: LABEL_TO_TRAIN.get(i, 255) for i in range(34)}
    assert {i: mapped[i] for i in range(34)} == expected
    assert sorted(LABEL_TO_TRAIN.values()) == list(range(19))


def test_cityscapes_errors(cityscapes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Cityscapes root .* not found: expected .*leftImg8bit/"
                                        r"\{train,val,test\}/<city>/\*_leftImg8bit\.png"):
        build_dataset("cityscapes", root=tmp_path / "none")
    with pytest.raises(DataError, match="split 'val' not found"):
        build_dataset("cityscapes", root=cityscapes_root, split="val")
    lab = cityscapes_root / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelIds.png"
    _png(lab, np.full((4, 35), 40, np.uint8))
    with pytest.raises(DataError, match=r"bonn_000001_000019_gtFine_labelIds\.png' has value 40"):
        build_dataset("cityscapes", root=cityscapes_root)[1]
    lab.unlink()
    with pytest.raises(DataError, match=r"bonn_000001_000019_leftImg8bit\.png' has no label"):
        build_dataset("cityscapes", root=cityscapes_root)


def test_cityscapes_train_ids_option(cityscapes_root: Path) -> None:
    for city, stem in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        _png(cityscapes_root / "gtFine/train" / city / f"{stem}_gtFine_labelTrainIds.png",
             np.tile(np.array([0, 5, 18, 255], np.uint8), (4, 1)))
        _png(cityscapes_root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png",
             _rgb(4, 4, 0))
    ds = build_dataset("cityscapes", root=cityscapes_root, labels="labelTrainIds")
    assert ds[0].label[0].tolist() == [0, 5, 18, 255]


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------

def test_png_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
                rng.integers(0, 256, (7, 9), dtype=np.uint8),
                rng.integers(0, 65536, (7, 9), dtype=np.uint16)):
        back = np.asarray(Image.open(io.BytesIO(encode_png(arr))))
        np.testing.assert_array_equal(back, arr)
    write_png(tmp_path / "x.png", arr)
    assert Image.open(tmp_path / "x.png").mode == "I;16"


def test_synthetic_fast_uniform_is_numpys() -> None:
    """The generator's scalar uniform must draw exactly what numpy's would (same scenes)."""
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    fast = syn._Rng(b)
    for lo, hi in [(0.5, 1.5), (-4.0, 10.0), (3, 150), (0.0, 1.0), (2.5, 2.5)]:
        assert [a.uniform(lo, hi) for _ in range(5)] == [fast.uniform(lo, hi) for _ in range(5)]
    assert a.random() == fast.random()


def test_synthetic_box_blur_matches_pillow() -> None:
    """The generator's planar box blur is PIL's BoxBlur up to rounding (v1 used Pillow's)."""
    from PIL import ImageFilter

    plane = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    plane[10:20, 5:30] = 250  # edges, where the two roundings differ most
    for radius in (0.5, 0.8, 1.0, 1.3, 1.49):
        ref = np.asarray(Image.fromarray(plane).filter(ImageFilter.BoxBlur(radius)))
        diff = np.abs(syn._box_blur(plane, radius).astype(int) - ref.astype(int))
        assert diff.max() <= 1, radius


def test_synthetic_is_deterministic() -> None:
    a = syn.generate_sample(0, "train", 3, TINY)
    b = syn.generate_sample(0, "train", 3, TINY)
    for key in ("image", "label", "instances"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["boxes"] == b["boxes"]
    c = syn.generate_sample(1, "train", 3, TINY)
    d = syn.generate_sample(0, "val", 3, TINY)
    e = syn.generate_sample(0, "train", 4, TINY)
    for other in (c, d, e):
        assert not np.array_equal(a["image"], other["image"])
        assert not np.array_equal(a["label"], other["label"])


def test_synthetic_labels_instances_and_boxes() -> None:
    seen = np.zeros(12, np.int64)
    n_boxes = 0
    for i in range(6):
        s = syn.generate_sample(0, "val", i, (120, 160))
        img, lab, ins = s["image"], s["label"], s["instances"]
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
        assert lab.dtype == np.uint8 and lab.max() <= syn.VOID
        assert ins.dtype == np.uint16
        seen += np.bincount(lab.ravel(), minlength=12)
        # instance ids only on thing classes, and every thing pixel has an instance
        is_thing = np.isin(lab, syn.THING_IDS)
        assert not ins[~is_thing].any()
        assert ins[is_thing].all()
        ids = sorted(set(np.unique(ins).tolist()) - {0})
        assert ids == [b["instance"] for b in s["boxes"]] == list(range(1, len(ids) + 1))
        for box in s["boxes"]:
            ys, xs = np.nonzero(ins == box["instance"])
            assert set(np.unique(lab[ys, xs]).tolist()) == {box["class"]}
            x0, y0, x1, y1 = box["bbox"]  # exclusive max: the tight box of the visible pixels
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            n_boxes += 1
    assert n_boxes > 10
    assert (seen[[syn.SKY, syn.BUILDING, syn.ROAD, syn.CAR]] > 0).all()


def test_build_synthetic_small(cache: Path, capfd: pytest.CaptureFixture) -> None:
    ds = build_dataset("synthetic", split="train", num_images=5, size=TINY)
    err = capfd.readouterr().err
    assert "generating synthetic dataset (first use) into" in err
    folder = cache / "synthetic" / f"v{syn.GENERATOR_VERSION}-seed0-64x96"
    assert ds.root == folder and len(ds) == 5 and len(ds.files) == 5
    for sub in ("train", "trainannot", "traininst", "val", "valannot", "test", "testannot"):
        assert len(list((folder / sub).glob("*.png"))) == 5
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 5, "val": 5, "test": 5}
    assert len(manifest["pixel_frequency"]["train"]) == 12
    print("synthetic tiny train pixel frequencies:",
          dict(zip(manifest["classes"], manifest["pixel_frequency"]["train"])))
    # what the loader returns is what the generator made (void 11 -> 255, lossless PNGs)
    ref = syn.generate_sample(0, "train", 2, TINY)
    s = ds[2]
    np.testing.assert_array_equal(s.image, ref["image"])
    np.testing.assert_array_equal(s.label, np.where(ref["label"] == 11, 255, ref["label"]))
    np.testing.assert_array_equal(ds.load_instances(2), ref["instances"])
    assert ds.boxes(2) == ref["boxes"]
    assert set(np.unique(s.label).tolist()) <= set(range(11)) | {255}
    # second use: cached, no message; fewer images is a prefix of the same files
    small = build_dataset("synthetic", split="val", num_images={"val": 2}, size=TINY)
    assert "generating" not in capfd.readouterr().err
    assert [p[0].name for p in small.files] == ["val_00000.png", "val_00001.png"]
    # a root pointing straight at a generated folder is read as it is
    assert len(build_dataset("synthetic", root=folder, split="test")) == 5


def test_synthetic_cache_regeneration(cache: Path, capfd: pytest.CaptureFixture) -> None:
    folder = build_dataset("synthetic", num_images=2, size=TINY, progress=False).root
    first = (folder / "train" / "train_00001.png").read_bytes()
    # half-written (no manifest) -> regenerated
    (folder / "manifest.json").unlink()
    capfd.readouterr()
    build_dataset("synthetic", num_images=2, size=TINY, progress=False)
    assert "generating" in capfd.readouterr().err and (folder / "manifest.json").exists()
    # more images than cached -> regenerated; existing images come out identical
    ds = build_dataset("synthetic", split="train", num_images={"train": 4}, size=TINY,
                       progress=False)
    assert len(ds) == 4 and (folder / "train" / "train_00001.png").read_bytes() == first
    assert not list(folder.parent.glob(".tmp-*"))
    with pytest.raises(DataError, match="unknown synthetic split 'tran'"):
        build_dataset("synthetic", split="tran", num_images=2, size=TINY)


def _generation_rate(tmp_path: Path, n: int) -> float:
    """Synthetic samples (image, label and instance PNGs) per second of this thread's CPU time."""
    syn.generate_sample(0, "test", 0)  # noise banks for this size, outside the timing
    t0 = time.thread_time()
    for i in range(n):
        s = syn.generate_sample(0, "test", i)
        write_png(tmp_path / f"{i}.png", s["image"], photo=True)
        write_png(tmp_path / f"{i}_l.png", s["label"])
        write_png(tmp_path / f"{i}_i.png", s["instances"])
    return n / (time.thread_time() - t0)


def test_synthetic_generation_speed(tmp_path: Path) -> None:
    """Issue #2 asks for >= 50 images/s at 360x480 on one core, including PNG writing.

    The rate comes from this thread's CPU time, so time spent waiting for the CPU does not count;
    cache and memory contention from a busy neighbour still do, and the rate depends on the CPU.
    Generator v2 on an AVX2-only Zen 3 VM (2 vCPUs): 50-69 images/s with the machine to itself,
    40-50 next to a training job or other tests (v1 there: 29-37 and 22-31). This default test
    is a regression floor at 30, with room for a loaded CI machine; the spec's 50 is checked by
    the slow-marked test below."""
    rate = _generation_rate(tmp_path, 20)
    print(f"synthetic generation: {rate:.1f} images/s of CPU time at 360x480 (incl. PNG writing)")
    assert rate >= 30


@pytest.mark.slow
def test_synthetic_generation_meets_the_spec_rate(tmp_path: Path) -> None:
    """Issue #2's figure: >= 50 images/s of one core's CPU time (run it on a quiet machine)."""
    rate = _generation_rate(tmp_path, 40)
    assert rate >= 50, f"{rate:.1f} images/s at 360x480 on this CPU"


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------

def test_preprocess_bgr_scale_matches_hand_computation() -> None:
    mean, std = (103.9, 116.8, 123.7), (57.4, 57.1, 58.4)  # given in B, G, R order
    pp = Preprocess(mean=mean, std=std, bgr=True, scale=1 / 255)
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = pp(img)
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    bgr = img[..., ::-1].astype(np.float64)
    hand = ((bgr - np.array(mean)) / np.array(std) / 255.0).transpose(2, 0, 1)
    np.testing.assert_allclose(x.numpy(), hand, rtol=1e-5, atol=1e-6)
    batch = pp.batch_numpy([img, img])
    assert batch.shape == (2, 3, 5, 7) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1], x.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(pp.denormalize(x), img)
    assert pp.rgb_mean == mean[::-1]


def test_preprocess_dict_round_trip() -> None:
    pp = Preprocess(mean=(1, 2, 3), std=(4, 5, 6), bgr=True, scale=0.5)
    assert Preprocess.from_dict(pp.to_dict()) == pp
    assert Preprocess.from_dict({"mean": [0, 0, 0], "std": [1, 1, 1], "scale": "1/255"}).scale \
        == pytest.approx(1 / 255)
    card = load_card("camvid")
    assert Preprocess.from_card(card) == Preprocess(card.mean, card.std)
    with pytest.raises(DataError, match="preprocess needs keys"):
        Preprocess.from_dict({"mean": [0, 0, 0], "std": [1, 1, 1], "rgb": True})


def _sample(h: int = 40, w: int = 60) -> Sample:
    label = (np.arange(h * w).reshape(h, w) % 11).astype(np.uint8)
    return Sample(image=_rgb(h, w, 0), label=label, name="x")


def test_train_transform_shapes_and_padding() -> None:
    pp = Preprocess(mean=(100.0, 110.0, 120.0), std=(50.0, 50.0, 50.0))
    t = TrainTransform(pp, crop_size=(32, 48), rng_seed=0)
    for _ in range(10):
        x, y = t(_sample())
        assert x.shape == (3, 32, 48) and x.dtype == torch.float32
        assert y.shape == (32, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(11)) | {255}
    # crop larger than the (scaled) image: the rest is ignore-labelled and mean-coloured
    t = TrainTransform(pp, crop_size=(64, 80), scale_range=(0.5, 0.5), flip=False, jitter=False,
                       rng_seed=1)
    x, y = t(_sample())
    pad = y == 255
    assert int(pad.sum()) == 64 * 80 - 20 * 30
    assert float(x[:, pad].abs().max()) < 0.02  # mean colour normalises to ~0
    # same seed, same augmentation; the transform pickles for worker processes
    t1, t2 = (TrainTransform(pp, crop_size=(32, 48), rng_seed=7) for _ in range(2))
    a, b = t1(_sample()), t2(_sample())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    t3 = pickle.loads(pickle.dumps(t1))
    assert t3(_sample())[0].shape == (3, 32, 48)


def test_train_transform_in_dataloader_workers(camvid_root: Path) -> None:
    pp = Preprocess.from_card(load_card("camvid"))
    ds = build_dataset("camvid", root=camvid_root, split="train",
                       transform=TrainTransform(pp, crop_size=(8, 12)))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    epoch = [b for b in loader]
    assert epoch[0][0].shape == (3, 3, 8, 12) and epoch[0][1].dtype == torch.int64


def test_eval_transform() -> None:
    pp = Preprocess.from_card(load_card("camvid"))
    x, y = EvalTransform(pp)(_sample())
    assert x.shape == (3, 40, 60) and y.shape == (40, 60) and y.dtype == torch.int64
    x, y = EvalTransform(pp, size=(20, 24))((_sample().image, _sample().label))
    assert x.shape == (3, 20, 24) and y.shape == (20, 24)
    assert set(y.unique().tolist()) <= set(range(11))  # nearest: no blended label values


# --------------------------------------------------------------------------------------------
# real CamVid (shared data)
# --------------------------------------------------------------------------------------------

needs_camvid = pytest.mark.skipif(not SHARED_CAMVID.is_dir(),
                                  reason=f"shared CamVid data not found at {SHARED_CAMVID}")


@needs_camvid
def test_real_camvid() -> None:
    train = build_dataset("camvid", root=SHARED_CAMVID, split="train")
    val = build_dataset("camvid", root=SHARED_CAMVID, split="val")
    assert len(train) == 367 and len(val) == 101
    assert train.files[0][0].name == "0001TP_006690.png"  # train.txt order
    s = train[0]
    assert s.image.shape == (360, 480, 3) and s.label.shape == (360, 480)
    values = set(np.unique(s.label).tolist())
    assert values <= set(range(11)) | {255} and 255 in values
    x, y = EvalTransform(Preprocess.from_card(train.card))(s)
    assert x.shape == (3, 360, 480) and abs(float(x.mean())) < 1.5


@pytest.mark.slow
def test_synthetic_card_stats_match_default_train_split(cache: Path) -> None:
    """Recomputes the card's mean/std the way its comment says (all 400 default train images)."""
    ds = build_dataset("synthetic", split="train", progress=False)
    assert len(ds) == 400
    s = np.zeros(3)
    s2 = np.zeros(3)
    n = 0
    for img_path, _ in ds.files:
        px = np.asarray(Image.open(img_path)).reshape(-1, 3).astype(np.float64)
        s += px.sum(0)
        s2 += (px * px).sum(0)
        n += len(px)
    mean = s / n
    std = np.sqrt(s2 / n - mean**2)
    np.testing.assert_allclose(mean, ds.card.mean, atol=0.01)
    np.testing.assert_allclose(std, ds.card.std, atol=0.01)
    print("synthetic train pixel frequencies:",
          dict(zip(ds.manifest["classes"], ds.manifest["pixel_frequency"]["train"])))
