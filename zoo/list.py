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
        rows.append({
            "name": name,
            "aliases": ", ".join(sorted(a for a, n in aliases.items() if n == name)),
            "task": entry.task,
            f"params M ({num_classes} cl.)": round(count_params(net) / 1e6, 3),
            "GMACs 1024x2048": round(count_gmacs(net, (1024, 2048)), 2),
            "GMACs 360x480": round(count_gmacs(net, (360, 480)), 2),
            "published params M": f"{pub.params_m} ({pub.num_classes} cl.)",
            "published GMACs": f"{pub.gmacs} @{pub.gmacs_hw[0]}x{pub.gmacs_hw[1]}" if pub.gmacs else "-",
            "published mIoU": f"{pub.miou} {pub.miou_note}".strip() if pub.miou else "-",
            "known deviation": "; ".join(d for d in (pub.params_deviation, pub.gmacs_deviation) if d) or "-",
            "source": pub.source,
        })
    return rows


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
