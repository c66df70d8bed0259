"""Class weights (zoo.class_weights) and segmentation losses (zoo.losses), CPU only."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo import class_weights as cw
from zoo.losses import LOSSES, OhemCrossEntropy, build_loss

COUNTS = np.array([5e6, 2e5, 5e3, 1e6, 40.0])  # long-tailed pixel counts, C = 5


@pytest.mark.parametrize("fn", [
    lambda n: cw.effective_number(n, 0.999), lambda n: cw.effective_number(n, 0.5),
    lambda n: cw.effective_number(n), cw.inverse_freq, cw.median_freq, cw.enet_log,
])
def test_weights_sum_to_number_of_classes_and_rarer_never_smaller(fn):
    w = fn(COUNTS)
    assert w.shape == (5,) and np.all(np.isfinite(w)) and np.all(w > 0)
    assert w.sum() == pytest.approx(5.0)
    order = np.argsort(COUNTS)  # rarest first
    assert np.all(np.diff(w[order]) <= 1e-12), w[order]


def test_median_freq_with_totals_sums_to_c():
    w = cw.median_freq(COUNTS, totals=np.array([1e7, 4e6, 1e6, 8e6, 2e5]))
    assert w.sum() == pytest.approx(5.0) and np.all(np.isfinite(w))


def test_rarer_class_never_smaller_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = np.floor(10 ** rng.uniform(0, 7, size=8))
        order = np.argsort(n, kind="stable")
        for w in (cw.effective_number(n, float(rng.uniform(0, 0.99999))), cw.effective_number(n),
                  cw.inverse_freq(n), cw.median_freq(n), cw.enet_log(n)):
            assert np.all(np.diff(w[order]) <= 1e-9)


def test_beta_zero_gives_ones():
    np.testing.assert_allclose(cw.effective_number(COUNTS, 0.0), np.ones(5))


def test_beta_to_one_tends_to_normalised_inverse_frequency():
    np.testing.assert_allclose(cw.effective_number(COUNTS, 1 - 1e-12), cw.inverse_freq(COUNTS), rtol=1e-4)


def test_matches_the_paper_formula():
    beta, n = 0.99, np.array([10.0, 100.0, 1000.0])
    raw = (1 - beta) / (1 - beta ** n)
    np.testing.assert_allclose(cw.effective_number(n, beta), raw / raw.sum() * 3, rtol=1e-10)


def test_saturation_with_pixel_counts_and_default_beta():
    n = np.array([3e6, 1e6, 5e5, 2e5])  # pixel counts ~1e6
    saturated = cw.effective_number(n, 0.99)
    np.testing.assert_allclose(saturated, np.ones(4), atol=1e-9)  # the documented pitfall
    docs = cw.effective_number([5e6, 2e5, 5e3], 0.999)  # the docs' worked example
    np.testing.assert_allclose(docs, [0.998, 0.998, 1.005], atol=2e-3)
    beta = cw.default_beta(n)
    assert beta == pytest.approx(1 - 1 / 3e6)
    assert all(beta ** x >= 0.367 for x in n)  # no class saturated (beta**n >= ~1/e)
    w = cw.effective_number(n)
    assert np.all(np.diff(w) > 0.1)  # distinct and increasing towards the rare classes
    assert w[-1] / w[0] > 5


def test_default_beta_is_scale_invariant_and_references():
    a = cw.effective_number(COUNTS)
    b = cw.effective_number(COUNTS * 1000)
    np.testing.assert_allclose(a, b, rtol=1e-3)
    assert cw.default_beta(COUNTS, "median") == pytest.approx(1 - 1 / 2e5)
    assert cw.default_beta(COUNTS, "sum") == pytest.approx(1 - 1 / COUNTS.sum())
    assert cw.default_beta(COUNTS, 100) == pytest.approx(0.99)
    assert cw.default_beta([1, 1]) == 0.0
    with pytest.raises(ValueError):
        cw.default_beta(COUNTS, "mode")


def test_absent_class_gets_rarest_weight_and_bad_input_fails():
    n = np.array([100.0, 10.0, 0.0])
    for w in (cw.effective_number(n, 0.9), cw.inverse_freq(n), cw.median_freq(n), cw.enet_log(n)):
        assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(3)
        assert w[2] == pytest.approx(w[1])
    for bad in ([0, 0], [-1, 2], [], [np.nan, 1]):
        with pytest.raises(ValueError):
            cw.inverse_freq(bad)
    with pytest.raises(ValueError):
        cw.effective_number([1, 2], 1.0)
    with pytest.raises(ValueError):
        cw.compute_weights("focal", [1, 2])


def test_enet_and_median_formulas():
    n = np.array([70.0, 20.0, 10.0])
    raw = 1 / np.log(1.02 + n / 100)
    np.testing.assert_allclose(cw.enet_log(n), raw / raw.sum() * 3)
    np.testing.assert_allclose(cw.enet_log(n, normalize=False), raw)
    totals = np.array([100.0, 50.0, 20.0])
    f = n / totals  # 0.7, 0.4, 0.5 -> median 0.5
    np.testing.assert_allclose(cw.median_freq(n, totals, normalize=False), 0.5 / f)


def test_enet_constant_is_selectable_and_validated():
    counts = [1000, 100, 10]
    espnet, enet = cw.compute_weights("enet:1.10", counts), cw.compute_weights("enet", counts)
    assert cw.parse_method("enet:1.10") == ("enet", {"c": 1.1})
    np.testing.assert_allclose(espnet, cw.enet_log(counts, c=1.10))
    # ESPNet's constant gives flatter weights than ENet's 1.02; rarer still means larger
    assert espnet[2] / espnet[0] < enet[2] / enet[0] and espnet[2] > espnet[1] > espnet[0]
    for bad in ("enet:x", "inverse:2", "nope"):
        with pytest.raises(ValueError):
            cw.parse_method(bad)


def test_bce_class_weights():
    w = cw.bce_class_weights([1000, 100, 10], beta=0.999)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert float(w.sum()) == pytest.approx(3, rel=1e-6) and w[0] < w[1] < w[2]
    w2 = cw.bce_class_weights(torch.tensor([1000, 100, 10]))
    assert torch.allclose(w2, torch.as_tensor(cw.effective_number([1000, 100, 10]), dtype=torch.float32))


# --------------------------------------------------------------------------------------------
# counting over a dataset + cache
# --------------------------------------------------------------------------------------------

def _expected_counts(ds, C):
    pix, img = np.zeros(C, np.int64), np.zeros(C, np.int64)
    for i in range(len(ds)):
        lab = ds[i].label
        h = np.bincount(lab[lab != 255], minlength=C)
        pix += h
        img += h > 0
    return pix, img


def test_class_weights_for_counts_once_and_caches(tiny_camvid, tmp_path, monkeypatch):
    from zoo.data import build_dataset, load_card
    card = load_card("camvid")
    C = card.num_classes
    ds = build_dataset("camvid", root=tiny_camvid, split="train")
    pix, img = _expected_counts(ds, C)
    w = cw.class_weights_for("camvid", root=tiny_camvid, method="inverse", num_classes=C,
                             cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(w.numpy(), cw.inverse_freq(pix), rtol=1e-6)
    files = list(tmp_path.glob("camvid-train-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["pixels"] == pix.tolist() and data["images"] == img.tolist()
    # second call: served from the cache (counting would fail)
    monkeypatch.setattr(cw, "count_classes", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    w_img = cw.class_weights_for("camvid", root=tiny_camvid, method="effective", source="images",
                                 beta=0.9, num_classes=C, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(w_img.numpy(), cw.effective_number(img, 0.9), rtol=1e-6)
    assert cw.class_weights_for("camvid", root=tiny_camvid, method="none", num_classes=C,
                                cache_dir=tmp_path) is None
    wm = cw.class_weights_for("camvid", root=tiny_camvid, method="median", num_classes=C,
                              cache_dir=tmp_path, progress=False)
    assert float(wm.sum()) == pytest.approx(C, rel=1e-5)
    with pytest.raises(ValueError):
        cw.class_weights_for("camvid", root=tiny_camvid, method="effective", source="boxes",
                             num_classes=C, cache_dir=tmp_path)


def test_cache_key_changes_with_files(tiny_camvid, tmp_path):
    from zoo.data import build_dataset
    a = build_dataset("camvid", root=tiny_camvid, split="train")
    b = build_dataset("camvid", root=tiny_camvid, split="val")
    assert cw.files_hash(a, num_classes=11, ignore_index=255) != cw.files_hash(b, num_classes=11, ignore_index=255)
    assert cw.files_hash(a, num_classes=11, ignore_index=255) != cw.files_hash(a, num_classes=12, ignore_index=255)


def test_instance_counts_from_maps_and_components():
    label = np.array([[0, 0, 1, 1],
                      [0, 0, 255, 1],
                      [2, 2, 0, 1],
                      [2, 0, 0, 0]], dtype=np.uint8)
    valid = label != 255
    # no instance map: 8-connected components of each class (0 is one blob, 1 one, 2 one)
    np.testing.assert_array_equal(cw._instance_counts(label, None, valid, 3), [1, 1, 1])
    inst = np.zeros_like(label, dtype=np.uint16)
    inst[label == 1] = 1
    inst[2, :2] = 2
    inst[3, 0] = 3
    inst[3, 1] = 3  # instance 3: one pixel of class 2, one of class 0 -> ties broken by order
    out = cw._instance_counts(label, inst, valid, 3)
    # instances: id 1 -> class 1, id 2 -> class 2, id 3 -> class 2 or 0 (a tie); nothing else
    # of class 2 or 1 is instance-less, class 0 has instance pixels only through id 3 (tie)
    assert out[1] == 1 and out[2] >= 1 and out.sum() == 3
    inst[3, :2] = 0  # now class 0 has no instance pixels: stuff, counted as 1 component
    np.testing.assert_array_equal(cw._instance_counts(label, inst, valid, 3), [1, 1, 1])


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------

def _batch(seed=0, C=4, hw=(6, 7), absent=None, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, *hw, generator=g, requires_grad=True)
    target = torch.randint(0, C, (2, *hw), generator=g)
    if absent is not None:
        target[target == absent] = (absent + 1) % C
    target[torch.rand(2, *hw, generator=g) < ignore_frac] = 255
    return logits, target


WEIGHTS = torch.tensor([0.5, 1.0, 1.5, 1.0])


def _make(name, weight):
    kw = {"min_kept": 10} if name == "ohem" else {}
    return build_loss(name, ignore_index=255, weight=weight, **kw)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("weight", [None, WEIGHTS])
@pytest.mark.parametrize("case", ["normal", "absent", "all_ignored"])
def test_finite_gradients(name, weight, case):
    logits, target = _batch(absent=2 if case == "absent" else None)
    if case == "all_ignored":
        target[:] = 255
    loss = _make(name, weight)(logits, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if case == "all_ignored":
        assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_finite_gradients_on_confident_logits(name):
    logits, target = _batch()
    safe = target.clamp(max=3)
    big = (F.one_hot(safe, 4).permute(0, 3, 1, 2).float() * 200).requires_grad_(True)
    kw = {"gamma": 0.5} if name == "cb_focal" else {}
    loss = build_loss(name, ignore_index=255, weight=WEIGHTS, **kw, **({"min_kept": 10} if name == "ohem" else {}))(big, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


def test_weighted_ce_matches_hand_computation():
    # one image, 1x3 pixels, 2 classes; third pixel ignored
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])
    target = torch.tensor([[[0, 1, 255]]])
    w = torch.tensor([0.25, 2.0])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(math.exp(1) / (1 + math.exp(1)))
    expected = (0.25 * ce0 + 2.0 * ce1) / 2  # paper: mean over the labelled pixels
    got = build_loss("cb_ce", ignore_index=255, weight=w)(logits, target)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    torch_mean = (0.25 * ce0 + 2.0 * ce1) / (0.25 + 2.0)  # F.cross_entropy's weighted mean
    assert float(build_loss("ce", ignore_index=255, weight=w)(logits, target)) == pytest.approx(torch_mean, rel=1e-6)
    assert float(build_loss("cb_ce", ignore_index=255)(logits, target)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_cb_focal_reduces_to_weighted_ce_at_gamma_zero_and_matches_hand_value():
    logits, target = _batch(seed=3)
    a = build_loss("cb_focal", ignore_index=255, weight=WEIGHTS, gamma=0.0)(logits, target)
    b = build_loss("cb_ce", ignore_index=255, weight=WEIGHTS)(logits, target)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    lg = torch.tensor([[[[1.0]], [[0.0]]]])
    p = math.exp(1) / (math.exp(1) + 1)
    got = build_loss("cb_focal", ignore_index=255, weight=torch.tensor([3.0, 1.0]), gamma=2.0)(lg, torch.tensor([[[0]]]))
    assert float(got.detach()) == pytest.approx(-3.0 * (1 - p) ** 2 * math.log(p), rel=1e-6)


@pytest.mark.parametrize("weight", [None, WEIGHTS])
def test_ohem_keeps_its_minimum(weight):
    logits, target = _batch(seed=1, hw=(16, 16))
    n_valid = int((target != 255).sum())
    for min_kept in (1, 7, 50, n_valid, n_valid + 100):
        loss = OhemCrossEntropy(thresh=0.0, min_kept=min_kept, weight=weight)  # nothing is "hard"
        value = loss(logits, target)
        assert loss.last_kept == min(min_kept, n_valid)
        assert torch.isfinite(value)
    # a confident batch: thresh 0.9 keeps only min_kept pixels, which are the least confident
    easy = (F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 10).requires_grad_(True)
    easy.data[0, :, 0, 0] = 0.0  # one uncertain pixel
    loss = OhemCrossEntropy(thresh=0.9, min_kept=5)
    loss(easy, target)
    assert loss.last_kept == 5
    # a hard batch keeps every pixel under the threshold (more than min_kept)
    loss = OhemCrossEntropy(thresh=1.1, min_kept=5)
    loss(logits, target)
    assert loss.last_kept == n_valid


def test_ohem_weighted_is_mean_of_weighted_pixel_losses():
    logits, target = _batch(seed=2)
    valid = target != 255
    value = OhemCrossEntropy(thresh=1.1, min_kept=1, weight=WEIGHTS)(logits, target).detach()
    per = F.cross_entropy(logits, target, weight=WEIGHTS, ignore_index=255, reduction="none")[valid]
    assert float(value) == pytest.approx(float(per.mean().detach()), rel=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_perfect_is_zero_and_wrong_is_positive(per_image):
    _, target = _batch(seed=4)
    safe = target.clamp(max=3)
    perfect = F.one_hot(safe, 4).permute(0, 3, 1, 2).float() * 50
    loss = build_loss("lovasz", ignore_index=255, per_image=per_image)
    assert float(loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot((safe + 1) % 4, 4).permute(0, 3, 1, 2).float() * 50
    assert float(loss(wrong, target)) > 0.9
    assert 0 < float(loss(torch.zeros_like(perfect), target)) < 1


def test_lovasz_matches_jaccard_on_hard_predictions():
    # With 0/1 probabilities the Lovasz extension equals 1 - IoU per class
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    logits = F.one_hot(pred, 2).permute(0, 3, 1, 2).float() * 100
    iou0, iou1 = 1 / 2, 2 / 3
    got = build_loss("lovasz", ignore_index=255)(logits, target)
    assert float(got) == pytest.approx(((1 - iou0) + (1 - iou1)) / 2, abs=1e-5)
    w = torch.tensor([3.0, 1.0])
    got_w = build_loss("lovasz", ignore_index=255, weight=w)(logits, target)
    assert float(got_w) == pytest.approx((3 * (1 - iou0) + (1 - iou1)) / 4, abs=1e-5)


def test_build_loss_errors_and_device_move():
    with pytest.raises(ValueError, match="valid losses"):
        build_loss("dice")
    with pytest.raises(TypeError):
        build_loss("ce", thresh=0.9)
    with pytest.raises(ValueError):
        build_loss("cb_ce", weight=torch.tensor([1.0, float("nan")]))
    m = build_loss("cb_focal", weight=WEIGHTS)
    assert "weight" in dict(m.named_buffers())
    assert build_loss("ce").weight is None
