"""Train several zoo networks one after another on one dataset, resumably across sessions and
machines, and keep their weights in the repository (the FP32 half of the zoo table).

    python -m zoo.campaign --data camvid --data-root ../shared/data/camvid --plan
    python -m zoo.campaign --data camvid --data-root ../shared/data/camvid
    python -m zoo.campaign --data camvid --data-root ../shared/data/camvid --models pidnet_s ppliteseg_t
    python -m zoo.campaign --data camvid --export        # before a session or machine goes away
    python -m zoo.campaign --data camvid --data-root ../shared/data/camvid --bench results/camvid

Each network trains with its family's recipe or the one named as ``MODEL:RECIPE`` (`zoo.recipes`;
``--plan`` lists them) through `zoo.train.train(..., resume=True)`, in the order given (default:
the segmentation networks of the study, cheapest first; DeepLabV3+ ResNet-101 only on request).
Training state lives in the artifact cache (``<artifacts>/checkpoints/<model>/<data>/<recipe>/``),
which does not survive a machine change, so the campaign keeps a copy under ``--keep`` (default
``trained/``, committed):

- ``best.pt`` / ``best.json``: the weights with the best validation mIoU, as `zoo.train` wrote them;
- ``last.pt`` / ``last.json``: a portable copy of the training state (no optimizer moments,
  `zoo.checkpoints.portable_copy`), written every ``--export-every`` epochs, when its training
  stops with an exception (Ctrl-C included), and by ``--export``. Once a network has finished,
  only ``last.json`` is kept (its record of the finished schedule): ``best.pt`` holds the weights.

Kept weights above `zoo.checkpoints.KEPT_PART_BYTES` (90 MB; git hosts refuse 100 MB files) are
stored in parts (``best.pt.part000``, ...) that every loader joins and checks against the sidecar.

Training runs under bf16 autocast where the hardware computes bf16 natively (``--amp auto``, the
default; weights, optimizer state and losses stay float32): on the 2-core AVX512-BF16 EPYC a
training step (batch 8 at 288x384, channels-last) took 0.64 s instead of 1.04-1.34 s for PIDNet-S,
1.28 instead of 2.80 s for DDRNet-23, 0.59 instead of 0.85 s for LiteSeg and 1.00 instead of
1.12 s for PP-LiteSeg-T. Mixed-precision bf16 training matches float32 accuracy for convolutional
networks (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019). A run may move
between machines with and without bf16; every epoch's history entry records its precision.

With ``--bench OUT`` every finished network is then measured, one after the other, by a
`bench.run` sweep in a child process: ``--quant fp32 static dynamic qat --backend torch
onnxruntime openvino --profile release`` on the kept ``best.pt`` (QAT fine-tunes about a tenth of
the recipe's epochs first, in that process). The sweep skips cells already stored in OUT, so
finished networks cost a check, and it runs under the system allocator: TCMalloc is for
training, the benchmark measures what a user's process would use. A failed sweep is logged and
the campaign goes on. Regenerate the report afterwards (``python -m reports.build``).

A copy never replaces a kept state that is further along, nor kept weights that score higher.
A network whose recipe is finished is skipped. One whose kept state is ahead of the cache (a new
machine, or another machine's progress pulled with git) continues from the kept copy (Adam's
moments restart; a stale cache folder is moved aside). On the same machine a SIGKILL loses at
most the work since `zoo.train`'s last mid-epoch save (``--save-every`` seconds); on a new
machine, the work since the last kept copy (up to ``--export-every`` epochs: run ``--export``
before a session or machine goes away). A run started with another schedule length is skipped
with a note, never resumed under the new one (that would be a warm restart of the poly schedule).
"""
from __future__ import annotations

if __name__ == "__main__":  # TCMalloc before torch loads (zoo.hardware: 1.3x faster training steps)
    from zoo.hardware import reexec_with_tcmalloc

    reexec_with_tcmalloc()

import argparse
import shlex
import shutil
import subprocess
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.checkpoints import checkpoint_dir, portable_copy, remove_kept, resolve_weights, weights_exist, write_kept
from zoo.io import atomic_path, read_json_dict, write_json
from zoo.recipes import Recipe, get_recipe
from zoo.registry import get_entry

# The study's segmentation networks and the modern anchors, cheapest training step first
# (measured on the 2-core Xeon, batch 8 at 288x384, channels-last; see zoo.recipes).
DEFAULT_MODELS = (
    "fastdepthseg", "pidnet_s", "ppliteseg_t", "liteseg_mobilenetv2", "ddrnet23",
    "deeplabv3plus_mobilenetv2", "efficientps_b0_semantic", "bisenetv2", "ddrnet39",
    # ESPNet's default recipe (`espnet`) stays what its session-7 run and the QAT of the official
    # checkpoint used; the campaign trains it with the official class weighting.
    "espnet_p2q8:espnet_cw",
)
DEFAULT_KEEP = Path("trained")


@dataclass(frozen=True)
class Run:
    """One network of the campaign: where its training state lives and where it is kept."""

    model: str
    recipe: Recipe
    cache: Path          # <artifacts>/checkpoints/<model>/<data>/<recipe>/
    kept: Path           # <keep>/<model>/<data>/<recipe>/

    def state(self) -> dict[str, Any]:
        """Progress as recorded by the cached and kept `last.json` (the newer one counts) and the
        better of their `best.json`."""
        cache, kept = read_json_dict(self.cache / "last.json"), read_json_dict(self.kept / "last.json")
        newest = max((i for i in (cache, kept) if i), key=_progress, default=None)
        epoch = int(newest.get("epoch", 0)) if newest else 0
        started_with = ((newest or {}).get("recipe") or {}).get("epochs")
        # A run started with another schedule length: resuming it would jump the poly learning
        # rate (a warm restart), which the campaign never does silently. A state without its
        # recipe is treated the same way: its schedule is unknown.
        mismatch = None
        if newest is not None and started_with != self.recipe.epochs:
            mismatch = started_with if started_with is not None else "unknown"
        bests = [b for b in (read_json_dict(self.cache / "best.json"), read_json_dict(self.kept / "best.json")) if b]
        best = max(bests, key=_best_miou, default={})
        return {"epoch": epoch, "done": mismatch is None and epoch >= self.recipe.epochs,
                "best_miou": (best.get("metrics") or {}).get("miou"), "best_epoch": best.get("epoch"),
                "schedule_mismatch": mismatch,
                "cache_ahead": _progress(cache) > _progress(kept), "kept_ahead": _progress(kept) > _progress(cache)}


def _progress(info: dict[str, Any] | None) -> tuple[int, int]:
    """(epoch, step in epoch) of a `last.json`; (-1, -1) for none."""
    if not info:
        return (-1, -1)
    return (int(info.get("epoch", 0)), int(info.get("step_in_epoch", 0)))


def _best_miou(info: dict[str, Any] | None) -> float:
    miou = ((info or {}).get("metrics") or {}).get("miou")
    return -1.0 if miou is None else float(miou)


def plan(models: list[str], data: str, *, artifacts: str | Path | None = None,
         keep: str | Path = DEFAULT_KEEP, **recipe_overrides: Any) -> list[Run]:
    """The campaign's runs; `recipe_overrides` (epochs, batch_size, crop, eval_every) change every
    network's recipe (short trial campaigns, tests)."""
    runs = []
    for spec in models:
        name, _, recipe_name = spec.partition(":")
        entry = get_entry(name)
        if entry.task != "segmentation":
            raise ValueError(f"{entry.name} is a {entry.task} network; the campaign trains segmentation networks "
                             "(detection: python -m zoo.train --model yolov5n ...)")
        recipe = get_recipe(recipe_name or entry.default_recipe).with_overrides(**recipe_overrides)
        runs.append(Run(entry.name, recipe, checkpoint_dir(entry.name, data, recipe.name, artifacts),
                        Path(keep) / entry.name / data / recipe.name))
    return runs


def export(run: Run) -> list[Path]:
    """Copy the run's best weights and a portable copy of its training state to `run.kept`,
    atomically, never replacing a kept state that is further along or kept weights that score
    higher (a stale cache must not overwrite the work of another machine)."""
    written = []
    cache_best, kept_best = read_json_dict(run.cache / "best.json"), read_json_dict(run.kept / "best.json")
    if (run.cache / "best.pt").is_file() and cache_best and _best_miou(cache_best) >= _best_miou(kept_best):
        # The weights first (in parts when large: `write_kept`), then their sidecar: a kill in
        # between leaves a kept pair whose json describes weights at most as new as the file.
        write_kept(run.cache / "best.pt", run.kept / "best.pt")
        with atomic_path(run.kept / "best.json") as tmp:
            shutil.copyfile(run.cache / "best.json", tmp)
        written += [run.kept / "best.pt", run.kept / "best.json"]
    cache_last, kept_last = read_json_dict(run.cache / "last.json"), read_json_dict(run.kept / "last.json")
    if (run.cache / "last.pt").is_file() and _progress(cache_last) > _progress(kept_last):
        if _finished(cache_last, run.recipe):
            # A finished run is never resumed: its kept state is the sidecar alone, and best.pt holds
            # the weights that count. The final epoch's weights would double what a finished
            # network costs the repository (DDRNet-39: 2 x 130 MB).
            _keep_finished_record(run, cache_last)
            written.append(run.kept / "last.json")
        else:
            staging = run.cache / "portable" / "last.pt"  # with its sidecar, then kept (in parts when large)
            portable_copy(run.cache / "last.pt", staging)
            write_kept(staging, run.kept / "last.pt")
            with atomic_path(run.kept / "last.json") as tmp:
                shutil.copyfile(staging.with_suffix(".json"), tmp)
            shutil.rmtree(staging.parent)
            written.append(run.kept / "last.pt")
    kept_last = read_json_dict(run.kept / "last.json")
    if _finished(kept_last, run.recipe) and weights_exist(run.kept / "last.pt"):  # kept by an earlier version
        _keep_finished_record(run, kept_last)
        remove_kept(run.kept / "last.pt")
        written.append(run.kept / "last.json")
    return written


def _keep_finished_record(run: Run, last: dict[str, Any]) -> None:
    """The kept `last.json` of a finished run, which keeps no final-epoch weights."""
    write_json(run.kept / "last.json", {**last, "file": None, "weights_not_kept": "finished; best.pt holds the weights"})


def _finished(last: dict[str, Any] | None, recipe: Recipe) -> bool:
    """Whether a `last.json` records the whole of `recipe`'s schedule."""
    started_with = ((last or {}).get("recipe") or {}).get("epochs")
    return bool(last) and started_with == recipe.epochs and _progress(last)[0] >= recipe.epochs


def _seed_cache_from_kept(run: Run) -> bool:
    """When the kept state is further along than the cache (a new machine, or another machine's
    training pulled with git): continue from it. A stale cache folder is moved aside, not deleted."""
    if not run.state()["kept_ahead"] or not weights_exist(run.kept / "last.pt"):
        return False
    if run.cache.exists():
        run.cache.rename(run.cache.with_name(f"{run.cache.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}"))
    run.cache.mkdir(parents=True)
    for name in ("last.pt", "last.json", "best.pt", "best.json"):
        if weights_exist(run.kept / name):  # kept weights in parts: their joined (sha-checked) copy
            shutil.copyfile(resolve_weights(run.kept / name), run.cache / name)
    return True


def _resume_command(run: Run, data: str, data_root: str | Path | None, epochs: Any) -> str:
    root = f" --data-root {data_root}" if data_root else ""
    return (f"python -m zoo.train --model {run.model} --data {data}{root} --recipe {run.recipe.name} "
            f"--epochs {epochs} --resume")


BENCH_VARIANTS = ("fp32", "static", "dynamic", "qat")
BENCH_BACKENDS = ("torch", "onnxruntime", "openvino")


def bench_command(run: Run, *, data: str, data_root: str | Path | None, out: str | Path,
                  threads: int | None = None, profile: str = "release", progress: bool = True) -> list[str]:
    """The `bench.run` sweep that measures a finished network's kept weights (``--bench``)."""
    cmd = [sys.executable, "-m", "bench.run", "--model", run.model, "--weights", str(run.kept / "best.pt"),
           "--data", data]
    if data_root:
        cmd += ["--data-root", str(data_root)]
    if threads:
        cmd += ["--threads", str(threads)]
    if not progress:  # a QAT fine-tuning's bars would fill the campaign's log
        cmd += ["--no-progress"]
    return cmd + ["--quant", *BENCH_VARIANTS, "--backend", *BENCH_BACKENDS, "--profile", profile, "--out", str(out)]


def measure(run: Run, *, data: str, data_root: str | Path | None, out: str | Path, threads: int | None = None,
            progress: bool = True, log=print) -> int:
    """Run `bench_command` in a child process under the system allocator; returns its exit status."""
    from zoo.hardware import environment_without_tcmalloc

    cmd = bench_command(run, data=data, data_root=data_root, out=out, threads=threads, progress=progress)
    log(f"[campaign] {run.model}: measuring: {shlex.join(cmd)}")
    rc = subprocess.call(cmd, env=environment_without_tcmalloc())
    if rc != 0:
        log(f"[campaign] {run.model}: the benchmark sweep exited with status {rc}; the campaign goes on "
            f"(re-run it with the command above: stored cells are kept)")
    return rc


def train_campaign(runs: list[Run], *, data: str, data_root: str | Path | None, artifacts: str | Path | None = None,
                   threads: int | None = None, workers: int = 0, export_every: int = 10, amp: str = "auto",
                   progress: bool = True, bench_out: str | Path | None = None, log=print) -> list[dict[str, Any]]:
    """Train every unfinished run in order, and with `bench_out` measure each finished one
    (`measure`); returns one summary per run."""
    from zoo.train import TrainConfig, TrainHooks, train

    summaries = []
    for run in runs:
        state = run.state()
        if state["schedule_mismatch"] is not None:
            started = state["schedule_mismatch"]
            how = (f"continue it with {_resume_command(run, data, data_root, started)}" if started != "unknown"
                   else "its schedule length is not recorded")
            log(f"[campaign] {run.model}: its run started with a {started}-epoch schedule, the recipe now has "
                f"{run.recipe.epochs}; skipped ({how}, or move {run.cache} and {run.kept} away to start over)")
            summaries.append({"model": run.model, **state, "skipped": True})
            continue
        if state["done"]:
            if state["cache_ahead"]:  # finished, but the process ended before its final export
                export(run)
            log(f"[campaign] {run.model}: finished ({run.recipe.epochs} epochs, best val mIoU "
                f"{_pct(state['best_miou'])} at epoch {state['best_epoch']}); skipped")
            summary = {"model": run.model, **state, "skipped": True}
            if bench_out is not None:
                summary["bench_rc"] = measure(run, data=data, data_root=data_root, out=bench_out, threads=threads,
                                              progress=progress, log=log)
            summaries.append(summary)
            continue
        if _seed_cache_from_kept(run):
            log(f"[campaign] {run.model}: continuing from the kept copy {run.kept / 'last.pt'}")
        log(f"[campaign] {run.model}: recipe {run.recipe.name}, epoch {state['epoch']}/{run.recipe.epochs}")
        t0 = time.time()

        starts: list[float] = []  # when each epoch of this process began

        def on_epoch_start(model, epoch, epochs, run=run):
            starts.append(time.time())
            # A kept copy every `export_every` epochs (the cache's last.pt then holds exactly
            # `epoch` finished epochs). A failed copy must not stop the training.
            if export_every and epoch and epoch % export_every == 0:
                try:
                    export(run)
                except Exception as exc:  # noqa: BLE001 - logged, retried at the next export
                    log(f"[campaign] {run.model}: keeping a copy in {run.kept} failed ({exc}); training goes on")
                # ETA from the median epoch of this process (the first may have resumed mid-epoch;
                # the median leaves out epochs that stood paused, validation epochs barely count)
                durations = [b - a for a, b in zip(starts[1:], starts[2:])]
                if durations:
                    per_epoch = statistics.median(durations)
                    log(f"[campaign] {run.model}: epoch {epoch}/{epochs}, {per_epoch / 60:.2f} min per epoch here, "
                        f"~{(epochs - epoch) * per_epoch / 3600:.1f} h left for it")

        r = run.recipe
        try:
            result = train(TrainConfig(model=run.model, data=data, data_root=data_root, recipe=r.name,
                                       epochs=r.epochs, batch_size=r.batch_size, crop=r.crop,
                                       eval_every=r.eval_every, resume=True, artifacts=artifacts, threads=threads,
                                       workers=workers, amp=amp, progress=progress),
                           TrainHooks(on_epoch_start=on_epoch_start))
        finally:  # also on Ctrl-C or an error: keep what the cache has
            export(run)
        summary = {"model": run.model, **run.state(), "seconds": result["seconds"], "session_s": time.time() - t0}
        log(f"[campaign] {run.model}: done, best val mIoU {_pct(summary['best_miou'])} "
            f"(epoch {summary['best_epoch']}), {result['seconds'] / 3600:.2f} h of training; kept in {run.kept}")
        if bench_out is not None and summary["done"]:
            summary["bench_rc"] = measure(run, data=data, data_root=data_root, out=bench_out, threads=threads,
                                          progress=progress, log=log)
        summaries.append(summary)
    return summaries


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_plan(runs: list[Run]) -> str:
    lines = [f"{'model':28s} {'recipe':14s} {'epochs':>6s} {'done':>6s} {'best mIoU':>9s}  kept"]
    for run in runs:
        s = run.state()
        note = f"  (started with {s['schedule_mismatch']} epochs: skipped)" if s["schedule_mismatch"] else ""
        lines.append(f"{run.model:28s} {run.recipe.name:14s} {run.recipe.epochs:6d} {s['epoch']:6d} "
                     f"{_pct(s['best_miou']):>9s}  {run.kept}{note}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo.campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="camvid", help="dataset card (default camvid)")
    p.add_argument("--data-root", help="dataset folder (default: the card's)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                   help="networks in training order, each MODEL or MODEL:RECIPE (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (short trial campaigns)")
    p.add_argument("--keep", default=str(DEFAULT_KEEP), help="folder for the kept copies (default trained/)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0: as fast on 2 cores)")
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="bf16 autocast (default auto: where the CPU or GPU has native bf16; each epoch's record "
                        "says which precision trained it)")
    p.add_argument("--export-every", type=int, default=10, help="epochs between kept copies (0: only at the end)")
    p.add_argument("--plan", action="store_true", help="list the networks, recipes and progress; train nothing")
    p.add_argument("--export", action="store_true", help="write the kept copies of every started run now; train nothing")
    p.add_argument("--bench", metavar="OUT", help="measure every finished network with a bench.run sweep "
                   f"(--quant {' '.join(BENCH_VARIANTS)} --backend {' '.join(BENCH_BACKENDS)} --profile release) "
                   "into OUT, e.g. results/camvid")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zoo.errors import user_errors

    if args.epochs is not None and (args.keep == str(DEFAULT_KEEP) or not args.artifacts):
        print("error: a trial campaign (--epochs) must not write the real training folders: pass --keep DIR and "
              "--artifacts DIR", file=sys.stderr)
        return 2
    with user_errors(also=(KeyError, ValueError)):
        runs = plan(args.models, args.data, artifacts=args.artifacts, keep=args.keep, epochs=args.epochs)
        if args.plan:
            print(format_plan(runs))
            return 0
        if args.export:
            for run in runs:
                for path in export(run):
                    print(path)
            return 0
        train_campaign(runs, data=args.data, data_root=args.data_root, artifacts=args.artifacts,
                       threads=args.threads, workers=args.workers, export_every=args.export_every, amp=args.amp,
                       progress=not args.no_progress, bench_out=args.bench,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
