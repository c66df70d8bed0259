"""Tune the learned method's post-processing (`GroupConfig`) on a validation split.

    python -m zoo.instances.tune --weights artifacts/checkpoints/panoptic_lite_fastdepthseg/synthetic/panoptic_lite-seed0/best.pt \\
        --data synthetic --split val
    python -m zoo.instances.tune --weights .../best.pt --semantic gt --thresholds 0.1 0.3 --min-votes 0 50

The network runs once per image; every combination of centre threshold, NMS window and grouping
mode is then scored on the kept outputs (PQ-things, all instances and the touching subset, as
`zoo.instances.evaluate`). Grouping modes: ``--min-votes 0`` is Panoptic-DeepLab's image-wide
nearest-centre grouping (with `--vote-radius`); N > 0 splits a connected component only between
centres that collect at least N of its votes (`GroupConfig.split_components` + `min_votes`).
Several --weights (seeds) are pooled: each configuration's PQ is the mean over them.

Tune on ``val`` and report on ``test`` (`zoo.instances.evaluate` with the chosen flags): the
thresholds must not see the images they are scored on. ``--write`` stores the best settings next
to each checkpoint (best.pt -> best.group.json, with how they were tuned); `zoo.instances.evaluate`
and `bench.run` then use them for that checkpoint (flags given on their command line still win).
Only settings tuned on the predicted semantic mask are written: that is the mask a deployment has.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from zoo.data import Preprocess
from zoo.instances.data import open_data
from zoo.instances.evaluate import load_model_for, predict
from zoo.instances.metrics import PQAccumulator, touching_instances
from zoo.instances.postprocess import GroupConfig, group_sidecar, panoptic_instances

OBJECTIVES = ("touching", "all")


@dataclass
class _Kept:
    """What grouping needs from one image, without the class logits (memory: ~2 MB at 360x480)."""

    semantic: np.ndarray
    heat: np.ndarray
    offset: np.ndarray
    gt_ids: np.ndarray
    gt_classes: np.ndarray
    void: np.ndarray
    touching: np.ndarray


def grid(thresholds: Sequence[float], nms_kernels: Sequence[int], min_votes: Sequence[int],
         vote_radius: float) -> list[GroupConfig]:
    """Every combination; min_votes 0 = image-wide grouping, N > 0 = component splitting."""
    return [GroupConfig(threshold=t, nms_kernel=k, vote_radius=vote_radius, split_components=v > 0, min_votes=v)
            for t, k, v in itertools.product(thresholds, nms_kernels, min_votes)]


def _keep_outputs(path: str, data: Any, semantic: str, gap: int, progress: bool) -> list[_Kept]:
    model, meta = load_model_for(path, data)
    pre = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else data.preprocess
    kept = []
    for i in tqdm(range(len(data.dataset)), desc=f"outputs of {Path(path).parent.name}", disable=not progress,
                  leave=False):
        s = data.dataset.load(i)
        out = predict(model, pre, s.image)
        c = data.num_classes
        sem = s.semantic if semantic == "gt" else out[:c].argmax(0).astype(np.uint8)
        kept.append(_Kept(sem, out[c].astype(np.float32), out[c + 1:].astype(np.float32), s.ids, s.classes,
                          s.semantic == data.ignore_index, touching_instances(s.ids, s.classes, gap=gap)))
    return kept


def score(kept: list[_Kept], cfg: GroupConfig, thing_ids: Sequence[int], names: Sequence[str],
          min_area: int = 0) -> dict[str, float]:
    """PQ-things (all, touching) of one grouping configuration on kept outputs."""
    acc = {s: PQAccumulator(thing_ids, names) for s in OBJECTIVES}
    for k in kept:
        ids, cls, _ = panoptic_instances(k.semantic, k.heat, k.offset, thing_ids, cfg)
        acc["all"].add(k.gt_ids, k.gt_classes, ids, cls, void=k.void, min_area=min_area)
        acc["touching"].add(k.gt_ids, k.gt_classes, ids, cls, void=k.void, counted=k.touching, min_area=min_area)
    return {s: acc[s].result().pq for s in OBJECTIVES}


def tune(weights: Sequence[str], *, data: str = "synthetic", data_root: str | None = None, split: str = "val",
         num_images: int | None = None, size: tuple[int, int] | None = None, semantic: str = "pred", configs: Sequence[GroupConfig] = (),
         objective: str = "touching", gap: int = 1, min_area: int = 0, threads: int | None = None,
         progress: bool = True) -> dict[str, Any]:
    """Score `configs` on `split`; returns {"rows": [...], "best": GroupConfig dict, ...}, rows best first."""
    from zoo.errors import UsageError

    if not weights:
        raise UsageError("--weights: give at least one instance checkpoint (python -m zoo.instances.train)")
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if semantic not in ("pred", "gt"):
        raise UsageError(f"--semantic must be pred or gt, got {semantic!r}")
    if threads:
        torch.set_num_threads(threads)
    ds = open_data(data, root=data_root, split=split, with_instances=True, num_images=num_images, size=size,
                   progress=progress)
    kept = [_keep_outputs(w, ds, semantic, gap, progress) for w in weights]
    configs = list(configs) or [GroupConfig()]
    rows = []
    for cfg in tqdm(configs, desc="configurations", disable=not progress, leave=False):
        per_seed = [score(k, cfg, ds.thing_ids, ds.thing_names, min_area) for k in kept]
        rows.append({"group": cfg.as_dict(),
                     **{s: statistics.fmean(r[s] for r in per_seed) for s in OBJECTIVES},
                     **{f"{s}_std": statistics.pstdev([r[s] for r in per_seed]) for s in OBJECTIVES}})
    rows.sort(key=lambda r: (-r[objective], -r["all" if objective == "touching" else "touching"]))
    return {"data": data, "split": split, "semantic": semantic, "images": len(ds.dataset), "weights": list(weights),
            "objective": objective, "min_area": min_area, "rows": rows, "best": rows[0]["group"]}


def write_sidecars(res: dict[str, Any]) -> list[Path]:
    """Store the best settings next to every tuned checkpoint (`group_sidecar`); returns the paths."""
    from zoo.errors import UsageError
    from zoo.io import write_json

    if res["semantic"] != "pred":
        raise UsageError("--write stores settings for deployment, where the semantic mask is predicted; "
                         "tune with --semantic pred (the default) to write them")
    best = res["rows"][0]
    tuned = {"data": res["data"], "split": res["split"], "images": res["images"], "semantic": res["semantic"],
             "objective": res["objective"], "min_area": res.get("min_area", 0), "pq_touching": best["touching"], "pq_all": best["all"],
             "weights": res["weights"], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    paths = []
    for w in res["weights"]:
        write_json(group_sidecar(w), {"group": GroupConfig.from_dict(best["group"]).as_dict(), "tuned": tuned})
        paths.append(group_sidecar(w))
    return paths


def format_table(res: dict[str, Any], top: int = 15) -> str:
    from tabulate import tabulate

    body = []
    for r in res["rows"][:top]:
        g = r["group"]
        mode = f"split, min votes {g['min_votes']}" if g["split_components"] else f"image-wide, radius {g['vote_radius']:g}"
        body.append([g["threshold"], g["nms_kernel"], mode, 100 * r["touching"], 100 * r["all"]])
    head = (f"{res['data']}/{res['split']}: {res['images']} images, {len(res['weights'])} model(s), semantic mask "
            f"{'predicted' if res['semantic'] == 'pred' else 'ground truth (oracle)'}"
            + (f"; objects >= {res['min_area']} px" if res.get("min_area") else "")
            + f"; best {top} of {len(res['rows'])} "
            f"by PQ {res['objective']}")
    return head + "\n" + tabulate(body, headers=["threshold", "NMS", "grouping", "PQ touching", "PQ all"],
                                  floatfmt=("g", "d", "", ".2f", ".2f"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.instances.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True, help="instance checkpoints (seeds are averaged)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--split", default="val")
    p.add_argument("--num-images", type=int)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="synthetic image size")
    p.add_argument("--semantic", choices=("pred", "gt"), default="pred")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--nms-kernels", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--min-votes", type=int, nargs="+", default=[0, 20, 50, 100],
                   help="0: image-wide grouping; N: split components between centres with >= N votes")
    p.add_argument("--vote-radius", type=float, default=GroupConfig.vote_radius, help="image-wide grouping only")
    p.add_argument("--objective", choices=OBJECTIVES, default="touching")
    p.add_argument("--gap", type=int, default=1)
    p.add_argument("--min-area", type=int, default=0, help="score objects of >= this many px (zoo.instances.evaluate)")
    p.add_argument("--top", type=int, default=15, help="rows to print")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", metavar="PATH", help="also write every row as JSON")
    p.add_argument("--write", action="store_true",
                   help="store the best settings next to each checkpoint (<stem>.group.json), used by "
                        "zoo.instances.evaluate and bench.run")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from zoo.errors import user_errors

    with user_errors():
        from zoo.errors import UsageError

        if min(args.nms_kernels) < 1 or min(args.min_votes) < 0 or args.min_area < 0:
            raise UsageError("--nms-kernels must be >= 1, --min-votes and --min-area >= 0")
        if args.write and args.semantic != "pred":
            raise UsageError("--write stores settings for deployment, where the semantic mask is predicted; "
                             "drop --semantic gt to write them")
        res = tune(args.weights, data=args.data, data_root=args.data_root, split=args.split,
                   num_images=args.num_images, size=tuple(args.size) if args.size else None, semantic=args.semantic,
                   configs=grid(args.thresholds, args.nms_kernels, args.min_votes, args.vote_radius),
                   objective=args.objective, gap=args.gap, min_area=args.min_area, threads=args.threads,
                   progress=not args.no_progress)
    if args.json:
        from zoo.io import write_json

        write_json(Path(args.json), res)
    print(format_table(res, args.top))
    b = res["best"]
    flags = (f"--threshold {b['threshold']:g} --nms-kernel {b['nms_kernel']}"
             + (f" --split-components --min-votes {b['min_votes']}" if b["split_components"]
                else f" --no-split-components --vote-radius {b['vote_radius']:g}"))
    print(f"best: {flags}  (zoo.instances.evaluate flags; report on a split the tuning did not see)")
    if args.write:
        with user_errors():
            for path in write_sidecars(res):
                print(f"wrote {path} (zoo.instances.evaluate and bench.run use it for that checkpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
