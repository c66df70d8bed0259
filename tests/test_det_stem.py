"""zoo.det.stem: the 6x6 stride-2 stem and the Focus stem are one function; conversion both ways."""
import pytest
import torch

from zoo.checkpoints import read_checkpoint, save_checkpoint
from zoo.det import stem
from zoo.det import yolov5 as y5


def test_kernel_conversion_is_a_bijection_and_places_each_phase():
    w = torch.randn(8, 3, 6, 6)
    v = stem.conv6x6_to_focus(w)
    assert v.shape == (8, 12, 3, 3)
    assert torch.equal(stem.focus_to_conv6x6(v), w)
    # Phase block 1 is (odd row, even column): its tap (u, v) = (2, 0) is the 6x6 tap (5, 0).
    assert torch.equal(v[:, 3:6, 2, 0], w[:, :, 5, 0])
    with pytest.raises(ValueError, match="6, 6"):
        stem.conv6x6_to_focus(torch.randn(8, 3, 3, 3))


def test_converted_network_computes_the_same_outputs():
    torch.manual_seed(0)
    conv6 = y5.yolov5n(num_classes=3).eval()
    focus = y5.yolov5n(num_classes=3, stem="focus").eval()
    focus.load_state_dict(stem.convert_state(conv6.state_dict(), "conv6x6", "focus"), strict=True)
    back = stem.convert_state(focus.state_dict(), "focus", "conv6x6")
    assert all(torch.equal(back[k], v) for k, v in conv6.state_dict().items())
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = conv6(x), focus(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3), float((a - b).abs().max())


def test_cli_writes_a_checkpoint_that_builds_the_focus_network(tmp_path, capsys):
    torch.manual_seed(0)
    net = y5.yolov5n(num_classes=3)
    src = tmp_path / "conv6.pt"
    save_checkpoint(src, {"model": net.state_dict(), "meta": {"model": "yolov5n", "num_classes": 3,
                                                               "build_kwargs": net.build_kwargs}})
    out = tmp_path / "focus.pt"
    assert stem.main(["--weights", str(src), "--to", "focus", "--out", str(out)]) == 0
    ckpt = read_checkpoint(out)
    assert ckpt["meta"]["build_kwargs"] == {"stem": "focus", "act": "silu"}
    assert ckpt["meta"]["stem_converted_from"]["stem"] == "conv6x6"
    assert "model.0.conv.conv.weight" in ckpt["model"]
    # Converting a Focus checkpoint to Focus again is refused with one line, and nothing is written.
    again = tmp_path / "again.pt"
    assert stem.main(["--weights", str(out), "--to", "focus", "--out", str(again)]) == 2
    assert "already has the 'focus' stem" in capsys.readouterr().err and not again.exists()
    assert stem.main(["--model", "ddrnet", "--weights", str(out), "--to", "focus", "--out", str(again)]) == 2
    assert "must be yolov5n or yolov5s" in capsys.readouterr().err and not again.exists()
