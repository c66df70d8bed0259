"""Print the zoo table: every registered network with counted and published figures.

    python -m zoo.list            # Markdown table
    python -m zoo.list --csv
"""
from __future__ import annotations

import argparse
import sys


def zoo_table(num_classes: int = 19) -> list[dict]:
    from zoo.profile import count_gmacs, count_params
    from zoo.registry import get_entry, list_aliases, list_models

    aliases = list_aliases()
    rows = []
    for name in list_models():
        entry = get_entry(name)
        kwargs = {"aux": False} if entry.aux_weights else {}
        net = entry.build(num_classes=num_classes, **kwargs)
        pub = entry.published
        # Detection networks need sides divisible by 32; 360x480 becomes 384x480 (the letterbox
        # a 480x360 frame gets), 1024x2048 is already a multiple.
        small = (360, 480) if entry.task == "segmentation" else (384, 480)
        rows.append({
            "name": name,
            "aliases": ", ".join(sorted(a for a, n in aliases.items() if n == name)),
            "task": entry.task,
            f"params M ({num_classes} cl.)": round(count_params(net) / 1e6, 3),
            "GMACs 1024x2048": round(count_gmacs(net, (1024, 2048)), 2),
            "GMACs 360x480 (det: 384x480)": round(count_gmacs(net, small), 2),
            "published params M": f"{pub.params_m} ({pub.num_classes} cl.)",
            "published GMACs": f"{pub.gmacs} @{pub.gmacs_hw[0]}x{pub.gmacs_hw[1]}" if pub.gmacs else "-",
            "published accuracy": _published_accuracy(pub),
            "known deviation": "; ".join(d for d in (pub.params_deviation, pub.gmacs_deviation) if d) or "-",
            "source": pub.source,
            "trained weights (val)": trained_summary(name),
        })
    return rows


def trained_summary(model: str) -> str:
    """The repository's kept weights of `model` (trained/<model>/<dataset>/<recipe>/): per
    dataset and recipe, the selected epoch's val score, and the training's progress when it is
    not finished, e.g. "camvid/ddrnet: mIoU 66.63 (epoch 190 of 220)"."""
    import json

    from zoo.checkpoints import trained_dir

    root = trained_dir()
    if root is None or not (root / model).is_dir():
        return "-"
    parts = []
    for best in sorted((root / model).glob("*/*/best.json")):
        try:
            info = json.loads(best.read_text())
            last = json.loads(best.with_name("last.json").read_text()) if best.with_name("last.json").is_file() else {}
        except ValueError:
            continue
        metrics = info.get("metrics") or {}
        score = (f"mIoU {100 * metrics['miou']:.2f}" if metrics.get("miou") is not None
                 else f"mAP50-95 {100 * metrics['map']:.2f}" if metrics.get("map") is not None else "no score")
        planned = (last.get("recipe") or info.get("recipe") or {}).get("epochs")
        done = last.get("epoch", info.get("epoch"))
        progress = f"epoch {info.get('epoch')}" + (f" of {planned}" if planned else "")
        if planned and done is not None and done < planned:
            progress += f"; training at {done}/{planned}"
        parts.append(f"{best.parent.parent.name}/{best.parent.name}: {score} ({progress})")
    return "; ".join(parts) or "-"


def _published_accuracy(pub) -> str:
    if pub.miou is not None:
        return f"mIoU {pub.miou} {pub.miou_note}".strip()
    if getattr(pub, "map50_95", None) is not None:
        return f"mAP50-95 {pub.map50_95} {pub.map_note}".strip()
    if getattr(pub, "pq", None) is not None:
        return f"PQ {pub.pq} {pub.pq_note}".strip()
    return "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.list", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", action="store_true")
    p.add_argument("--num-classes", type=int, default=19)
    args = p.parse_args(argv)
    import pandas as pd

    df = pd.DataFrame(zoo_table(args.num_classes))
    print(df.to_csv(index=False) if args.csv else df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
