"""reports.build: golden tables from hand-made records in tests/fixtures/records (fast, torch-free)."""
from __future__ import annotations

import csv
import os
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reports.build import build_reports, main
from reports.tables import ReportError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "records"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FOOTER = """\
- Dataset: camvid, split val; input 360x480; batch 1; threads 2; device cpu
- CPU: Test CPU 8-core (avx2); GPU: none
- Versions: python 3.11.7, torch 2.4.0, onnxruntime 1.18.0, onnx 1.16.1, numpy 1.26.4
- Commit: 0123456789ab; date: 2026-11-21; profile: release
"""

TABLE1 = """\
### Table 1: FP32 on onnxruntime (camvid)

| network | size (MB) | FPS | mIoU (%) | params (M) | GMACs |
|---|---|---|---|---|---|
| ddrnet23_slim | 22.76 | 25.0 | 72.15 | 5.70 | 4.52 |
| espnet | 1.44 | 40.0 | 63.45 | 0.36 | 2.03 |

""" + FOOTER + """\
- FPS*: unstable timing (model-only latency CV above 0.1)
"""

TABLE3 = """\
### Table 3: INT8 vs FP32 on onnxruntime (camvid)

| network | QAT: mIoU change / size decrease / RAM decrease | static PTQ: mIoU change / size decrease / RAM decrease \
| dynamic PTQ: mIoU change / size decrease / RAM decrease |
|---|---|---|---|
| ddrnet23_slim | not run | -1.13 / 74.0% / 50.0% | -0.26 / 74.5% / 37.5% |
| espnet | not run | -3.34 / 66.7% / 16.7% | failed: cell process killed by SIGSEGV (signal 11) while running... |

""" + FOOTER + """\
- Deltas against the FP32 record of the same network, backend, dataset, split, input size, batch, threads \
and weights; mIoU change in points, RAM = peak RSS of the cell process
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    paths = build_reports(FIXTURES, "camvid", out)
    return out / "camvid", paths


def test_layout(built):
    folder, paths = built
    expected = {f"{stem}_{b}.{ext}" for b in ("onnxruntime", "tensorrt")
                for stem in ("table1_fp32", "table2_variants", "table3_deltas") for ext in ("md", "csv")}
    expected |= {f"{p}_{b}.png" for b in ("onnxruntime", "tensorrt") for p in ("pareto", "per_class_iou")}
    expected |= {"README.md", "table0_fp32_zoo.md", "table0_fp32_zoo.csv"}
    assert {p.name for p in paths} == expected
    assert all(p.parent == folder for p in paths)
    assert {p.name for p in folder.iterdir()} == expected   # no temporary files left behind


def test_table1_golden(built):
    assert (built[0] / "table1_fp32_onnxruntime.md").read_text() == TABLE1


def test_table3_golden(built):
    assert (built[0] / "table3_deltas_onnxruntime.md").read_text() == TABLE3


def test_newest_ok_record_wins(built):
    # the older ddrnet FP32 record (20 FPS, mIoU 70.00) is superseded by the newer one (25 FPS)
    text = (built[0] / "table1_fp32_onnxruntime.md").read_text()
    assert "| ddrnet23_slim | 22.76 | 25.0 |" in text and "70.00" not in text


def test_table2_cells_and_unstable_mark(built):
    text = (built[0] / "table2_variants_onnxruntime.md").read_text()
    assert "| ddrnet23_slim | not run | 71.02 / 5.92 MB / 50.0* | 71.89 / 5.80 MB / 15.6 |" in text
    assert "| espnet | not run | 60.11 / 0.48 MB / 62.5 | failed: cell process killed by SIGSEGV" in text
    assert "- FPS*: unstable timing" in text


def test_skipped_cell_shows_reason(built):
    text = (built[0] / "table1_fp32_tensorrt.md").read_text()
    assert "| ddrnet23_slim | skipped: tensorrt not installed: pip install tensorrt | - | - | - | - |" in text
    assert "device cuda" in text


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_columns_and_values(built):
    folder = built[0]
    t1 = _csv(folder / "table1_fp32_onnxruntime.csv")
    assert list(t1[0]) == ["network", "input_hw", "batch", "threads", "status", "note", "size_mb", "fps",
                           "unstable", "miou", "params", "gmacs"]
    assert [r["network"] for r in t1] == ["ddrnet23_slim", "espnet"]
    assert float(t1[0]["fps"]) == 25.0 and float(t1[0]["miou"]) == 0.7215 and t1[0]["params"] == "5695467"
    t2 = _csv(folder / "table2_variants_onnxruntime.csv")
    assert list(t2[0]) == ["network", "variant", "status", "note", "miou", "size_mb", "fps", "unstable"]
    static = next(r for r in t2 if r["network"] == "ddrnet23_slim" and r["variant"] == "static")
    assert static["unstable"] == "True"
    failed = next(r for r in t2 if r["network"] == "espnet" and r["variant"] == "dynamic")
    assert failed["status"] == "failed" and failed["note"].startswith("failed: cell process killed by SIGSEGV")
    t3 = _csv(folder / "table3_deltas_onnxruntime.csv")
    assert list(t3[0]) == ["network", "variant", "status", "note", "miou_change_points", "size_decrease_pct",
                           "ram_decrease_pct"]
    row = next(r for r in t3 if r["network"] == "espnet" and r["variant"] == "static")
    assert float(row["miou_change_points"]) == pytest.approx(-3.34)
    assert float(row["size_decrease_pct"]) == pytest.approx(100 * (1.44 - 0.48) / 1.44)
    assert float(row["ram_decrease_pct"]) == pytest.approx(100 * 30 / 180)


def test_pngs_written(built):
    for name in ("pareto_onnxruntime.png", "per_class_iou_onnxruntime.png", "pareto_tensorrt.png",
                 "per_class_iou_tensorrt.png"):
        data = (built[0] / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name


def test_readme_index(built):
    text = (built[0] / "README.md").read_text()
    assert TABLE1 in text and TABLE3 in text
    assert "](pareto_onnxruntime.png)" in text and "](per_class_iou_tensorrt.png)" in text
    assert "](table2_variants_onnxruntime.csv)" in text


def test_pareto_front():
    from reports.plots import pareto_front

    assert pareto_front([(10, 70), (20, 72), (15, 60), (30, 71), (5, 50)]) == [(5, 50), (10, 70), (20, 72)]


def test_best_int8_is_highest_accuracy_ok_record():
    from bench.results import read_records
    from reports.plots import best_int8
    from reports.tables import build_rows

    rows = build_rows([r for r in read_records(FIXTURES) if r["backend"] == "onnxruntime"])
    best = {row.model: best_int8(row) for row in rows}
    assert best["ddrnet23_slim"]["variant"] == "dynamic"      # 71.89 > 71.02
    assert best["espnet"]["variant"] == "static"              # dynamic failed
    ddrnet = next(row for row in rows if row.model == "ddrnet23_slim")
    ddrnet.cells["dynamic"] = {**ddrnet.cells["dynamic"], "artifact": {"quant": {"is_int8": False}}}
    assert best_int8(ddrnet)["variant"] == "static"  # a float "dynamic" cell is not INT8


def test_empty_folder_error(tmp_path):
    with pytest.raises(ReportError, match="no result records"):
        build_reports(tmp_path, "camvid", tmp_path / "out")


def test_missing_folder_error(tmp_path):
    with pytest.raises(ReportError, match="no results at"):
        build_reports(tmp_path / "nope", "camvid", tmp_path / "out")


def test_unknown_schema_error(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES, results)
    rec = json.loads((FIXTURES / "espnet__fp32__onnxruntime.json").read_text())
    rec["schema"] = 99
    (results / "future.json").write_text(json.dumps(rec))
    with pytest.raises(ReportError, match=r"unknown schema version \(99;.*future\.json"):
        build_reports(results, "camvid", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_error(tmp_path):
    with pytest.raises(ReportError, match="no records for dataset 'cityscapes'.*found: camvid"):
        build_reports(FIXTURES, "cityscapes", tmp_path / "out")


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["--results", str(FIXTURES), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "camvid" / "table1_fp32_onnxruntime.md").is_file()
    capsys.readouterr()
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results at") and err.count("\n") == 1


def test_cli_subprocess_is_torch_free(tmp_path):
    (tmp_path / "empty").mkdir()
    code = ("import sys, runpy; sys.argv = ['reports.build', '--results', sys.argv[1], '--out', sys.argv[2]];\n"
            "try:\n    runpy.run_module('reports.build', run_name='__main__')\n"
            "except SystemExit as e:\n    assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
            "    raise\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty"), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no result records in")
    proc = subprocess.run([sys.executable, "-c", "import sys, reports.build; "
                           "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _video_record(kind: str, variant: str, status: str = "ok", **extra) -> dict:
    rec = {"schema": 2, "kind": kind, "dataset": "camvid", "model": "ddrnet23_slim", "variant": variant,
           "backend": "onnxruntime", "input_hw": [360, 480], "status": status, "error": None,
           "decoder": {"element": "avdec_h264", "hardware": False}, "measured_frames": 295,
           "fps": 32.2, "cpu_ms_per_frame": 61.7, "overhead_pct": 10.9, "stage_overhead_pct": 9.1,
           "stages_ms": {"decode_wait": {"median": 0.1}, "pre": {"median": 0.8}, "infer": {"median": 27.5},
                         "post": {"median": 1.9}}}
    rec.update(extra)
    return rec


def test_video_records_get_their_own_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "static.json").write_text(json.dumps(_video_record("video", "static")))
    skipped = _video_record("video-decode", "hw", status="skipped", error="no hardware H.264 decoder",
                            dataset="clip360", decoder={}, fps=None, stages_ms={})
    (results / "hw.json").write_text(json.dumps(skipped))
    paths = build_reports(results, None, tmp_path / "out")   # the clip's dataset does not count
    folder = tmp_path / "out" / "camvid"
    assert folder / "video.md" in paths and folder / "video.csv" in paths
    md = (folder / "video.md").read_text()
    assert "32.2" in md and "27.50" in md and "skipped: no hardware H.264 decoder" in md
    rows = (folder / "video.csv").read_text().splitlines()
    assert rows[0].startswith("kind,model,variant,backend,decoder,measured_frames,fps,cpu_ms_per_frame")
    assert len(rows) == 3 and any(r.startswith("video,ddrnet23_slim,static,onnxruntime,avdec_h264,295,32.2,61.7")
                                  for r in rows)
    index = (folder / "README.md").read_text()
    assert "## video pipelines" in index and "from 2 record(s)" in index


def test_video_records_next_to_cells(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES, results)
    (results / "video.json").write_text(json.dumps(_video_record("video", "static")))
    paths = build_reports(results, "camvid", tmp_path / "out")
    names = {p.name for p in paths}
    assert {"video.md", "table1_fp32_onnxruntime.md"} <= names


def test_a_variant_that_quantized_nothing_is_marked_float(tmp_path):
    """PyTorch dynamic quantization of a conv-only network leaves it float: Tables 2 and 3 say so
    (mark, footer, CSV note) instead of passing it off as INT8."""
    records = tmp_path / "records"
    shutil.copytree(FIXTURES, records)
    for variant, quant in (("fp32", None), ("dynamic", {"variant": "dynamic", "runtime": "torch", "int8_modules": 0,
                                                         "float_convs": 55, "is_int8": False})):
        rec = json.loads((FIXTURES / f"ddrnet23_slim__{variant}__onnxruntime.json").read_text())
        rec["backend"] = "torch"
        rec["artifact"] = {**(rec.get("artifact") or {}), "quant": quant}
        (records / f"ddrnet23_slim__{variant}__torch.json").write_text(json.dumps(rec))
    build_reports(records, "camvid", tmp_path / "out")
    t2 = (tmp_path / "out" / "camvid" / "table2_variants_torch.md").read_text()
    t3 = (tmp_path / "out" / "camvid" / "table3_deltas_torch.md").read_text()
    assert "MB / 15.6 †" in t2 and "- †: float: nothing quantized" in t2
    assert "% †" in t3 and "- †: float: nothing quantized" in t3
    assert [r["note"] for r in _csv(tmp_path / "out" / "camvid" / "table2_variants_torch.csv")
            if r["variant"] == "dynamic"] == ["float: nothing quantized"]
    # The ONNX Runtime dynamic cell (ConvInteger) is INT8 and carries no mark.
    assert "†" not in (tmp_path / "out" / "camvid" / "table2_variants_onnxruntime.md").read_text()


def test_weights_selected_on_the_reported_split_are_named_in_the_footer(tmp_path):
    """A trainer's best.pt picked on val and reported on val is optimistic: the tables say so for
    the FP32 weights and for a QAT checkpoint, and say nothing for weights picked elsewhere."""
    records = tmp_path / "records"
    shutil.copytree(FIXTURES, records)
    fp32 = records / "ddrnet23_slim__fp32__onnxruntime.json"
    rec = json.loads(fp32.read_text())
    rec["weights"] = {**(rec.get("weights") or {}), "epoch": 190, "selected_on_split": "val"}
    fp32.write_text(json.dumps(rec))
    build_reports(records, "camvid", tmp_path / "out")
    t1 = (tmp_path / "out" / "camvid" / "table1_fp32_onnxruntime.md").read_text()
    assert "- Selected on the reported split: ddrnet23_slim FP32 weights (epoch 190)" in t1
    assert "espnet FP32" not in t1

    rec["weights"]["selected_on_split"] = "train"
    fp32.write_text(json.dumps(rec))
    qat = json.loads((records / "ddrnet23_slim__static__onnxruntime.json").read_text())
    qat.update(variant="qat", artifact={"quant": {"variant": "qat", "epochs": 0, "selected_on_split": "val"}})
    (records / "ddrnet23_slim__qat__onnxruntime.json").write_text(json.dumps(qat))
    build_reports(records, "camvid", tmp_path / "out2")
    t1 = (tmp_path / "out2" / "camvid" / "table1_fp32_onnxruntime.md").read_text()
    t2 = (tmp_path / "out2" / "camvid" / "table2_variants_onnxruntime.md").read_text()
    assert "Selected on the reported split" not in t1
    assert "- Selected on the reported split: ddrnet23_slim QAT checkpoint (epoch 0)" in t2


def test_qat_cells_whose_ranges_validation_moved_are_named_in_the_footer():
    from reports.tables import _qat_range_footer

    def qat(model, fixed):
        return {"model": model, "variant": "qat", "artifact": {"quant": {"ranges_fixed_in_validation": fixed}}}

    (line,) = _qat_range_footer([qat("espnet_p2q8", False), qat("espnet_p2q8", False), qat("pidnet_s", True), None,
                                 {"model": "ddrnet23_slim", "variant": "static", "artifact": {"quant": {}}}])
    assert "validation images moved" in line and line.count("espnet_p2q8") == 1 and "pidnet_s" not in line
    assert "ddrnet23_slim" not in line and "--force" in line
    assert _qat_range_footer([qat("pidnet_s", True)]) == []
    assert _qat_range_footer([{**qat("yolov5n", False), "task": "detection"}]) == []  # always paused there


def test_zoo_table_puts_every_backend_of_a_network_in_one_row(tmp_path):
    records = tmp_path / "records"
    shutil.copytree(FIXTURES, records)
    ort = json.loads((records / "ddrnet23_slim__fp32__onnxruntime.json").read_text())
    torch_rec = {**ort, "backend": "torch", "fps": 12.5, "unstable": True, "size_mb": 22.9, "timestamp": ort["timestamp"],
                 "metrics": {**ort["metrics"], "miou": ort["metrics"]["miou"] + 0.004}}
    torch_rec["weights"] = {"path": "trained/x/best.pt", "recipe": "ddrnet", "epoch": 190, "recipe_epochs": 220,
                            "train_seconds": 25200}
    (records / "ddrnet23_slim__fp32__torch.json").write_text(json.dumps(torch_rec))
    build_reports(records, "camvid", tmp_path / "out")
    text = (tmp_path / "out" / "camvid" / "table0_fp32_zoo.md").read_text()
    header = [line for line in text.splitlines() if line.startswith("| network")][0]
    assert header.startswith("| network | weights | ONNX size (MB) | FPS onnxruntime | FPS tensorrt | FPS torch | mIoU (%)")
    row = [line for line in text.splitlines() if line.startswith("| ddrnet23_slim |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    # size of the ONNX file (ORT cell), FPS per backend, the torch cell's mIoU, weights provenance
    assert cells[2] == "22.76" and cells[3] == "25.0" and cells[5] == "12.5*"
    assert cells[6] == f"{100 * torch_rec['metrics']['miou']:.2f}"
    assert cells[1] == "ddrnet, epoch 190 of 220 (7.0 h wall)"
    assert "differ by at most 0.40 points" in text
    espnet = [line for line in text.splitlines() if line.startswith("| espnet |")][0]
    assert "not run" in espnet  # no torch cell for it
    from reports.tables import weights_text

    assert weights_text({"weights": {"weights": "random", "seed": 0}, "weights_sha256": "ab" * 32}) == \
        "random (speed only)"
    assert weights_text({"weights": {"path": "../shared/weights/x.pth", "sha256": "c" * 64}}) == "file x.pth"
    # no ok cell that ran the ONNX file: no ONNX size (a torch state dict is not one)
    only_torch = tmp_path / "only_torch"
    only_torch.mkdir()
    (only_torch / "a.json").write_text(json.dumps({**torch_rec, "artifact": {"kind": "torch", "size_mb": 22.8}}))
    build_reports(only_torch, "camvid", tmp_path / "out2")
    row = [line for line in (tmp_path / "out2" / "camvid" / "table0_fp32_zoo.md").read_text().splitlines()
           if line.startswith("| ddrnet23_slim |")][0]
    assert [c.strip() for c in row.strip("|").split("|")][2] == "n/a"


def test_bench_records_a_best_checkpoint_as_selected_on_its_split():
    from bench.runner import _meta_summary

    best = {"model": "ddrnet23_slim", "epoch": 190, "split": "val", "metrics": {"miou": 0.66}}
    assert _meta_summary(best, "trained/x/best.pt")["selected_on_split"] == "val"
    assert "selected_on_split" not in _meta_summary(best, "trained/x/last.pt")
    assert "selected_on_split" not in _meta_summary({"model": "espnet"}, "w/espnet.pth")  # official: unknown
    trained = _meta_summary({**best, "recipe": {"name": "ddrnet", "epochs": 220}, "train_seconds": 25200.0},
                            "trained/x/best.pt")
    assert (trained["recipe"], trained["recipe_epochs"], trained["train_seconds"]) == ("ddrnet", 220, 25200.0)


def test_readme_embedding_replaces_only_the_marked_block(tmp_path):
    from reports.build import readme_markers

    begin, end = readme_markers("camvid")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nintro\n\n{begin}\nstale text 99.99\n{end}\n\n## After\n")
    out = tmp_path / "reports"
    assert main(["--results", str(FIXTURES), "--dataset", "camvid", "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Project\n\nintro\n\n" + begin + "\n") and text.endswith(end + "\n\n## After\n")
    assert "stale text" not in text and "# Benchmark report" not in text
    assert "#### Table 1: FP32 on onnxruntime (camvid)" in text and "\n### onnxruntime\n" in text
    assert "| ddrnet23_slim | 22.76 | 25.0 | 72.15 | 5.70 | 4.52 |" in text
    assert "](reports/camvid/pareto_onnxruntime.png)" in text
    assert "](reports/camvid/table1_fp32_onnxruntime.csv)" in text
    first = text
    assert main(["--results", str(FIXTURES), "--dataset", "camvid", "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == first  # idempotent


def test_readme_without_markers_is_a_one_line_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    assert main(["--results", str(FIXTURES), "--dataset", "camvid", "--out", str(tmp_path / "r"),
                 "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "reports.build camvid: begin" in err and "add them" in err and len(err.strip().splitlines()) == 1
    assert readme.read_text() == "# Project\n"


def test_committed_readme_report_matches_the_committed_records(tmp_path):
    """The README's CamVid report is exactly what reports.build makes of the committed records:
    no number in it was typed by hand or left behind by an older sweep."""
    from reports.build import build_reports, readme_block, readme_markers

    records = REPO / "results" / "camvid"
    begin, end = readme_markers("camvid")
    text = (REPO / "README.md").read_text()
    if begin not in text:
        pytest.skip("the README embeds no CamVid report yet")
    assert records.is_dir(), "README embeds a CamVid report but results/camvid (its records) is not committed"
    paths = build_reports(records, "camvid", tmp_path)
    index = next(p for p in paths if p.name == "README.md")
    # links are checked apart: the fresh build lives in tmp_path, the committed one in reports/
    fresh = readme_block(index, REPO / "README.md")
    fresh = fresh.replace(Path(os.path.relpath(index.parent, REPO)).as_posix() + "/", "reports/camvid/")
    embedded = text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    assert embedded == fresh, "README's report is stale: rerun python -m reports.build --results results/camvid " \
                              "--dataset camvid --out reports/ --readme README.md"


def test_static_ptq_with_float_layers_gets_its_own_column(tmp_path):
    """A --keep-float-from static cell does not replace the all-INT8 one: Table 2 and 3 show both,
    and the footer lists the layers kept in float."""
    records = tmp_path / "records"
    shutil.copytree(FIXTURES, records)
    rec = json.loads((FIXTURES / "espnet__static__onnxruntime.json").read_text())
    rec["timestamp"] = "2099-01-01T00:00:00Z"  # newer than the plain static cell
    rec["metrics"] = {**rec["metrics"], "miou": 0.6}
    rec["artifact"] = {**(rec.get("artifact") or {}),
                       "quant": {"variant": "static", "kept_float": {"from": "sens.json", "nodes": ["/a/Conv", "/b/Conv"]}}}
    (records / "espnet__static__onnxruntime__mixed.json").write_text(json.dumps(rec))
    build_reports(records, "camvid", tmp_path / "out")
    t2 = (tmp_path / "out" / "camvid" / "table2_variants_onnxruntime.md").read_text()
    t3 = (tmp_path / "out" / "camvid" / "table3_deltas_onnxruntime.md").read_text()
    assert "static PTQ, mixed precision: mIoU / size / FPS" in t2
    espnet = next(line for line in t2.splitlines() if line.startswith("| espnet"))
    assert "| 60.00 / " in espnet and "not run" in espnet  # mixed cell; ddrnet's and QAT are not run
    assert "60.00 / " not in next(line for line in t2.splitlines() if line.startswith("| ddrnet23_slim"))
    assert "- static PTQ, mixed precision: espnet: 2 layer(s) kept in float (/a/Conv, /b/Conv; chosen by sens.json)" in t2
    assert "mixed precision: mIoU change" in t3
    # without such records the column is absent (the golden tables above)
    assert "mixed" not in (tmp_path / "out" / "camvid" / "table1_fp32_onnxruntime.md").read_text()


def test_older_records_of_a_best_checkpoint_count_as_selected_on_val():
    from reports.tables import selected_on

    assert selected_on({"path": "trained/x/best.pt", "val_miou_at_training": 0.66}) == "val"
    assert selected_on({"checkpoint": "/c/qat-x/best.pt", "val_map50_95_at_training": 0.3}) == "val"
    assert selected_on({"path": "trained/x/last.pt", "val_miou_at_training": 0.66}) is None
    assert selected_on({"path": "../shared/weights/espnet.pth"}) is None
    assert selected_on({"selected_on_split": "train"}) == "train"


def test_mixed_precision_footer_names_a_few_float_layers_and_counts_the_rest():
    from reports.tables import _mixed_footer

    rec = {"model": "espnet", "variant": "static",
           "artifact": {"quant": {"kept_float": {"from": "s.json", "nodes": [f"/n{i}/Conv" for i in range(142)]}}}}
    (line,) = _mixed_footer([rec, rec])
    assert "142 layer(s) kept in float (/n0/Conv, /n1/Conv" in line and "/n5/Conv and 136 more; chosen by s.json" in line


def test_mixed_precision_footer_names_a_networks_float_ops_and_qat_trained_with_them():
    """A torch static cell whose network keeps op kinds in float (`fx_float_ops`) is mixed
    precision; a QAT cell trained with them gets its own footer line, once."""
    from reports.tables import MIXED, _mixed_footer, report_variant

    static = {"model": "espnet", "variant": "static",
              "artifact": {"quant": {"kept_float": {"from": "ESPNet.fx_float_ops (add, cat)", "ops": ["add", "cat"],
                                                    "nodes": ["cat", "add", "add_1"]}}}}
    qat = {"model": "espnet", "variant": "qat", "artifact": {"quant": {"float_ops": ["add", "cat"]}}}
    plain_qat = {"model": "ddrnet", "variant": "qat", "artifact": {"quant": {}}}
    assert report_variant(static) == MIXED and report_variant(qat) == "qat"
    lines = _mixed_footer([static, qat, qat, plain_qat])
    assert lines == ["static PTQ, mixed precision: espnet: its 3 add and cat op(s) kept in float (cat, add, add_1; "
                     "set by ESPNet.fx_float_ops (add, cat))",
                     "QAT: espnet keeps its add and cat ops in float"]


def test_float_mark_covers_runtime_without_int8_layers():
    """A dynamic file that OpenVINO ran with float convolutions is marked float, never INT8."""
    from reports.tables import nothing_quantized

    ov_dynamic = {"variant": "dynamic", "runtime": {"int8_compute_layers": 0},
                  "artifact": {"quant": {"graph": {"quantized_convs": 55, "conv_integer": 55}}}}
    assert nothing_quantized(ov_dynamic)
    assert not nothing_quantized({**ov_dynamic, "runtime": {"int8_compute_layers": 55}})
    assert not nothing_quantized({"variant": "fp32", "runtime": {"int8_compute_layers": 0}})
    from reports.tables import _float_footer

    (line,) = _float_footer([ov_dynamic, None])
    assert "OpenVINO compiles" in line and "Linear/LSTM" not in line


def test_footer_warns_when_timings_come_from_several_machines():
    from reports.tables import footer

    def rec(model, cpu, flags=()):
        return {"model": model, "split": "val", "input_hw": [360, 480], "batch": 1, "threads": 2, "device": "cpu",
                "timestamp": "2026-11-30T00:00:00", "env": {"cpu": {"model": cpu, "flags": list(flags)}}}

    one = footer([rec("a", "Xeon"), rec("b", "Xeon")], "camvid")
    assert not any("machines" in line for line in one)
    lines = footer([rec("a", "Xeon"), rec("b", "EPYC"), rec("c", "Xeon")], "camvid")
    (warning,) = [line for line in lines if "machines" in line]
    assert "2 machines" in warning and "Xeon: a, c" in warning and "EPYC: b" in warning
    # one model name, two machines: told apart by their widest vector extension
    lines = footer([rec("a", "EPYC", ["avx2", "avx"]), rec("b", "EPYC", ["avx2", "avx512f", "avx512_vnni"])], "camvid")
    (warning,) = [line for line in lines if "machines" in line]
    assert "EPYC (avx2): a" in warning and "EPYC (avx512_vnni): b" in warning
    assert not any("machines" in line for line in footer([rec("a", "Xeon"), rec("b", "EPYC")], "camvid",
                                                         timings=False))
