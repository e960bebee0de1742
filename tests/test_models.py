"""Real models (docs/models.md): the advice suggests the table's flags, and they build.

The table is read from docs/models.md, so the documentation and the test cannot drift apart.
One target (sm_86), one build job each, to keep CI time small.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from pathlib import Path

import pytest

from conftest import REPO, run_bundle


def _rows() -> dict:
    rows = {}
    for line in (REPO / "docs" / "models.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].endswith(".onnx") and "*tested*" in cells[4]:
            rows[cells[1]] = (shlex.split(cells[3].strip("`")), cells[2])
    return rows


ROWS = _rows()


def _model_path(file: str) -> Path:
    if file.startswith("silero"):
        # silero-vad's package imports torch: locate its files without importing it
        spec = importlib.util.find_spec("silero_vad")
        assert spec is not None, "silero-vad is not installed: pip install --no-deps silero-vad==6.2.3 (README Quickstart)"
        return Path(list(spec.submodule_search_locations)[0]) / "data" / file
    import rapidocr_onnxruntime

    return Path(os.path.dirname(rapidocr_onnxruntime.__file__)) / "models" / file


def test_table_marks_the_models_this_file_covers():
    assert set(ROWS) == {"ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx",
                         "ch_ppocr_mobile_v2.0_cls_infer.onnx", "silero_vad_op18_ifless.onnx"}


@pytest.mark.parametrize("file", sorted(ROWS))
def test_advice_suggests_the_table_flags_and_they_build(file, tmp_path):
    flags, inputs = ROWS[file]
    model = _model_path(file)
    assert model.is_file(), model
    shape_flags = [f for i, f in enumerate(flags) if f == "--shape" or (i and flags[i - 1] == "--shape")]
    other = [f for f in flags if f not in shape_flags]
    common = ("--name", "m", "--version", "1.0.0", "--target", "sm_86", "--jobs", "1", "--backend", "tensorrt-rtx")
    r = run_bundle("build", model, *common, *other, "--out", tmp_path / "advice")
    assert r.code == 3, r.err
    (line,) = r.err.strip().splitlines()  # every dynamic input in one line
    described = inputs.strip("`").split("`")[0].replace("…]", "")
    assert described in line, (described, line)
    assert shlex.split(line.split("your data has): ", 1)[1]) == shape_flags
    r = run_bundle("build", model, *common, *flags, "--out", tmp_path / "b")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "b" / "build.json").read_text())
    (engine,) = rec["engines"]
    assert engine["path"].startswith("engines/m_") and engine["header"]["cc"] == ["8.6"]
    if "--sample-value" in flags:
        assert rec["golden"]["values"]["sr"] == "16000 (--sample-value)" and rec["golden"]["warnings"] == []
