"""The study plan: N from effect size and power, progress against targets, affordability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcourier.accounting.plan import load_plan, sample_size
from qcourier.cli import collect, report, submit
from qcourier.errors import UsageError

EXAMPLE = """end = 2027-02-28
keys = [0, 1, 2]
[targets.deployment]
effect_size = 0.44
power = 0.8
method = "paired"
[targets.surface_code]
sessions = 12
[targets.bell]
sessions = 5
"""


def test_documented_example_gives_42_heartbeats(tmp_path: Path):
    assert sample_size(0.44, 0.8, 0.05, "paired") == 42
    assert sample_size(0.44, method="two-sample") > 2 * 42
    path = tmp_path / "plan.toml"
    path.write_text(EXAMPLE)
    plan = load_plan(path)
    assert {t.experiment: t.sessions for t in plan.targets} == {
        "deployment": 42, "surface_code": 12, "bell": 5}
    assert plan.keys == [0, 1, 2]


def test_bad_plan_is_one_line_usage_error(tmp_path: Path):
    path = tmp_path / "plan.toml"
    path.write_text("[targets.x]\nfoo = 1\n")
    with pytest.raises(UsageError, match="needs sessions or effect_size"):
        load_plan(path)
    with pytest.raises(UsageError, match="not found"):
        load_plan(tmp_path / "missing.toml")


def test_report_shows_progress_against_plan(invoke, tmp_path: Path):
    (tmp_path / "qcourier-plan.toml").write_text(EXAMPLE)
    invoke(submit.main, ["--experiment", "bell", "--shots", "100", "--repeat", "2"])
    assert invoke(collect.main, []).exit_code == 0
    text = invoke(report.main, []).output
    assert "bell: 2/5 (declared)" in text and "deployment: 0/42" in text
    data = json.loads(invoke(report.main, ["--json"]).output)["plan"]
    bell = next(t for t in data["targets"] if t["experiment"] == "bell")
    assert bell["remaining_sessions"] == 3 and bell["remaining_qpu_seconds"] > 0
    assert data["affordable"] is None  # no heartbeat job yet: its cost is unknown


def test_budget_shows_plan(invoke, tmp_path: Path):
    from qcourier.cli import budget

    plan = tmp_path / "my-plan.toml"
    plan.write_text('keys = [0]\n[targets.bell]\nsessions = 3\n')
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    assert invoke(collect.main, []).exit_code == 0
    result = invoke(budget.main, ["--no-service", "--plan", plan])
    assert result.exit_code == 0 and "bell: 1/3 (declared)" in result.output
    data = json.loads(invoke(budget.main, ["--no-service", "--plan", plan, "--json"]).output)
    assert data["plan"]["targets"][0]["remaining_sessions"] == 2
    assert data["plan"]["affordable"] in (True, False)
