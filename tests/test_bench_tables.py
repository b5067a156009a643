"""Numbers become data: the benchmark figures in both READMEs are rendered from the recorded
run (experiments/bench/results/bench.json), not typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    path = ROOT / "experiments" / "bench" / "tables.py"
    spec = importlib.util.spec_from_file_location("bench_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_rendered_from_the_recorded_run():
    tables = _tables()
    result = json.loads(tables.RESULTS.read_text())
    for path, text in tables.updated(result, "results/bench.json").items():
        assert path.read_text() == text, f"{path} is stale: run experiments/bench/tables.py"


def test_rendering_follows_the_data():
    """A changed figure in the data changes the rendered table (the READMEs quote the data,
    not a copy of it)."""
    tables = _tables()
    result = json.loads(tables.RESULTS.read_text())
    before = tables.headline(result)
    result["main_job_s"] = result["main_job_s"] + 1000.0
    assert tables.headline(result) != before
    assert f"{result['main_job_s']:.1f} s" in tables.headline(result)
