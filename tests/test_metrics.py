import numpy as np
import pytest
import torch

from zoo.metrics import ConfusionMatrix


def test_miou_matches_torchmetrics_with_ignore_index():
    pytest.importorskip("torchmetrics", reason="torchmetrics is a [dev] extra")
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(0)
    n = 11
    conf = ConfusionMatrix(n, ignore_index=255)
    ref = MulticlassJaccardIndex(num_classes=n, ignore_index=255, average="macro")
    for _ in range(4):
        target = rng.integers(0, n, size=(2, 40, 50))
        target[:, :5] = 255  # ignored rows
        pred = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, n, target.shape))
        conf.update(pred, target)
        ref.update(torch.as_tensor(pred), torch.as_tensor(target))
    assert conf.scores().miou == pytest.approx(float(ref.compute()), abs=1e-6)


def test_hand_computed_iou_and_accuracy():
    conf = ConfusionMatrix(2, ignore_index=255)
    target = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 1, 1, 1, 0])
    conf.update(pred, target)
    s = conf.scores()
    # class 0: tp 1, fn 1, fp 0 -> 1/2; class 1: tp 2, fp 1 -> 2/3
    assert s.per_class_iou == pytest.approx([0.5, 2 / 3])
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert s.pixel_accuracy == pytest.approx(3 / 4)


def test_out_of_range_prediction_counts_as_wrong():
    # A 12-output model predicting its void channel (11) on an 11-class dataset.
    conf = ConfusionMatrix(2, ignore_index=255)
    conf.update(np.array([0, 11, 1]), np.array([0, 0, 1]))
    s = conf.scores()
    assert s.per_class_iou == pytest.approx([0.5, 1.0])
    assert s.pixel_accuracy == pytest.approx(2 / 3)


def test_absent_class_is_nan_and_excluded():
    conf = ConfusionMatrix(3)
    conf.update(np.array([0, 1]), np.array([0, 1]))
    s = conf.scores()
    assert np.isnan(s.per_class_iou[2]) and s.miou == pytest.approx(1.0)


def test_bad_label_value_raises():
    conf = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label value 7"):
        conf.update(np.array([0]), np.array([7]))
