"""Convert a YOLOv5 checkpoint between the 6x6 stride-2 stem (v6.0+) and the Focus stem (v5.0-).

The two stems compute the same function. Focus splits the image into its four pixel phases
(space-to-depth, 3 -> 12 channels, half resolution) and runs a 3x3 stride-1 convolution; a 6x6
stride-2 convolution with padding 2 reads the same 6x6 window of the image for each output pixel.
With phase (dy, dx) of the official order (0,0), (1,0), (0,1), (1,1) at channel block p:

    W6x6[o, c, 2u + dy, 2v + dx] == W3x3[o, 3p + c, u, v]      u, v in 0..2

and padding 1 on the half-resolution phases is padding 2 on the image. So the official v6
weights give a Focus network with the same outputs (up to float summation order), which isolates
the deployment question of issue #7, "what does the Focus stem cost on each backend?", from
accuracy: `bench.run` both checkpoints and compare latency at equal mAP.

    python -m zoo.det.stem --weights ../shared/weights/yolov5n.pt --to focus --out artifacts/weights/yolov5n-focus.pt
    python -m bench.run --model yolov5n --data coco --data-root ../shared/data/coco-tiny \\
        --weights artifacts/weights/yolov5n-focus.pt --quant fp32 --backend torch onnxruntime
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoints import CheckpointError, load_weights, save_checkpoint

# Phase order of `zoo.det.yolov5.Focus` (the official one): channel block p holds x[..., dy::2, dx::2].
PHASES: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (1, 1))
# State-dict prefix of the stem's Conv-BN-act block in each layout.
STEM_PREFIX = {"conv6x6": "model.0.", "focus": "model.0.conv."}


def conv6x6_to_focus(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 6, 6) stride-2 kernel -> the (O, 4C, 3, 3) kernel of the Focus stem's convolution."""
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (6, 6):
        raise ValueError(f"expected an (O, C, 6, 6) kernel, got {tuple(weight.shape)}")
    return torch.cat([weight[:, :, dy::2, dx::2] for dy, dx in PHASES], dim=1).contiguous()


def focus_to_conv6x6(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of `conv6x6_to_focus`: (O, 4C, 3, 3) -> (O, C, 6, 6)."""
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3) or weight.shape[1] % 4:
        raise ValueError(f"expected an (O, 4C, 3, 3) kernel, got {tuple(weight.shape)}")
    o, c4 = weight.shape[:2]
    c = c4 // 4
    out = weight.new_zeros(o, c, 6, 6)
    for p, (dy, dx) in enumerate(PHASES):
        out[:, :, dy::2, dx::2] = weight[:, p * c:(p + 1) * c]
    return out


def convert_state(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """A YOLOv5 state dict with stem `src` rewritten for stem `dst` (other keys unchanged)."""
    if src not in STEM_PREFIX or dst not in STEM_PREFIX:
        raise ValueError(f"stems are {sorted(STEM_PREFIX)}, got {src!r} -> {dst!r}")
    if src == dst:
        return dict(state)
    old, new = STEM_PREFIX[src], STEM_PREFIX[dst]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(old):
            out[key] = value
            continue
        rest = key[len(old):]
        if rest == "conv.weight":
            value = conv6x6_to_focus(value) if dst == "focus" else focus_to_conv6x6(value)
        out[new + rest] = value
    return out


def convert_checkpoint(model: str, weights: str | Path, dst: str) -> tuple[dict[str, Any], float]:
    """Read `weights` (official or edgezoo) for `model`, convert its stem to `dst` and check the
    outputs of both networks on a seeded input; returns (checkpoint dict, max abs output difference)."""
    from zoo.registry import get_entry

    entry = get_entry(model)
    if entry.name not in ("yolov5n", "yolov5s"):
        raise ValueError(f"zoo.det.stem converts YOLOv5 checkpoints; --model must be yolov5n or yolov5s, not {model!r}")
    loaded = load_weights(entry, weights, num_classes=80)
    net = loaded.model.eval()
    src = net.build_kwargs["stem"]
    if src == dst:
        raise CheckpointError(f"{weights} already has the {dst!r} stem; nothing to convert")
    state = convert_state(net.state_dict(), src, dst)
    kwargs = {**net.build_kwargs, "stem": dst}
    other = entry.build(num_classes=loaded.num_classes, **kwargs).eval()
    other.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((net(x) - other(x)).abs().max())
    meta = {k: v for k, v in loaded.meta.items() if k not in ("portable_from",)}
    meta.update({"model": entry.name, "num_classes": loaded.num_classes, "build_kwargs": kwargs,
                 "preprocess": loaded.preprocess or meta.get("preprocess"),
                 "stem_converted_from": {"file": str(weights), "sha256": loaded.sha256, "stem": src,
                                         "max_abs_output_diff": diff}})
    return {"model": state, "meta": meta}, diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zoo.det.stem", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m zoo.det.stem --weights ../shared/weights/yolov5n.pt --to focus "
               "--out artifacts/weights/yolov5n-focus.pt")
    p.add_argument("--model", default="yolov5n", help="yolov5n or yolov5s (default yolov5n)")
    p.add_argument("--weights", required=True, help="official ultralytics .pt or an edgezoo YOLOv5 checkpoint")
    p.add_argument("--to", required=True, choices=sorted(STEM_PREFIX), help="stem of the written checkpoint")
    p.add_argument("--out", required=True, help="checkpoint to write (atomically)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest output difference accepted between the two networks (default 1e-3)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ckpt, diff = convert_checkpoint(args.model, args.weights, args.to)
    except (CheckpointError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not diff <= args.tolerance:
        print(f"error: the converted network's outputs differ by {diff:.3g} (> --tolerance {args.tolerance}); "
              "nothing written", file=sys.stderr)
        return 1
    sha = save_checkpoint(args.out, ckpt)
    print(f"wrote {args.out} ({args.to} stem, sha256 {sha[:12]}); largest output difference vs the source "
          f"network on a seeded 256x320 input: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
