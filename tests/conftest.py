"""Shared fixtures: a tiny CamVid-layout data set and the path of ../shared (absent on users' machines)."""
from __future__ import annotations

import os
from pathlib import Path

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests train and cache their own tiny checkpoints: the repository's kept CamVid weights
# (trained/, found by zoo.api.find_fp32_checkpoint) must not stand in for them, here or in the
# subprocesses tests start. tests/test_campaign.py checks the lookup with a trained/ of its own.
os.environ["EDGEZOO_TRAINED"] = ""


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} absent (../shared is only on the project's machines)")
    return path


def write_segnet_split(root: Path, split: str, count: int, hw=(64, 96), seed=0) -> None:
    """Images whose colour determines the class, so a tiny network can learn something."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    h, w = hw
    colours = rng.integers(0, 255, size=(12, 3))
    for i in range(count):
        label = np.full((h, w), 3, np.uint8)  # road
        label[: h // 3] = 0  # sky
        for _ in range(4):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            label[y : y + rng.integers(4, 16), x : x + rng.integers(4, 16)] = rng.integers(1, 12)
        image = colours[label].astype(np.int16) + rng.integers(-20, 20, size=(h, w, 3))
        name = f"img_{i:03d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / name)
        Image.fromarray(label).save(root / f"{split}annot" / name)


@pytest.fixture(scope="session")
def tiny_camvid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    write_segnet_split(root, "train", 8, seed=1)
    write_segnet_split(root, "val", 3, seed=2)
    return root


@pytest.fixture
def artifacts(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "artifacts"
    monkeypatch.setenv("EDGEZOO_ARTIFACTS", str(path))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never touch the user's ~/.cache; the synthetic set is generated in a temp dir.
    if "EDGEZOO_CACHE" not in os.environ:
        monkeypatch.setenv("EDGEZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def calibrate_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm realistic running statistics (one train-mode pass over random images).

    With freshly initialised statistics (mean 0, var 1) deep residual nets produce logits in the
    thousands, where float32 rounding alone exceeds any absolute ONNX tolerance.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 128, 128))
    return model.eval()


def assert_onnx_matches_torch(model: nn.Module, hw: tuple[int, int], atol: float = 1e-3) -> None:
    """Export (opset 17) and check ONNX Runtime's logits against PyTorch's on one input."""
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, *hw)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["logits"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert onnx_out.shape == tuple(ref.shape)
    assert float(abs(torch.from_numpy(onnx_out) - ref).max()) < atol
