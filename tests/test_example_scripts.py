"""The paper's table scripts run end to end at a tiny size (their numbers are not checked
here: the documentation reports full runs)."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, tmp_path, *args):
    subprocess.run([sys.executable, str(EXAMPLES / script), *args, "--output-dir",
                    str(tmp_path), "--device", "cpu"], check=True, timeout=600,
                   capture_output=True)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_table2_script_searches_k_and_reports_the_best(tmp_path):
    _run("table2_components.py", tmp_path, "--distributions", "biwi", "--n-components", "1",
         "2", "--n-samples", "120", "--cv", "2", "--embedding-dim", "8")
    rows = _rows(tmp_path / "table2.csv")
    assert [(r["distribution"], r["n_components"]) for r in rows] == [("biwi", "1"),
                                                                        ("biwi", "2")]
    assert sum(int(r["best"]) for r in rows) == 1  # exactly one K is the best
    for row in rows:
        errors = [float(row[f"cv_{angle}"]) for angle in ("pitch", "yaw", "roll")]
        assert all(math.isfinite(e) and 0 < e < 180 for e in errors), row


def test_table4_script_reports_every_fraction(tmp_path):
    _run("table4_training_size.py", tmp_path, "--n-samples", "200", "--fractions", "0.5",
         "1.0", "--embedding-dim", "8")
    rows = _rows(tmp_path / "table4.csv")
    assert [r["fraction"] for r in rows] == ["50%", "100%"]
    assert int(rows[0]["n_train"]) < int(rows[1]["n_train"])
    for row in rows:
        assert 0 < float(row["mean"]) < 180, row
