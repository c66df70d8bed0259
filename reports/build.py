"""Comparison tables (Markdown, CSV) and plots (PNG) from stored benchmark records.

    python -m reports.build                                   # results/ -> reports/<dataset>/
    python -m reports.build --results results/camvid --dataset camvid --out reports/ --readme README.md

    from reports.build import build_reports
    paths = build_reports("results/", "camvid", "reports/")

Per backend: table1_fp32_<backend>, table2_variants_<backend>, table3_deltas_<backend> (.md and
.csv), pareto_<backend>.png, per_class_iou_<backend>.png (detection: per_class_ap_<backend>.png);
video.md / video.csv for video pipeline records (`python -m video.run`, `video.measure decode`);
and README.md, an index. `--readme README.md` also copies that index between the README's
`<!-- reports.build <dataset>: begin ... -->` and `<!-- reports.build <dataset>: end -->` lines.
Detection records (bench.run on a detection dataset) are reported with COCO mAP50-95 where
segmentation ones show mIoU; a dataset is one task, so one report never mixes them. Files are
written atomically. Numbers come only from records; nothing here imports a backend.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from bench.results import SCHEMA, read_records
from zoo.io import write_bytes

from reports import plots
from reports.tables import ReportError, Table, accuracy_name, build_rows, table1, table2, table3, zoo_table

KNOWN_SCHEMAS = tuple(range(1, SCHEMA + 1))


def load(results: str | Path) -> list[dict]:
    """Every record under `results`, all of a known schema version; else ReportError."""
    results = Path(results)
    try:
        records = read_records(results)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    if not records:
        raise ReportError(f"no result records in {results}: run `python -m bench.run --out {results}` first")
    unknown = [r for r in records if r.get("schema") not in KNOWN_SCHEMAS]
    if unknown:
        versions = sorted({str(r.get("schema")) for r in unknown})
        raise ReportError(
            f"{len(unknown)} record(s) in {results} have an unknown schema version ({', '.join(versions)}; "
            f"this reader knows {', '.join(map(str, KNOWN_SCHEMAS))}), e.g. {Path(unknown[0]['_path']).name}: "
            f"update the project or move them out")
    return records


def is_video(record: dict) -> bool:
    """A video pipeline record (`python -m video.run`: kind "video"; `video.measure decode`:
    "video-decode"), which has frames per second and stage times instead of cells' latency."""
    return str(record.get("kind", "")).startswith("video")


def video_section(records: list[dict], folder: Path) -> tuple[list[Path], str]:
    """The video records as one table (Markdown and CSV, `video.md` / `video.csv`)."""
    import csv
    import io

    from video.measure import markdown_table

    records = sorted(records, key=lambda r: (str(r.get("kind")), str(r.get("model")), str(r.get("variant")),
                                             str(r.get("created", r.get("_path")))))
    table = markdown_table(records)
    md, csv_path = folder / "video.md", folder / "video.csv"
    buf = io.StringIO()
    fields = ["kind", "model", "variant", "backend", "decoder", "measured_frames", "fps", "cpu_ms_per_frame",
              "overhead_pct", "stage_overhead_pct", "status", "error"]
    writer = csv.writer(buf)
    writer.writerow(fields + [f"{k}_median_ms" for k in ("decode_wait", "pre", "infer", "post")])
    for r in records:
        stages = r.get("stages_ms") or {}
        row = [(r.get("decoder") or {}).get("element") if k == "decoder" else r.get(k) for k in fields]
        row += [(stages.get(k) or {}).get("median") for k in ("decode_wait", "pre", "infer", "post")]
        writer.writerow(["" if v is None else v for v in row])
    write_bytes(md, (table + "\n").encode())
    write_bytes(csv_path, buf.getvalue().encode())
    section = "\n".join(["## video pipelines", "", table, "", f"CSV: [{csv_path.name}]({csv_path.name})", ""])
    return [md, csv_path], section


def build_reports(results: str | Path, dataset: str | None = None, out: str | Path = "reports") -> list[Path]:
    """Write the tables, plots and README.md index under `<out>/<dataset>/`; return the paths.
    `dataset=None` takes the only dataset present. Raises ReportError for unusable input.
    Video pipeline records (`python -m video.run`) get their own table, `video.md`."""
    records = load(results)
    # Decode-only video records name their dataset after the clip: they do not pick the dataset.
    datasets = sorted({str(r.get("dataset")) for r in records if not is_video(r)}
                      or {str(r.get("dataset")) for r in records if r.get("kind") == "video"}
                      or {str(r.get("dataset")) for r in records})
    if dataset is None:
        if len(datasets) > 1:
            raise ReportError(f"records of several datasets in {results} ({', '.join(datasets)}): pick one with --dataset")
        dataset = datasets[0]
    # `video.measure decode` names its dataset after the clip; it belongs with the clip's runs.
    video = [r for r in records if is_video(r) and (r.get("dataset") == dataset or r.get("kind") != "video")]
    records = [r for r in records if r.get("dataset") == dataset and not is_video(r)]
    if not records and not video:
        raise ReportError(f"no records for dataset {dataset!r} in {results} (found: {', '.join(datasets)})")
    folder = Path(out) / dataset
    written: list[Path] = []
    sections: list[str] = []
    if video:
        paths, section = video_section(video, folder)
        written += paths
        sections.append(section)
    if any(r.get("variant") == "fp32" for r in records):
        zoo = zoo_table(records, dataset)
        md, csv_path = folder / f"{zoo.name}.md", folder / f"{zoo.name}.csv"
        write_bytes(md, zoo.markdown().encode())
        write_bytes(csv_path, zoo.csv().encode())
        written += [md, csv_path]
        sections.append("\n".join(["## all backends", "", zoo.markdown(), f"CSV: [{csv_path.name}]({csv_path.name})", ""]))
    for backend in sorted({str(r.get("backend")) for r in records}):
        rows = build_rows([r for r in records if r.get("backend") == backend])
        tables: list[Table] = [table1(rows, backend, dataset), table2(rows, backend, dataset),
                               table3(rows, backend, dataset)]
        section = [f"## {backend}", ""]
        for t in tables:
            md, csv_path = folder / f"{t.name}.md", folder / f"{t.name}.csv"
            write_bytes(md, t.markdown().encode())
            write_bytes(csv_path, t.csv().encode())
            written += [md, csv_path]
            section += [t.markdown(), f"CSV: [{csv_path.name}]({csv_path.name})", ""]
        pareto = plots.pareto(rows, backend, dataset, folder / f"pareto_{backend}.png")
        # detection records (mAP) get a per-class AP heat map under its own name
        what = "IoU" if accuracy_name(r for r in records if r.get("backend") == backend)[0] == "miou" else "AP"
        heat = plots.per_class_iou(rows, backend, dataset, folder / f"per_class_{what.lower()}_{backend}.png")
        written += [pareto, heat]
        section += [f"![Pareto: accuracy vs latency on {backend}]({pareto.name})", "",
                    f"![Per-class {what} on {backend}]({heat.name})", ""]
        sections.append("\n".join(section))
    index = folder / "README.md"
    text = (f"# Benchmark report: {dataset}\n\nGenerated by `python -m reports.build` from "
            f"{len(records) + len(video)} record(s); every number comes from a stored record.\n\n"
            + "\n".join(sections))
    write_bytes(index, text.encode())
    written.append(index)
    return written


def readme_markers(dataset: str) -> tuple[str, str]:
    """The two lines between which `embed_in_readme` puts a dataset's report."""
    return (f"<!-- reports.build {dataset}: begin (generated; edit nothing in between) -->",
            f"<!-- reports.build {dataset}: end -->")


def readme_block(index: Path, readme: Path) -> str:
    """The report index `index` (reports/<dataset>/README.md) as a README section: its title
    dropped, headings one level deeper, links relative to the README's folder."""
    lines = index.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    folder = Path(os.path.relpath(index.parent.resolve(), readme.parent.resolve())).as_posix()
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "#" + line
        # local links (tables' CSVs, plots) point into the report folder
        out.append(re.sub(r"\]\(([^)/:#]+)\)", lambda m: f"]({folder}/{m.group(1)})", line))
    return "\n".join(out).strip("\n")


def embed_in_readme(readme: str | Path, index: str | Path, dataset: str) -> Path:
    """Replace the text between `readme_markers(dataset)` in `readme` with the report `index`.
    The README keeps no hand-typed number: rerunning this reproduces the block from the records."""
    readme, index = Path(readme), Path(index)
    begin, end = readme_markers(dataset)
    try:
        text = readme.read_text()
    except FileNotFoundError:
        raise ReportError(f"{readme} does not exist: give the README to embed the report in") from None
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReportError(f"{readme} needs exactly one pair of lines {begin!r} ... {end!r} (in that order) "
                          f"where the {dataset} report goes: add them")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_bytes(readme, (head + begin + "\n" + readme_block(index, readme) + "\n" + end + tail).encode())
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports.build", description=__doc__.split("\n\n")[0],
        epilog="example: python -m reports.build --results results/ --dataset camvid --out reports/")
    parser.add_argument("--results", default="results", help="folder of result records (default: results)")
    parser.add_argument("--dataset", default=None, help="dataset to report (default: the only one present)")
    parser.add_argument("--out", default="reports", help="output root; files go to <out>/<dataset>/ (default: reports)")
    parser.add_argument("--readme", default=None, metavar="README.md",
                        help="also put the report between this file's `<!-- reports.build <dataset>: begin ... -->` "
                             "and `<!-- reports.build <dataset>: end -->` lines")
    args = parser.parse_args(argv)
    try:
        paths = build_reports(args.results, args.dataset, args.out)
        if args.readme:
            index = next(p for p in paths if p.name == "README.md")
            paths.append(embed_in_readme(args.readme, index, index.parent.name))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
