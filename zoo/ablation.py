"""Loss ablation for class imbalance (issue #8): one network, several losses, several seeds.

    python -m zoo.ablation --data camvid --data-root ../shared/data/camvid
    python -m zoo.ablation --data synthetic-lt
    python -m zoo.ablation --data camvid --data-root ../shared/data/camvid --dry-run
    python -m zoo.ablation --data camvid --data-root ../shared/data/camvid --report-only

Trains a fixed network (default ddrnet23_slim) under each loss of ``--losses`` with ``--seeds``
seeds through `zoo.train.train`, each run in its own checkpoint folder
``<artifacts>/checkpoints/<model>/<data>/ablation-<loss>-seed<s>-<settings hash>/``. Every run
resumes (``--resume``): re-running the command skips finished runs and continues a killed one
from its ``last.pt``. A finished run's record is also kept under ``<out>/runs/`` (commit it
with the report): on a new machine, whose artifact cache is empty, those runs stay finished.
The report (``ablation.md``, ``ablation.csv`` per loss,
``ablation_runs.csv`` per run, ``ablation.json``; written atomically under ``--out``) gives
overall, tail and head mIoU (mean and std over seeds) and per-class IoU per loss, marks the loss
that raises tail mIoU most without lowering overall mIoU, and says whether the issue's target is
met (a class-balanced loss raises tail mIoU by >= 2 points over plain CE without lowering overall
mIoU).

Losses (``--losses``; the training loss and the class weights used with it):

    ce            plain cross-entropy (unweighted)
    cb_ce         CE x effective-number weights, mean over labelled pixels (the paper's reduction)
    cb_focal      focal loss (gamma 2) x effective-number weights
    ohem          OHEM cross-entropy (the recipe's thresh / min_kept, else 0.9 / 131072)
    lovasz        Lovasz-softmax
    wce_inverse   CE x inverse-frequency weights (paper reduction)
    wce_median    CE x median-frequency weights (paper reduction)
    wce_enet      CE x ENet's 1/ln(1.02 + p) weights (paper reduction)
    LOSS:WEIGHTS  any zoo.losses loss with any zoo.class_weights method, e.g. ohem:effective
                  or cb_ce:enet:1.10 (ESPNet's weighting)

Tail classes: the ``--tail-k`` rarest classes of the *training* split by ``--tail-by`` counts
(default pixels; from `zoo.class_weights.cached_counts`); head: the others. On CamVid that is
Bicyclist, Pedestrian, Pole, Fence, SignSymbol. (Counted by *images* containing the class, the
CamVid tail would be Fence, Bicyclist, Pedestrian, Tree, Pavement: nearly every image has a pole
and a sign, they are rare in area, not in occurrence.)

Metrics are those of the final epoch on ``--val-split`` (validation runs only after the last
epoch: no checkpoint is selected on the split that is reported).

Budget (default: the model's recipe, 40 epochs of 256x320 crops, batch 8, fp32). Measured for
ddrnet23_slim on the 2-core development VM with one thread (``--threads 1 --workers 0``; CPU
seconds, because another training shared the cores): one CamVid epoch (45 steps) plus the
101-image validation took 54 CPU-s, i.e. ~1.0 CPU-s per step of which 0.69 s is the network's
forward/backward/AdamW and the rest data loading and augmentation; Lovasz-softmax adds 0.78 CPU-s
per call (a sort per class over 655k pixels) and is called twice per step (main and auxiliary
head); ``--amp bf16`` cuts the network's share to 0.44 s on CPUs with AVX512-BF16. On two idle
cores (2 threads plus one loader worker, ~1.6x one core) that gives, per 40-epoch run: CamVid
~19 min (ce, cb_ce, cb_focal, ohem, wce_*), ~50 min (lovasz); ``synthetic-lt`` (160 training
images, 20 steps per epoch) ~8.5 min and ~21 min. The full default command (7 losses x 3 seeds)
is therefore ~8-9 h on CamVid and ~3.7 h on synthetic-lt (~7.5 h with ``--epochs 80``, the same
number of iterations as CamVid's 40 epochs). Measured end to end on the 2-core AMD EPYC VM
(session 12, nothing else running): ce seed 0 took 35.7 min (0.9 min per epoch including the
final validation), about twice that estimate, so plan ~13 h for the default plan on CamVid. The
run start/end lines give an ETA from the measured seconds per epoch. With another job on the same cores use ``--threads 1``: two OpenMP
threads then mostly spin (measured: 241 instead of 54 CPU-s for the same epoch).
"""
from __future__ import annotations

if __name__ == "__main__":  # TCMalloc before torch loads (zoo.hardware: 1.3x faster training steps)
    from zoo.hardware import reexec_with_tcmalloc

    reexec_with_tcmalloc()

import argparse
import csv
import gc
import hashlib
import io
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from zoo.errors import UsageError
from zoo.io import read_json_dict

# Defaults sized for 2 CPU cores: see "Budget" in the module docstring.
DEFAULT_EPOCHS = 40
DEFAULT_CROP = (256, 320)
DEFAULT_MODEL = "ddrnet23_slim"
DEFAULT_SEEDS = 3
DEFAULT_TAIL_K = 5
BASELINE = "ce"
TARGET_POINTS = 2.0  # issue #8: tail mIoU +2 points over plain CE, overall mIoU not lower
SCHEMA = 1

# name -> (zoo.losses loss, zoo.class_weights method)
LOSS_VARIANTS: dict[str, tuple[str, str]] = {
    "ce": ("ce", "none"),
    "cb_ce": ("cb_ce", "effective"),
    "cb_focal": ("cb_focal", "effective"),
    "ohem": ("ohem", "none"),
    "lovasz": ("lovasz", "none"),
    "wce_inverse": ("cb_ce", "inverse"),
    "wce_median": ("cb_ce", "median"),
    "wce_enet": ("cb_ce", "enet"),
}
DEFAULT_LOSSES = ("ce", "cb_ce", "cb_focal", "ohem", "lovasz", "wce_inverse", "wce_median")


# --------------------------------------------------------------------------------------------
# configuration and plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossSpec:
    name: str       # as given (a LOSS_VARIANTS key or LOSS:WEIGHTS)
    loss: str       # zoo.losses name
    weights: str    # zoo.class_weights method ("none": unweighted)

    @property
    def class_balanced(self) -> bool:
        """Weighted by the effective number of samples (Cui et al. 2019): what the target names."""
        return self.weights == "effective"


def parse_loss(name: str) -> LossSpec:
    """A `LOSS_VARIANTS` name or ``LOSS:WEIGHTS``; anything else is a one-line `UsageError`."""
    from zoo.class_weights import METHODS, parse_method
    from zoo.losses import LOSSES

    key = name.strip()
    if key in LOSS_VARIANTS:
        return LossSpec(key, *LOSS_VARIANTS[key])
    if ":" in key:
        loss, _, weights = key.partition(":")  # weights may carry a parameter: cb_ce:enet:1.10
        try:
            parse_method(weights)
        except ValueError:
            weights = ""
        if loss in LOSSES and weights:
            return LossSpec(key, loss, weights)
    raise UsageError(
        f"unknown loss {name!r}; valid: {', '.join(LOSS_VARIANTS)}, or LOSS:WEIGHTS with LOSS in "
        f"{'|'.join(LOSSES)} and WEIGHTS in {'|'.join(METHODS)} (or enet:C)")


@dataclass
class AblationConfig:
    model: str = DEFAULT_MODEL
    data: str = "camvid"
    data_root: str | Path | None = None
    losses: Sequence[str] = DEFAULT_LOSSES
    seeds: int = DEFAULT_SEEDS
    first_seed: int = 0
    recipe: str | None = None                  # default: the model's recipe
    epochs: int | None = None                  # default: DEFAULT_EPOCHS
    batch_size: int | None = None              # default: the recipe's
    crop: tuple[int, int] | None = None        # default: DEFAULT_CROP
    lr: float | None = None
    beta: float | None = None                  # None: zoo.class_weights.default_beta
    count_source: str = "pixels"               # counts behind the class weights
    tail_k: int = DEFAULT_TAIL_K
    tail_by: str = "pixels"                    # counts that rank the classes for the tail
    val_split: str = "val"
    out: str | Path | None = None              # default: reports/ablation/<data>-<model>
    artifacts: str | Path | None = None
    workers: int = 1
    threads: int | None = None
    amp: str = "none"
    progress: bool = False                     # zoo.train's progress bars (per-epoch lines otherwise)
    command: str = ""                          # the command line, for the report

    def resolved(self) -> "AblationConfig":
        """Defaults filled in and validated (raises UsageError / UnknownModelError / DataError)."""
        from zoo.class_weights import SOURCES
        from zoo.data import load_card
        from zoo.recipes import get_recipe
        from zoo.registry import get_entry

        entry = get_entry(self.model)
        if entry.task != "segmentation":
            raise UsageError(f"model {entry.name!r} is a {entry.task} network; the ablation trains "
                             "segmentation networks")
        card = load_card(self.data)
        if card.task != "segmentation":
            raise UsageError(f"dataset {card.name!r} is a {card.task} dataset; use a segmentation "
                             "card (camvid, synthetic, synthetic-lt, cityscapes)")
        recipe = self.recipe or entry.default_recipe
        try:
            get_recipe(recipe)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        specs = [parse_loss(n) for n in self.losses]
        if not specs:
            raise UsageError("--losses is empty")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UsageError(f"--losses lists a loss twice: {', '.join(names)}")
        if self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {self.seeds}")
        for opt, value in (("--count-source", self.count_source), ("--tail-by", self.tail_by)):
            if value not in SOURCES:
                raise UsageError(f"{opt} {value!r} is not one of {', '.join(SOURCES)}")
        if not 1 <= self.tail_k < card.num_classes:
            raise UsageError(f"--tail-k must be in 1..{card.num_classes - 1}, got {self.tail_k}")
        epochs = self.epochs if self.epochs is not None else DEFAULT_EPOCHS
        if epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {epochs}")
        out = Path(self.out) if self.out else Path("reports") / "ablation" / f"{card.name}-{entry.name}"
        return AblationConfig(**{**asdict(self), "model": entry.name, "data": card.name,
                                 "losses": tuple(names), "recipe": recipe, "epochs": epochs,
                                 "crop": tuple(self.crop) if self.crop else DEFAULT_CROP,
                                 "out": out})


@dataclass(frozen=True)
class RunSpec:
    index: int
    loss: LossSpec
    seed: int
    fingerprint: str
    run_name: str
    run_dir: Path
    kept: Path | None = None   # copy of a finished run's record next to the report (see `run_result`)


def _fingerprint(cfg: AblationConfig, spec: LossSpec) -> str:
    """Hash of everything that changes a run's result (the loss and seed are in the name)."""
    root = str(Path(cfg.data_root).expanduser().resolve()) if cfg.data_root else None
    key: dict[str, Any] = {
        "model": cfg.model, "data": cfg.data, "data_root": root, "recipe": cfg.recipe,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "crop": list(cfg.crop or ()),
        "lr": cfg.lr, "amp": cfg.amp, "val_split": cfg.val_split, "loss": spec.loss,
        "weights": spec.weights,
    }
    if spec.weights != "none":
        key.update(beta=cfg.beta, count_source=cfg.count_source)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def plan(cfg: AblationConfig) -> list[RunSpec]:
    """Every (loss, seed) run of a resolved config, losses outermost."""
    from zoo.checkpoints import checkpoint_dir

    runs = []
    for spec in (parse_loss(n) for n in cfg.losses):
        fp = _fingerprint(cfg, spec)
        safe = spec.name.replace(":", "+")
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            name = f"ablation-{safe}-seed{seed}-{fp}"
            runs.append(RunSpec(len(runs), spec, seed, fp, name,
                                checkpoint_dir(cfg.model, cfg.data, name, cfg.artifacts),
                                Path(cfg.out) / "runs" / f"{name}.json" if cfg.out else None))
    return runs


RESULT_FILE = "ablation_run.json"


def run_result(run: RunSpec) -> dict[str, Any] | None:
    """The run's record: the one in its checkpoint folder, else the copy kept next to the report.

    A 40-epoch CamVid run takes ~20 min on 2 CPU cores and the artifact cache does not survive a
    change of machine; the copy under ``<out>/runs/`` (a few kB, meant to be committed with the
    report) keeps a finished run finished, so the ablation goes on across machines."""
    rec = read_json_dict(run.run_dir / RESULT_FILE)
    if rec is None and run.kept is not None:
        rec = read_json_dict(run.kept)
    return rec


def run_state(run: RunSpec, epochs: int) -> tuple[str, int]:
    """("done" | "partial" | "failed" | "todo", epochs finished)."""
    rec = run_result(run)
    if rec and rec.get("fingerprint") == run.fingerprint and rec.get("status") == "ok":
        return "done", epochs
    last = read_json_dict(run.run_dir / "last.json")
    done = int(last.get("epoch", 0)) if last else 0
    if rec and rec.get("status") == "failed":
        return "failed", done
    return ("partial" if last else "todo"), done


# --------------------------------------------------------------------------------------------
# class split
# --------------------------------------------------------------------------------------------

def train_counts(cfg: AblationConfig, *, progress: bool = True) -> dict[str, Any]:
    """Training-split class counts (cached by zoo.class_weights), for the tail/head split."""
    from zoo.class_weights import cached_counts
    from zoo.data import build_dataset, load_card

    card = load_card(cfg.data)
    ds = build_dataset(cfg.data, root=cfg.data_root, split="train")
    return cached_counts(ds, cfg.data, "train", num_classes=card.num_classes,
                         ignore_index=card.ignore_index, source=cfg.tail_by, progress=progress)


def class_split(counts: Sequence[float], k: int) -> tuple[list[int], list[int]]:
    """(tail, head) class indices: the k rarest by count (ties: lower index first), the rest.

    A class that never occurs in training counts as rarest (it is the extreme of the tail)."""
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    tail = order[:k]
    return tail, [i for i in range(len(counts)) if i not in tail]


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------

def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _log(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def _train_one(cfg: AblationConfig, run: RunSpec) -> dict[str, Any]:
    from zoo.train import TrainConfig, TrainHooks, train

    tcfg = TrainConfig(
        model=cfg.model, data=cfg.data, data_root=cfg.data_root, recipe=cfg.recipe, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, crop=cfg.crop, loss=run.loss.loss,
        class_weights=run.loss.weights, beta=cfg.beta, count_source=cfg.count_source,
        eval_every=cfg.epochs, seed=run.seed, resume=True, artifacts=cfg.artifacts,
        workers=cfg.workers, threads=cfg.threads, amp=cfg.amp, progress=cfg.progress,
        val_split=cfg.val_split,
    )
    hooks = TrainHooks(run_name=run.run_name, meta={"ablation": {
        "loss": run.loss.name, "seed": run.seed, "fingerprint": run.fingerprint}})
    return train(tcfg, hooks)


def _active_seconds(run: RunSpec, rec: dict[str, Any], epochs: int) -> float | None:
    """Training time of a finished run without the time it stood still: epochs x the median of its
    per-epoch durations (the run folder's history.json); the wall time (`train_seconds`) when no
    history is left. A run paused with SIGSTOP, or slowed for a while by another job, would
    otherwise report hours it did not train."""
    try:
        history = json.loads((run.run_dir / "history.json").read_text())
    except (OSError, ValueError):
        history = None
    elapsed = [float(h["elapsed_s"]) for h in history if isinstance(h, dict) and "elapsed_s" in h] \
        if isinstance(history, list) else []
    if len(elapsed) >= 2:
        return statistics.median(b - a for a, b in zip([0.0, *elapsed], elapsed)) * epochs
    return rec.get("train_seconds")


def _record_from_checkpoint(cfg: AblationConfig, run: RunSpec) -> dict[str, Any]:
    """The run's result from best.json (the final epoch's metrics: validation only ran then)."""
    meta = read_json_dict(run.run_dir / "best.json")
    if not meta or "metrics" not in meta:
        raise RuntimeError(f"{run.run_dir / 'best.json'} holds no metrics")
    if int(meta.get("epoch", -1)) != cfg.epochs:
        raise RuntimeError(f"{run.run_dir / 'best.json'} is from epoch {meta.get('epoch')}, "
                           f"not the final epoch {cfg.epochs}")
    m = meta["metrics"]
    return {
        "schema": SCHEMA, "status": "ok", "loss": run.loss.name, "loss_fn": run.loss.loss,
        "class_weights": run.loss.weights, "seed": run.seed, "run_name": run.run_name,
        "fingerprint": run.fingerprint, "epochs": cfg.epochs, "split": meta.get("split"),
        "miou": m["miou"], "pixel_accuracy": m.get("pixel_accuracy"),
        "per_class_iou": m["per_class_iou"], "train_seconds": meta.get("train_seconds"),
        "class_weighting": meta.get("class_weighting"), "checkpoint": str(run.run_dir / "best.pt"),
        "sha256": meta.get("sha256"),
    }


def run_ablation(cfg: AblationConfig) -> dict[str, Any]:
    """Train every unfinished run of the plan, then write the report; returns the report dict."""
    from zoo.io import write_json

    cfg = cfg.resolved()
    runs = plan(cfg)
    counts = train_counts(cfg, progress=cfg.progress)
    states = {r.index: run_state(r, cfg.epochs) for r in runs}
    todo = [r for r in runs if states[r.index][0] != "done"]
    _log(f"{cfg.model} on {cfg.data}: {len(runs)} runs ({len(cfg.losses)} losses x {cfg.seeds} "
         f"seeds, {cfg.epochs} epochs each); {len(runs) - len(todo)} finished, {len(todo)} to run")
    # ETA from the seconds per epoch of earlier finished runs, then of this session's epochs; both
    # as active training time (`_active_seconds`), so a run that stood paused does not inflate it.
    prior = [(r, run_result(r)) for r in runs if states[r.index][0] == "done"]
    rate_samples = [(active, p["epochs"]) for r, p in prior if p and p.get("epochs")
                    and (active := _active_seconds(r, p, int(p["epochs"])))]
    spent_s, spent_epochs = 0.0, 0
    remaining = {r.index: cfg.epochs - states[r.index][1] for r in todo}

    def eta() -> str:
        if spent_epochs:
            rate = spent_s / spent_epochs
        elif rate_samples:
            rate = sum(s for s, _ in rate_samples) / sum(e for _, e in rate_samples)
        else:
            return "ETA after the first epochs"
        return f"ETA {_fmt_s(rate * sum(remaining.values()))}"

    for n, run in enumerate(todo, start=1):
        state, done = states[run.index]
        how = f"resuming after epoch {done}/{cfg.epochs}" if done else "from scratch"
        _log(f"run {n}/{len(todo)} start: {run.loss.name} seed {run.seed} ({run.run_name}, {how}); "
             f"{eta()}")
        t0 = time.time()
        try:
            _train_one(cfg, run)
            rec = _record_from_checkpoint(cfg, run)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # failures are data: record it, go on with the next run
            msg = (exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)) or type(exc).__name__
            rec = {"schema": SCHEMA, "status": "failed", "loss": run.loss.name, "seed": run.seed,
                   "run_name": run.run_name, "fingerprint": run.fingerprint,
                   "error": f"{type(exc).__name__}: {msg.splitlines()[0][:300]}"}
        write_json(run.run_dir / RESULT_FILE, rec)
        if rec["status"] == "ok" and run.kept is not None:
            write_json(run.kept, rec)
        elapsed = time.time() - t0
        trained = remaining.pop(run.index)
        if rec["status"] == "ok" and trained:
            spent_s, spent_epochs = spent_s + (_active_seconds(run, rec, trained) or elapsed), spent_epochs + trained
        gc.collect()
        if rec["status"] == "ok":
            tail, head = class_split(counts[cfg.tail_by], cfg.tail_k)
            s = _split_scores(rec, tail, head)
            _log(f"run {n}/{len(todo)} done: {run.loss.name} seed {run.seed} in {_fmt_s(elapsed)}: "
                 f"mIoU {s['miou']:.1f}, tail {s['tail_miou']:.1f}, head {s['head_miou']:.1f}; "
                 f"{eta() if remaining else 'all runs finished'}")
        else:
            _log(f"run {n}/{len(todo)} FAILED: {run.loss.name} seed {run.seed} after "
                 f"{_fmt_s(elapsed)}: {rec['error']}; {eta() if remaining else 'no runs left'}")
    return write_report(cfg, runs, counts)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def _pct(v: Any) -> float:
    return float("nan") if v is None else 100.0 * float(v)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _split_scores(rec: dict[str, Any], tail: list[int], head: list[int]) -> dict[str, float]:
    """Overall / tail / head mIoU in percent; a class absent from both ground truth and
    prediction (IoU NaN) is left out of its mean, as in the overall mIoU."""
    ious = [_pct(v) for v in rec["per_class_iou"].values()]
    return {"miou": _pct(rec["miou"]), "tail_miou": _nanmean([ious[i] for i in tail]),
            "head_miou": _nanmean([ious[i] for i in head])}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))  # sample std


def _delta(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, float]:
    """(mean of a - mean of b, standard error of that difference; NaN with < 2 seeds)."""
    d = a[f"{key}_mean"] - b[f"{key}_mean"]
    sa, sb = a[f"{key}_std"], b[f"{key}_std"]
    se = math.sqrt(sa ** 2 / a["seeds_done"] + sb ** 2 / b["seeds_done"]) \
        if not (math.isnan(sa) or math.isnan(sb)) else float("nan")
    return d, se


def summarize(cfg: AblationConfig, runs: Sequence[RunSpec], counts: dict[str, Any]) -> dict[str, Any]:
    """Collect the runs' records and aggregate them per loss (values in IoU percent)."""
    from zoo.data import load_card

    card = load_card(cfg.data)
    classes = list(card.classes)
    tail, head = class_split(counts[cfg.tail_by], cfg.tail_k)
    total = float(sum(counts[cfg.tail_by])) or 1.0
    records = []
    for run in runs:
        state, done = run_state(run, cfg.epochs)
        rec = run_result(run) if state in ("done", "failed") else None
        row: dict[str, Any] = {"loss": run.loss.name, "loss_fn": run.loss.loss,
                               "class_weights": run.loss.weights, "seed": run.seed, "status": state,
                               "epochs_done": done, "run_name": run.run_name}
        if state == "done" and rec:
            row.update(_split_scores(rec, tail, head))
            row["pixel_accuracy"] = _pct(rec.get("pixel_accuracy"))
            row["per_class_iou"] = {c: _pct(rec["per_class_iou"].get(c)) for c in classes}
            row["train_seconds"] = rec.get("train_seconds")
            row["active_seconds"] = _active_seconds(run, rec, cfg.epochs)
            row["checkpoint"] = rec.get("checkpoint")
            weighting = rec.get("class_weighting") or {}
            if weighting.get("weights"):
                row["weights"] = dict(zip(classes, weighting["weights"]))
        elif state == "failed" and rec:
            row["error"] = rec.get("error")
        records.append(row)

    summary = []
    for name in cfg.losses:
        spec = parse_loss(name)
        ok = [r for r in records if r["loss"] == name and r["status"] == "done"]
        entry: dict[str, Any] = {"loss": name, "loss_fn": spec.loss, "class_weights": spec.weights,
                                 "class_balanced": spec.class_balanced, "seeds_done": len(ok),
                                 "seeds_planned": cfg.seeds}
        for key in ("miou", "tail_miou", "head_miou"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r[key] for r in ok])
        entry["per_class_iou_mean"] = {c: _mean_std([r["per_class_iou"][c] for r in ok])[0] for c in classes}
        entry["per_class_iou_std"] = {c: _mean_std([r["per_class_iou"][c] for r in ok])[1] for c in classes}
        secs = [r["active_seconds"] for r in ok if r.get("active_seconds")]
        entry["train_minutes_mean"] = sum(secs) / len(secs) / 60 if secs else float("nan")
        summary.append(entry)

    base = next((s for s in summary if s["loss"] == BASELINE and s["seeds_done"]), None)
    for s in summary:
        for key in ("miou", "tail_miou", "head_miou"):
            s[f"delta_{key}"], s[f"delta_{key}_se"] = _delta(s, base, key) if (base and s["seeds_done"]) \
                else (float("nan"), float("nan"))

    complete = all(r["status"] == "done" for r in records)
    verdict = _verdicts(cfg, summary, base, complete, sum(r["status"] == "done" for r in records),
                        len(records))
    return {
        "schema": SCHEMA, "units": "IoU in percent (0-100)", "model": cfg.model, "dataset": cfg.data,
        "split": cfg.val_split, "settings": _settings(cfg), "command": cfg.command,
        "classes": classes, "tail_by": cfg.tail_by, "tail_k": cfg.tail_k,
        "tail_classes": [classes[i] for i in tail], "head_classes": [classes[i] for i in head],
        "train_counts": {c: int(counts[cfg.tail_by][i]) for i, c in enumerate(classes)},
        "train_share": {c: counts[cfg.tail_by][i] / total for i, c in enumerate(classes)},
        "complete": complete, "summary": summary, "runs": records, **verdict,
    }


def _settings(cfg: AblationConfig) -> dict[str, Any]:
    from zoo.recipes import get_recipe

    r = get_recipe(cfg.recipe).with_overrides(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                             crop=tuple(cfg.crop) if cfg.crop else None)
    return {"recipe": r.name, "epochs": r.epochs, "batch_size": r.batch_size, "crop": list(r.crop),
            "optimizer": r.optimizer, "lr": r.lr, "weight_decay": r.weight_decay,
            "scale_range": list(r.scale_range), "amp": cfg.amp, "beta": cfg.beta,
            "count_source": cfg.count_source, "seeds": list(range(cfg.first_seed, cfg.first_seed + cfg.seeds)),
            "losses": list(cfg.losses), "data_root": str(cfg.data_root) if cfg.data_root else None}


def _verdicts(cfg, summary, base, complete, n_done, n_all) -> dict[str, Any]:
    note = "" if complete else f" (provisional: {n_done} of {n_all} runs finished)"
    if base is None:
        msg = f"no finished '{BASELINE}' run: nothing to compare against{note}"
        return {"winner": None, "winner_text": msg, "target_met": None, "target_text": msg}

    def within_noise(d: float, se: float) -> str:
        if math.isnan(se):
            return " (one seed: no spread to judge noise)"
        return " (within 2 standard errors: not distinguishable from seed noise)" if abs(d) < 2 * se else ""

    def fmt(d: float, se: float) -> str:
        return f"{d if round(d, 1) else 0.0:+.1f}" + ("" if math.isnan(se) else f" ± {se:.1f}")

    cands = [s for s in summary if s["loss"] != BASELINE and s["seeds_done"]
             and s["delta_miou"] >= 0 and s["delta_tail_miou"] > 0]
    if cands:
        w = max(cands, key=lambda s: s["delta_tail_miou"])
        winner = w["loss"]
        winner_text = (f"**{winner}** raises tail mIoU most without lowering overall mIoU: tail "
                       f"{fmt(w['delta_tail_miou'], w['delta_tail_miou_se'])} points, overall "
                       f"{fmt(w['delta_miou'], w['delta_miou_se'])} vs {BASELINE}"
                       f"{within_noise(w['delta_tail_miou'], w['delta_tail_miou_se'])}{note}")
    else:
        winner = None
        winner_text = f"no loss raises tail mIoU over {BASELINE} without lowering overall mIoU{note}"

    cb = [s for s in summary if s["class_balanced"] and s["seeds_done"]]
    where = "" if cfg.data == "camvid" else (
        f" The target is stated for CamVid; this report is on {cfg.data}, so it only shows how the "
        "same criterion comes out here.")
    goal = (f"Issue #8 target: a class-balanced loss (effective-number weights) raises tail mIoU by "
            f">= {TARGET_POINTS:g} points over plain {BASELINE} without lowering overall mIoU.")
    if not cb:
        return {"winner": winner, "winner_text": winner_text, "target_met": None,
                "target_text": f"{goal} Not judged: no class-balanced loss among the finished runs{note}.{where}"}
    met = [s for s in cb if s["delta_tail_miou"] >= TARGET_POINTS and s["delta_miou"] >= 0]
    parts = [f"{s['loss']}: tail {fmt(s['delta_tail_miou'], s['delta_tail_miou_se'])}, overall "
             f"{fmt(s['delta_miou'], s['delta_miou_se'])}" for s in cb]
    best = max(met or cb, key=lambda s: s["delta_tail_miou"])
    status = "MET" if met else "NOT MET"
    text = (f"{goal} **{status}**{note}: {'; '.join(parts)} (points vs {BASELINE}, mean ± standard "
            f"error over seeds).")
    if met:
        text += f" Best: {best['loss']}{within_noise(best['delta_tail_miou'], best['delta_tail_miou_se'])}."
    text += where
    return {"winner": winner, "winner_text": winner_text, "target_met": bool(met), "target_text": text}


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{(v if round(v, digits) else 0.0):.{digits}f}"  # no "-0.0"


def _ms(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")


def render_markdown(rep: dict[str, Any]) -> str:
    st = rep["settings"]
    classes, tail = rep["classes"], set(rep["tail_classes"])
    lines = [
        f"# Loss ablation: {rep['model']} on {rep['dataset']} ({rep['split']})", "",
        f"Command: `{rep['command']}`" if rep["command"] else "", "",
        f"Training: recipe `{st['recipe']}` from scratch, {st['epochs']} epochs, batch {st['batch_size']}, "
        f"crop {st['crop'][0]}x{st['crop'][1]}, {st['optimizer']} lr {st['lr']:g}, amp {st['amp']}; "
        f"seeds {', '.join(map(str, st['seeds']))}. Class weights: beta "
        f"{'1 - 1/(largest count)' if st['beta'] is None else st['beta']} on {st['count_source']} counts. "
        f"Metrics: final epoch on {rep['split']} (no checkpoint selection), IoU in percent, "
        "mean ± sample std over seeds.", "",
        f"Tail classes (the {rep['tail_k']} rarest by training {rep['tail_by']}): "
        + ", ".join(f"{c} ({100 * rep['train_share'][c]:.2f}%)" for c in rep["tail_classes"])
        + f". Head: {', '.join(rep['head_classes'])}.", "",
        "| loss | training loss | class weights | seeds | mIoU | tail mIoU | head mIoU | "
        "Δ tail vs ce | Δ mIoU vs ce | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rep["summary"]:
        mark = " ★" if s["loss"] == rep["winner"] else ""
        lines.append(
            f"| {s['loss']}{mark} | {s['loss_fn']} | {s['class_weights']} | {s['seeds_done']}/{s['seeds_planned']} | "
            f"{_ms(s['miou_mean'], s['miou_std'])} | {_ms(s['tail_miou_mean'], s['tail_miou_std'])} | "
            f"{_ms(s['head_miou_mean'], s['head_miou_std'])} | "
            f"{'' if s['loss'] == BASELINE else _f(s['delta_tail_miou'])} | "
            f"{'' if s['loss'] == BASELINE else _f(s['delta_miou'])} | {_f(s['train_minutes_mean'])} |")
    lines += ["", ("★ " if rep["winner"] else "") + rep["winner_text"], "", rep["target_text"], "",
              "## Per-class IoU (mean over seeds; † tail class)", "",
              "| loss | " + " | ".join(c + (" †" if c in tail else "") for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for s in rep["summary"]:
        lines.append(f"| {s['loss']} | " + " | ".join(_f(s["per_class_iou_mean"][c]) for c in classes) + " |")
    lines += ["", "## Runs", "", "| loss | seed | status | mIoU | tail | head | minutes | run folder |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        status = r["status"] if r["status"] != "partial" else f"partial ({r['epochs_done']} epochs)"
        if r.get("error"):
            status += f": {r['error']}"
        mins = _f(r["active_seconds"] / 60) if r.get("active_seconds") else "–"
        lines.append(f"| {r['loss']} | {r['seed']} | {status} | {_f(r.get('miou'))} | {_f(r.get('tail_miou'))} "
                     f"| {_f(r.get('head_miou'))} | {mins} | {r['run_name']} |")
    lines += ["", "Minutes: the run's epochs x its median epoch time (`history.json`), which a paused or "
              "shared machine does not inflate; wall time with pauses is `train_seconds` in the runs CSV."]
    return "\n".join(lines) + "\n"


SUMMARY_COLUMNS = ("loss", "loss_fn", "class_weights", "seeds_done", "seeds_planned",
                   "miou_mean", "miou_std", "tail_miou_mean", "tail_miou_std", "head_miou_mean",
                   "head_miou_std", "delta_miou", "delta_tail_miou", "delta_head_miou",
                   "train_minutes_mean", "winner")
RUN_COLUMNS = ("loss", "loss_fn", "class_weights", "seed", "status", "epochs_done", "miou",
               "tail_miou", "head_miou", "pixel_accuracy", "train_seconds", "active_seconds", "run_name")


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if (v is None or (isinstance(v, float) and math.isnan(v))) else
                    (round(v, 4) if isinstance(v, float) else v) for v in (row.get(c) for c in columns)])
    return buf.getvalue().encode()


def write_report(cfg: AblationConfig, runs: Sequence[RunSpec], counts: dict[str, Any]) -> dict[str, Any]:
    """Write ablation.{md,csv,json} and ablation_runs.csv under cfg.out (each atomically)."""
    from zoo.io import write_bytes, write_json

    rep = summarize(cfg, runs, counts)
    out = Path(cfg.out)
    classes = rep["classes"]
    iou_cols = tuple(f"iou_{c}" for c in classes)
    srows = [{**s, "winner": s["loss"] == rep["winner"],
              **{f"iou_{c}": s["per_class_iou_mean"][c] for c in classes}} for s in rep["summary"]]
    rrows = [{**r, **{f"iou_{c}": (r.get("per_class_iou") or {}).get(c) for c in classes}}
             for r in rep["runs"]]
    write_bytes(out / "ablation.csv", _csv(srows, SUMMARY_COLUMNS + iou_cols))
    write_bytes(out / "ablation_runs.csv", _csv(rrows, RUN_COLUMNS + iou_cols))
    write_json(out / "ablation.json", _json_safe(rep))
    write_bytes(out / "ablation.md", render_markdown(rep).encode())
    return rep


def _json_safe(obj: Any) -> Any:
    """NaN -> null (strict JSON)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def report_only(cfg: AblationConfig) -> dict[str, Any]:
    cfg = cfg.resolved()
    return write_report(cfg, plan(cfg), train_counts(cfg, progress=False))


def describe_plan(cfg: AblationConfig) -> str:
    """The plan as text (--dry-run): settings, class split, every run and its state."""
    cfg = cfg.resolved()
    runs = plan(cfg)
    counts = train_counts(cfg, progress=False)
    from zoo.data import load_card

    classes = load_card(cfg.data).classes
    tail, _ = class_split(counts[cfg.tail_by], cfg.tail_k)
    st = _settings(cfg)
    lines = [f"{cfg.model} on {cfg.data}: {len(cfg.losses)} losses x {cfg.seeds} seeds = {len(runs)} runs",
             f"training: recipe {st['recipe']}, {st['epochs']} epochs, batch {st['batch_size']}, crop "
             f"{st['crop'][0]}x{st['crop'][1]}, {st['optimizer']} lr {st['lr']:g}, amp {cfg.amp}; "
             f"class weights beta {cfg.beta if cfg.beta is not None else 'default'} on {cfg.count_source}",
             f"tail ({cfg.tail_k} rarest by training {cfg.tail_by}): {', '.join(classes[i] for i in tail)}",
             f"report: {Path(cfg.out) / 'ablation.md'} (+ .csv, _runs.csv, .json)"]
    todo_epochs = 0
    for r in runs:
        state, done = run_state(r, cfg.epochs)
        todo_epochs += cfg.epochs - done
        extra = f" ({done}/{cfg.epochs} epochs)" if state in ("partial", "failed") else ""
        lines.append(f"  {r.index + 1:3d}. {r.loss.name:<12} loss={r.loss.loss:<8} weights={r.loss.weights:<9} "
                     f"seed {r.seed}  {state}{extra}  {r.run_dir}")
    rates = [(p["train_seconds"], p["epochs"]) for p in (run_result(r) for r in runs)
             if p and p.get("status") == "ok" and p.get("train_seconds")]
    if rates:
        rate = sum(s for s, _ in rates) / sum(e for _, e in rates)
        lines.append(f"{todo_epochs} epochs to train; at the {_fmt_s(rate)}/epoch of the finished runs: "
                     f"about {_fmt_s(rate * todo_epochs)}")
    else:
        lines.append(f"{todo_epochs} epochs to train")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"segmentation network (default {DEFAULT_MODEL})")
    p.add_argument("--data", default="camvid", help="dataset card (default camvid; synthetic-lt: the "
                   "long-tailed synthetic set)")
    p.add_argument("--data-root", help="dataset folder (default: the card's)")
    p.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), metavar="LOSS",
                   help=f"losses, space or comma separated (default {','.join(DEFAULT_LOSSES)})")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds per loss (default {DEFAULT_SEEDS})")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--recipe", help="training recipe (default: the model's)")
    p.add_argument("--epochs", type=int, help=f"epochs per run (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                   help=f"training crop (default {DEFAULT_CROP[0]} {DEFAULT_CROP[1]})")
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float, help="class-balanced beta (default: 1 - 1/largest class count)")
    p.add_argument("--count-source", default="pixels", choices=("pixels", "images", "instances"),
                   help="counts behind the class weights (default pixels)")
    p.add_argument("--tail-k", type=int, default=DEFAULT_TAIL_K, help=f"tail size (default {DEFAULT_TAIL_K})")
    p.add_argument("--tail-by", default="pixels", choices=("pixels", "images", "instances"),
                   help="counts that rank classes for the tail (default pixels)")
    p.add_argument("--val-split", default="val")
    p.add_argument("--out", help="report folder (default reports/ablation/<data>-<model>)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16 autocast for training (faster on CPUs with AVX512-BF16/AMX)")
    p.add_argument("--progress", action="store_true", help="zoo.train's progress bars")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    mode.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    return p


def config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> AblationConfig:
    losses = [x for item in args.losses for x in item.split(",") if x.strip()]
    import shlex

    return AblationConfig(
        model=args.model, data=args.data, data_root=args.data_root, losses=tuple(losses),
        seeds=args.seeds, first_seed=args.first_seed, recipe=args.recipe, epochs=args.epochs,
        batch_size=args.batch_size, crop=tuple(args.crop) if args.crop else None, lr=args.lr,
        beta=args.beta, count_source=args.count_source, tail_k=args.tail_k, tail_by=args.tail_by,
        val_split=args.val_split, out=args.out, artifacts=args.artifacts, workers=args.workers,
        threads=args.threads, amp=args.amp, progress=args.progress,
        command="python -m zoo.ablation " + " ".join(shlex.quote(a) for a in argv),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from zoo.errors import user_errors

    with user_errors():
        cfg = config_from_args(args, argv).resolved()
        if args.dry_run:
            print(describe_plan(cfg))
            return 0
        rep = report_only(cfg) if args.report_only else run_ablation(cfg)
    out = Path(cfg.out)
    print(f"report: {out / 'ablation.md'} ({sum(r['status'] == 'done' for r in rep['runs'])}/"
          f"{len(rep['runs'])} runs finished)")
    print(rep["winner_text"])
    print(rep["target_text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
