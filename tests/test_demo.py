"""`python -m src.demo`'s step loop (the steps themselves are the commands tested elsewhere; the whole demo is
hand-run, BENCHMARKS.md): later steps read earlier results, and a finished demo leaves one summary."""
from __future__ import annotations

import json

from src import demo


def test_later_steps_read_earlier_ones_and_one_summary_is_left(tmp_path, monkeypatch):
    def first(sample, out):
        return {"value": 7}

    def second(sample, out):  # as step_animate reads step_personalize's result
        return {"read": json.loads((out / "summary.partial.json").read_text())["first"]["value"]}

    monkeypatch.setattr(demo, "STEPS", [("first", first), ("second", second)])
    out = tmp_path / "demo"
    assert demo.main(["--sample", str(tmp_path / "sample"), "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["first"]["value"] == 7 and summary["second"]["read"] == 7
    assert all(step["seconds"] >= 0 for step in summary.values())
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no partial summary beside it
