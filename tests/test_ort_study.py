"""bench.ort_study end to end on a tiny CamVid-layout set: every variant built, timed side by side,
scored, profiled; the record and its Markdown written; bad input refused."""
from __future__ import annotations

import json

import pytest

from bench.ort_study import STUDY_VARIANTS, cpu_tag, main, run_study
from tests.conftest import write_segnet_split


@pytest.fixture(scope="module")
def camvid16(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid16")
    write_segnet_split(root, "train", 16, seed=3)  # calibration needs at least 16 images
    write_segnet_split(root, "val", 3, seed=4)
    return root


def test_study_measures_every_variant(camvid16, tmp_path):
    rec = run_study("ddrnet", data="camvid", data_root=str(camvid16), weights="random", input_hw=(64, 64),
                    threads=1, rounds=2, iters=2, warmup=1, images=3, calib_images=16, calib_method="minmax",
                    torch_int8=True, openvino=False, artifacts=str(tmp_path / "artifacts"), out=str(tmp_path / "results"),
                    progress=False, log=lambda m: None)
    rows = {v["variant"]: v for v in rec["variants"]}
    # OpenVINO rows: tests/test_openvino_backend.py::test_study_openvino_rows (a process of its own)
    assert set(rows) == set(STUDY_VARIANTS) - {"openvino-fp32", "openvino-int8"} and rec["skipped"] == {}
    for name, row in rows.items():
        assert row["latency_ms"]["n"] == 4 and row["latency_ms"]["median"] > 0, name
        assert 0 <= row["miou"] <= 100 and 0 <= row["agreement"] <= 1, name
        assert row["speedup"]["vs_fp32"] > 0
        assert ("op_ms" in row) == (name != "torch-fx-int8")
        assert row["runtime"] == {"torch-fx-int8": "torch", "openvino-fp32": "openvino",
                                  "openvino-int8": "openvino"}.get(name, "onnxruntime"), name
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["speedup"]["vs_fp32"] == 1.0
    assert "QLinearConv" in rows["edgezoo"]["op_ms"] and "BatchNormalization" not in rows["edgezoo"]["op_ms"]
    assert "BatchNormalization" in rows["edgezoo-plain"]["op_ms"]  # the rewrite's whole point
    for name in ("ort-defaults", "ort-u8s8", "edgezoo", "torch-fx-int8"):
        assert rows[name]["bytes"] < 0.35 * rows["fp32"]["bytes"], name
    json_path, md_path = map(__import__("pathlib").Path, rec["paths"])
    assert json.loads(json_path.read_text())["model"] == "ddrnet23_slim"
    assert json_path.name.endswith(f"_{cpu_tag()}.json")  # studies of two CPUs never overwrite each other
    text = md_path.read_text()
    assert all(name in text for name in rows) and "Interleaved timing" in text


def test_study_cli_errors(capsys):
    assert main(["--model", "ddrnet", "--rounds", "0"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
    for argv, message in ((["--model", "nonet", "--weights", "random"], "unknown model"),
                          (["--model", "yolov5n", "--data", "synthetic-det", "--weights", "random"],
                           "segmentation networks")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
