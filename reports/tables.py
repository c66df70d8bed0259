"""Comparison tables from stored result records (Markdown and CSV), torch-free.

Every number comes from a record. Records are grouped into rows by network and measurement
configuration (dataset, split, input size, batch, threads, weights sha256); within a row, each
variant's cell is the newest `ok` record, or, when none is ok, the newest record of any status
(so a failed or skipped cell shows its reason instead of a blank).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Iterable

MIXED = "static-mixed"  # static PTQ with layers kept in float (bench.run --keep-float-from)
INT8_VARIANTS = ("qat", "static", MIXED, "dynamic")
VARIANT_TITLES = {"fp32": "FP32", "qat": "QAT", "static": "static PTQ", MIXED: "static PTQ, mixed precision",
                  "dynamic": "dynamic PTQ"}
NOT_RUN = "not run"
REASON_CHARS = 60
MIXED_NODES_SHOWN = 6  # float layers named in a footer (the record and the sensitivity report list all)
UNSTABLE_MARK = "*"
FLOAT_MARK = "†"
FLOAT_NOTE = "float: nothing quantized"
VERSION_KEYS = ("python", "torch", "onnxruntime", "openvino", "onnx", "numpy", "tensorrt", "cuda")


class ReportError(Exception):
    """A results folder the reports cannot be built from, explained in one line."""


# ---------------------------------------------------------------------------------------------
# selection


def quant_summary(rec: dict[str, Any] | None) -> dict[str, Any]:
    """What the cell's artifact says about its quantization (`artifact.quant`), or {}."""
    artifact = (rec or {}).get("artifact")
    quant = artifact.get("quant") if isinstance(artifact, dict) else None
    return quant if isinstance(quant, dict) else {}


def kept_float(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The layers a static cell left in float ({"from": report, "nodes": [...]}), else None."""
    kept = quant_summary(rec).get("kept_float")
    return kept if isinstance(kept, dict) and kept.get("nodes") else None


def report_variant(rec: dict[str, Any]) -> str:
    """The record's variant, with static PTQ that kept layers in float as a variant of its own,
    so that the all-INT8 result and the mixed-precision one are both shown."""
    variant = str(rec.get("variant"))
    return MIXED if variant == "static" and kept_float(rec) else variant


def row_key(rec: dict[str, Any]) -> tuple:
    hw = rec.get("input_hw") or (None, None)
    return (rec.get("model"), rec.get("dataset"), rec.get("split"), tuple(hw), rec.get("batch"),
            rec.get("threads"), rec.get("weights_sha256") or "")


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return str(a.get("timestamp", "")) >= str(b.get("timestamp", ""))


def pick(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest ok record, else the newest record of any status, else None."""
    best_ok = best_any = None
    for rec in records:
        if rec.get("status") == "ok" and (best_ok is None or _newer(rec, best_ok)):
            best_ok = rec
        if best_any is None or _newer(rec, best_any):
            best_any = rec
    return best_ok or best_any


@dataclass
class Row:
    """One network under one configuration on one backend: its chosen record per variant."""
    key: tuple
    label: str
    cells: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.key[0]

    def ok(self, variant: str) -> dict[str, Any] | None:
        rec = self.cells.get(variant)
        return rec if rec is not None and rec.get("status") == "ok" else None


def build_rows(records: list[dict[str, Any]]) -> list[Row]:
    """Rows for the records of one backend, sorted by network then configuration."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        groups.setdefault(row_key(rec), {}).setdefault(report_variant(rec), []).append(rec)
    per_model: dict[str, int] = {}
    for key in groups:
        per_model[key[0]] = per_model.get(key[0], 0) + 1
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        model, _ds, _split, hw, batch, threads, sha = key
        label = str(model)
        if per_model[model] > 1:  # the same network measured under several configurations
            label += f" ({hw[0]}x{hw[1]}, b{batch}, t{threads}, {sha[:8] or '-'})"
        rows.append(Row(key, label, {v: pick(rs) for v, rs in groups[key].items()}))
    return rows


# ---------------------------------------------------------------------------------------------
# values


def accuracy_name(records: Iterable[dict[str, Any]]) -> tuple[str, str]:
    """(metrics key, column title): mIoU for segmentation, COCO mAP50-95 for detection records
    (bench.run detection cells: `metrics.map50_95`; `map` in older hand-made records)."""
    for rec in records:
        metrics = rec.get("metrics") or {}
        if metrics.get("miou") is not None:
            return "miou", "mIoU (%)"
        if metrics.get("map50_95") is not None:
            return "map50_95", "mAP50-95 (%)"
        if metrics.get("map") is not None:
            return "map", "mAP (%)"
        if rec.get("task") == "detection":
            return "map50_95", "mAP50-95 (%)"
    return "miou", "mIoU (%)"


def accuracy(rec: dict[str, Any] | None, key: str = "miou") -> float | None:
    if rec is None:
        return None
    value = (rec.get("metrics") or {}).get(key)
    return None if value is None else float(value)


def fps(rec: dict[str, Any]) -> float | None:
    value = rec.get("images_per_s") if (rec.get("batch") or 1) > 1 else rec.get("fps")
    if value is None:
        value = rec.get("fps")
    return None if value is None else float(value)


def decrease_pct(base: Any, value: Any) -> float | None:
    if base in (None, 0) or value is None:
        return None
    return 100.0 * (float(base) - float(value)) / float(base)


def reason(rec: dict[str, Any] | None) -> str:
    """Why a cell has no numbers: `failed: <error>` / `skipped: <error>`, shortened."""
    if rec is None:
        return NOT_RUN
    text = " ".join(str(rec.get("error") or "no reason recorded").split())
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3].rstrip() + "..."
    return f"{rec.get('status')}: {text}"


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _gmacs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.{2 if value >= 1 else 3}f}"


def _signed(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def nothing_quantized(rec: dict[str, Any] | None) -> bool:
    """An INT8 variant whose artifact quantized nothing, e.g. PyTorch dynamic quantization of a
    network without Linear/LSTM layers: FP32 in all but name (issue #3: never passed off as INT8).
    Also a quantized file that the runtime ran without any INT8 convolution or matmul (the record's
    `runtime.int8_compute_layers`, from OpenVINO's compiled model: ORT's dynamic ConvInteger file
    compiles to float convolutions there)."""
    if _runtime_ran_no_int8(rec):
        return True
    quant = quant_summary(rec)
    if quant.get("is_int8") is False:
        return True
    graph = quant.get("graph") or {}
    ops = quant.get("int8_ops") or {}
    return bool(graph) and not graph.get("quantized_convs") and not any(ops.values())


def _runtime_ran_no_int8(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and rec.get("variant") not in (None, "fp32") \
        and (rec.get("runtime") or {}).get("int8_compute_layers") == 0


def _float_mark(rec: dict[str, Any] | None) -> str:
    return f" {FLOAT_MARK}" if nothing_quantized(rec) else ""


def _float_footer(records: Iterable[dict[str, Any] | None]) -> list[str]:
    records = [r for r in records if nothing_quantized(r)]
    if not records:
        return []
    reasons = []
    if any(not _runtime_ran_no_int8(r) for r in records):
        reasons.append("the artifact holds no INT8 layer: PyTorch dynamic quantization only acts on Linear/LSTM layers")
    if any(_runtime_ran_no_int8(r) for r in records):
        reasons.append("the runtime ran no INT8 layer: OpenVINO compiles ONNX Runtime's dynamic ConvInteger file "
                       "to float convolutions")
    return [f"{FLOAT_MARK}: {FLOAT_NOTE} ({'; '.join(reasons)}), so this is the FP32 network in all but name"]


def selected_on(meta: dict[str, Any]) -> str | None:
    """The split a checkpoint was picked on: `selected_on_split` (records since session 9), else,
    for a trainer's best.pt that carries its validation score (`val_*_at_training`), val."""
    if meta.get("selected_on_split"):
        return str(meta["selected_on_split"])
    path = str(meta.get("path") or meta.get("checkpoint") or "")
    scored = meta.get("val_miou_at_training") is not None or meta.get("val_map50_95_at_training") is not None
    return "val" if path.endswith("best.pt") and scored else None


def _selection_footer(records: Iterable[dict[str, Any] | None]) -> list[str]:
    """Say which weights were picked on the split the table reports (a trainer's best.pt: the
    best of its evaluations on that split), since their accuracy there is optimistic."""
    picked: list[str] = []
    for rec in records:
        if rec is None:
            continue
        split = rec.get("split")
        weights = rec.get("weights") if isinstance(rec.get("weights"), dict) else {}
        for what, meta in (("FP32 weights", weights), ("QAT checkpoint", quant_summary(rec))):
            if split and selected_on(meta) == split:
                epoch = meta.get("epoch", meta.get("epochs"))
                text = f"{rec.get('model')} {what}" + (f" (epoch {epoch})" if epoch is not None else "")
                if text not in picked:
                    picked.append(text)
    if not picked:
        return []
    return [f"Selected on the reported split: {', '.join(picked)} (best.pt: the best of the training's "
            f"evaluations on this split, so its accuracy here is optimistic by their noise)"]


def _qat_range_footer(records: Iterable[dict[str, Any] | None]) -> list[str]:
    """Name the segmentation QAT cells whose checkpoint was validated with its quantizer observers
    running (before session 21): the validation images moved the ranges it was saved with."""
    moved = []
    for rec in records:
        if rec is None or rec.get("variant") != "qat" or rec.get("task") == "detection":
            continue  # the detector trainer always validated with the observers paused
        summary = quant_summary(rec)
        if summary and not summary.get("ranges_fixed_in_validation") and rec.get("model") not in moved:
            moved.append(str(rec.get("model")))
    if not moved:
        return []
    return [f"QAT checkpoints whose quantizer ranges the validation images moved (validated with the observers on, "
            f"before that was fixed): {', '.join(moved)}; re-measure with bench.run --quant qat --force"]


def _fps_text(rec: dict[str, Any]) -> str:
    text = _num(fps(rec), 1)
    return text + UNSTABLE_MARK if rec.get("unstable") else text


# ---------------------------------------------------------------------------------------------
# tables


@dataclass
class Table:
    name: str          # file stem, e.g. table1_fp32_onnxruntime
    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[Any]]
    footer: list[str]

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = [f"### {self.title}", "", line(self.header),
               "|" + "|".join("---" for _ in self.header) + "|"]
        out += [line(r) for r in self.rows]
        out += [""] + [f"- {f}" for f in self.footer]
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header)
        for r in self.csv_rows:
            writer.writerow(["" if v is None else v for v in r])
        return buf.getvalue()


def _join(values: Iterable[Any]) -> str:
    seen: list[str] = []
    for v in values:
        s = str(v)
        if v not in (None, "") and s not in seen:
            seen.append(s)
    return ", ".join(seen) if seen else "unknown"


def footer(records: list[dict[str, Any]], dataset: str, *, timings: bool = True) -> list[str]:
    """Provenance of a table, from the records it shows."""
    recs = [r for r in records if r is not None]
    env = [r.get("env") or {} for r in recs]
    sizes = _join(f"{r['input_hw'][0]}x{r['input_hw'][1]}" for r in recs if r.get("input_hw"))
    cpus = _join(cpu_label(e.get("cpu")) for e in env)
    gpus = [e.get("gpu") for e in env if e.get("gpu")]
    gpu = _join((g.get("name") if isinstance(g, dict) else g) for g in gpus) if gpus else "none"
    versions = []
    for k in VERSION_KEYS:
        vals = _join(e.get(k) for e in env)
        if vals != "unknown":
            versions.append(f"{k} {vals}")
    commits = []
    for e in env:
        git = e.get("git") or {}
        if git.get("commit"):
            c = str(git["commit"])[:12] + (" (dirty)" if git.get("dirty") else "")
            if c not in commits:
                commits.append(c)
    dates = sorted(str(r.get("timestamp"))[:10] for r in recs if r.get("timestamp"))
    date = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "unknown"
    lines = [
        f"Dataset: {dataset}, split {_join(r.get('split') for r in recs)}; input {sizes}; "
        f"batch {_join(r.get('batch') for r in recs)}; threads {_join(r.get('threads') for r in recs)}; "
        f"device {_join(r.get('device') for r in recs)}",
        f"CPU: {cpus}; GPU: {gpu}",
        f"Versions: {', '.join(versions) or 'unknown'}",
        f"Commit: {', '.join(commits) or 'unknown'}; date: {date}; profile: {_join(r.get('profile') for r in recs)}",
    ]
    if timings:
        thresholds = _join(r.get("cv_threshold") for r in recs)
        lines.append(f"FPS{UNSTABLE_MARK}: unstable timing (model-only latency CV above {thresholds})")
        lines += _machines_footer(recs)
    return lines


# The widest vector extension a record's CPU has, to tell apart machines that share a model name
# ("AMD EPYC" has been both an AVX2 and an AVX-512 VNNI machine here, "Intel Xeon" one with and
# one without AMX).
_ISA_ORDER = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "avx")


def cpu_label(cpu: dict[str, Any] | None) -> str | None:
    """'<model> (<widest ISA>)' of an env record's cpu entry, or None."""
    if not cpu or not cpu.get("model"):
        return None
    flags = set(cpu.get("flags") or [])
    isa = next((f for f in _ISA_ORDER if f in flags), None)
    return f"{cpu['model']} ({isa})" if isa else str(cpu["model"])


def _machines_footer(records: list[dict[str, Any]]) -> list[str]:
    """A warning when a table's timings come from more than one CPU model: speed is comparable only
    between rows measured on the same machine (the sessions of this project run on whichever
    machine they are given)."""
    by_cpu: dict[str, list[str]] = {}
    for r in records:
        cpu = cpu_label((r.get("env") or {}).get("cpu"))
        if cpu and r.get("model") not in by_cpu.setdefault(cpu, []):
            by_cpu[cpu].append(r.get("model"))
    if len(by_cpu) < 2:
        return []
    parts = "; ".join(f"{cpu}: {', '.join(map(str, models))}" for cpu, models in by_cpu.items())
    return [f"Timings come from {len(by_cpu)} machines ({parts}): compare speed only between rows of one "
            "machine, or re-measure every row on one machine with bench.run --force"]


def table1(rows: list[Row], backend: str, dataset: str) -> Table:
    acc_key, acc_title = accuracy_name(r.cells.get("fp32") or {} for r in rows)
    header = ["network", "size (MB)", "FPS", acc_title, "params (M)", "GMACs"]
    csv_header = ["network", "input_hw", "batch", "threads", "status", "note", "size_mb", "fps",
                  "unstable", acc_key, "params", "gmacs"]
    md, cs, used = [], [], []
    for row in rows:
        rec = row.cells.get("fp32")
        if rec is None and not any(row.cells.values()):
            continue
        hw, batch, threads = row.key[3], row.key[4], row.key[5]
        hw_text = f"{hw[0]}x{hw[1]}" if hw[0] is not None else ""
        if rec is not None:
            used.append(rec)
        if rec is not None and rec.get("status") == "ok":
            params = rec.get("params")
            md.append([row.label, _num(rec.get("size_mb"), 2), _fps_text(rec),
                       _num(None if accuracy(rec, acc_key) is None else 100 * accuracy(rec, acc_key), 2),
                       _num(None if params is None else params / 1e6, 2), _gmacs(rec.get("gmacs"))])
            cs.append([row.label, hw_text, batch, threads, "ok", "", rec.get("size_mb"), fps(rec),
                       bool(rec.get("unstable")), accuracy(rec, acc_key), params, rec.get("gmacs")])
        else:
            why = reason(rec)
            md.append([row.label, why] + ["-"] * 4)
            cs.append([row.label, hw_text, batch, threads, rec.get("status") if rec else "missing", why,
                       None, None, None, None, None, None])
    return Table(f"table1_fp32_{backend}", f"Table 1: FP32 on {backend} ({dataset})", header, md,
                 csv_header, cs, footer(used, dataset) + _selection_footer(used))


def _variants_present(rows: list[Row]) -> list[str]:
    """QAT, static and dynamic PTQ always get a column (a missing cell shows 'not run');
    mixed-precision static PTQ only where some network has it."""
    return [v for v in INT8_VARIANTS if v != MIXED or any(v in r.cells for r in rows)]


def _mixed_footer(records: Iterable[dict[str, Any] | None]) -> list[str]:
    notes = []
    for rec in records:
        kept = kept_float(rec)
        if kept is not None and rec is not None:
            nodes = list(kept["nodes"])
            shown = ", ".join(nodes[:MIXED_NODES_SHOWN]) + (
                f" and {len(nodes) - MIXED_NODES_SHOWN} more" if len(nodes) > MIXED_NODES_SHOWN else "")
            if kept.get("ops"):  # a network's own FX float ops: every op of those kinds
                text = (f"{rec.get('model')}: its {len(nodes)} {' and '.join(kept['ops'])} op(s) kept in float "
                        f"({shown}; set by {kept.get('from')})")
            else:
                text = (f"{rec.get('model')}: {len(nodes)} layer(s) kept in float "
                        f"({shown}; chosen by {kept.get('from') or 'hand'})")
            if text not in notes:
                notes.append(text)
    notes = [f"{VARIANT_TITLES[MIXED]}: {n}" for n in notes]
    for rec in records:  # QAT trained with float ops: its column is mixed precision too, say so
        q = quant_summary(rec) if rec is not None and rec.get("variant") == "qat" else {}
        ops, scopes = q.get("float_ops"), q.get("float_modules")
        what = []
        if ops:
            what.append(f"its {' and '.join(ops)} ops")
        if scopes:
            what.append(f"its {', '.join(scopes)} modules")
        text = f"{VARIANT_TITLES['qat']}: {rec.get('model')} keeps {' and '.join(what)} in float" if what else None
        if text and text not in notes:
            notes.append(text)
    return notes


def table2(rows: list[Row], backend: str, dataset: str) -> Table:
    acc_key, acc_title = accuracy_name(c for r in rows for c in r.cells.values() if c)
    variants = _variants_present(rows)
    short = acc_title.split(" ")[0]
    header = ["network"] + [f"{VARIANT_TITLES[v]}: {short} / size / FPS" for v in variants]
    csv_header = ["network", "variant", "status", "note", acc_key, "size_mb", "fps", "unstable"]
    md, cs, used = [], [], []
    for row in rows:
        cells = [row.label]
        for v in variants:
            rec = row.cells.get(v)
            if rec is not None:
                used.append(rec)
            if rec is not None and rec.get("status") == "ok":
                acc = accuracy(rec, acc_key)
                cells.append(f"{_num(None if acc is None else 100 * acc, 2)} / "
                             f"{_num(rec.get('size_mb'), 2)} MB / {_fps_text(rec)}{_float_mark(rec)}")
                cs.append([row.label, v, "ok", FLOAT_NOTE if nothing_quantized(rec) else "", acc,
                           rec.get("size_mb"), fps(rec), bool(rec.get("unstable"))])
            else:
                cells.append(reason(rec))
                cs.append([row.label, v, rec.get("status") if rec else "missing", reason(rec),
                           None, None, None, None])
        md.append(cells)
    used = used or [c for r in rows for c in r.cells.values() if c]
    return Table(f"table2_variants_{backend}", f"Table 2: INT8 variants on {backend} ({dataset})",
                 header, md, csv_header, cs,
                 footer(used, dataset) + _float_footer(used) + _mixed_footer(used) + _selection_footer(used)
                 + _qat_range_footer(used))


def table3(rows: list[Row], backend: str, dataset: str) -> Table:
    acc_key, acc_title = accuracy_name(c for r in rows for c in r.cells.values() if c)
    variants = _variants_present(rows)
    short = acc_title.split(" ")[0]
    header = ["network"] + [f"{VARIANT_TITLES[v]}: {short} change / size decrease / RAM decrease"
                            for v in variants]
    csv_header = ["network", "variant", "status", "note", f"{acc_key}_change_points",
                  "size_decrease_pct", "ram_decrease_pct"]
    md, cs, used = [], [], []
    for row in rows:
        base = row.ok("fp32")
        cells = [row.label]
        for v in variants:
            rec = row.cells.get(v)
            if rec is not None:
                used.append(rec)
            if rec is not None and rec.get("status") == "ok" and base is not None:
                a, b = accuracy(rec, acc_key), accuracy(base, acc_key)
                change = None if a is None or b is None else 100 * (a - b)
                size = decrease_pct(base.get("size_mb"), rec.get("size_mb"))
                ram = decrease_pct(base.get("peak_rss_mb"), rec.get("peak_rss_mb"))
                cells.append(f"{_signed(change, 2)} / {_num(size, 1)}% / {_num(ram, 1)}%{_float_mark(rec)}")
                cs.append([row.label, v, "ok", FLOAT_NOTE if nothing_quantized(rec) else "", change, size, ram])
            else:
                why = reason(rec) if rec is None or rec.get("status") != "ok" else \
                    "no FP32 baseline: " + reason(row.cells.get("fp32"))
                cells.append(why)
                cs.append([row.label, v, rec.get("status") if rec else "missing", why, None, None, None])
        if row.cells.get("fp32") is not None:
            used.append(row.cells["fp32"])
        md.append(cells)
    used = used or [c for r in rows for c in r.cells.values() if c]
    foot = (footer(used, dataset, timings=False) + _float_footer(used) + _mixed_footer(used)
            + _selection_footer(used) + _qat_range_footer(used))
    foot.append(f"Deltas against the FP32 record of the same network, backend, dataset, split, input size, "
                f"batch, threads and weights; {short} change in points, RAM = peak RSS of the cell process")
    return Table(f"table3_deltas_{backend}", f"Table 3: INT8 vs FP32 on {backend} ({dataset})",
                 header, md, csv_header, cs, foot)


# ---------------------------------------------------------------------------------------------
# the FP32 zoo across backends


def weights_text(rec: dict[str, Any]) -> str:
    """Where a cell's FP32 weights came from, in a few words: a trainer's checkpoint (recipe,
    epoch of the recipe's epochs, hours of training up to it), a file (an official release), or
    random weights (speed and size only)."""
    meta = rec.get("weights") if isinstance(rec.get("weights"), dict) else {}
    if not meta or meta.get("path") in (None, "", "random") or meta.get("weights") == "random":
        return "random (speed only)"
    if meta.get("recipe"):
        text = f"{meta['recipe']}, epoch {meta.get('epoch', '?')}"
        if meta.get("recipe_epochs"):
            text += f" of {meta['recipe_epochs']}"
        if meta.get("train_active_seconds") is not None:
            text += f" ({float(meta['train_active_seconds']) / 3600:.1f} h)"
        elif meta.get("train_seconds") is not None:  # older checkpoints: wall time, pauses included
            text += f" ({float(meta['train_seconds']) / 3600:.1f} h wall)"
        return text
    return f"file {str(meta.get('path', '?')).rsplit('/', 1)[-1]}"


def _artifact_kind(rec: dict[str, Any]) -> str | None:
    artifact = rec.get("artifact")
    return artifact.get("kind") if isinstance(artifact, dict) else None


def zoo_table(records: list[dict[str, Any]], dataset: str) -> Table:
    """Table 0: every network's FP32 cell on every backend in one row (issue #5's zoo table):
    weights, FP32 ONNX size, FPS per backend, accuracy, params, GMACs."""
    fp32 = [r for r in records if r.get("variant") == "fp32"]
    backends = sorted({str(r.get("backend")) for r in fp32})
    acc_key, acc_title = accuracy_name(fp32)
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for rec in fp32:
        groups.setdefault(row_key(rec), {}).setdefault(str(rec.get("backend")), []).append(rec)
    per_model: dict[str, int] = {}
    for key in groups:
        per_model[key[0]] = per_model.get(key[0], 0) + 1
    header = ["network", "weights", "ONNX size (MB)"] + [f"FPS {b}" for b in backends] + [acc_title, "params (M)", "GMACs"]
    csv_header = (["network", "input_hw", "weights", "onnx_size_mb"] + [f"fps_{b}" for b in backends]
                  + [f"unstable_{b}" for b in backends] + [acc_key, f"{acc_key}_backend", "params", "gmacs"])
    md, cs, used, spread = [], [], [], []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        cells = {b: pick(rs) for b, rs in groups[key].items()}
        oks = {b: c for b, c in cells.items() if c is not None and c.get("status") == "ok"}
        used += [c for c in cells.values() if c is not None]
        model, hw = key[0], key[3]
        label = str(model) if per_model[model] == 1 else \
            f"{model} ({hw[0]}x{hw[1]}, b{key[4]}, t{key[5]}, {key[6][:8] or '-'})"
        any_ok = next(iter(oks.values()), None)
        # The FP32 ONNX file's size (what ONNX Runtime, TensorRT and OpenVINO load); n/a without
        # an ok cell that ran it (a torch cell's state dict is another artifact).
        size_rec = next((c for c in oks.values() if _artifact_kind(c) == "onnx"), None)
        acc_backend = "torch" if "torch" in oks else (sorted(oks)[0] if oks else None)
        acc_rec = oks.get(acc_backend) if acc_backend else None
        accs = [accuracy(c, acc_key) for c in oks.values() if accuracy(c, acc_key) is not None]
        if len(accs) > 1:
            spread.append(100 * (max(accs) - min(accs)))
        params = (any_ok or {}).get("params")
        fps_cells = [(_fps_text(oks[b]) if b in oks else (reason(cells.get(b)) if b in cells else NOT_RUN))
                     for b in backends]
        acc = accuracy(acc_rec, acc_key)
        weights = weights_text(acc_rec or any_ok or next(c for c in cells.values() if c))
        md.append([label, weights,
                   _num((size_rec or {}).get("size_mb"), 2), *fps_cells,
                   _num(None if acc is None else 100 * acc, 2),
                   _num(None if params is None else params / 1e6, 2), _gmacs((any_ok or {}).get("gmacs"))])
        cs.append([label, f"{hw[0]}x{hw[1]}" if hw[0] is not None else "",
                   weights, (size_rec or {}).get("size_mb"),
                   *[fps(oks[b]) if b in oks else None for b in backends],
                   *[bool(oks[b].get("unstable")) if b in oks else None for b in backends],
                   acc, acc_backend, params, (any_ok or {}).get("gmacs")])
    foot = footer(used, dataset) + _selection_footer(used) + _qat_range_footer(used)
    foot.append(f"{acc_title.split(' ')[0]} of the torch cell (the reference), else of the first backend with an ok "
                f"cell" + (f"; the backends of a network differ by at most {max(spread):.2f} points" if spread else ""))
    foot.append("weights: recipe, selected epoch of the recipe's epochs (hours of training up to it without "
                "paused time; 'wall': the checkpoint only records wall time, pauses included), or the file an "
                "official release was imported from")
    return Table("table0_fp32_zoo", f"Table 0: the FP32 zoo ({dataset})", header, md, csv_header, cs, foot)

