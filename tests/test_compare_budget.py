"""`graft compare --time-budget` is the whole compare's, split across its runs; without one, scratch
still gets a bounded budget (minutes, not the half hour its epochs would take).

The runs are fakes on a virtual clock (`compare._now`): each takes the share of its budget a
method would use, so the split is tested without training and without depending on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_image_folder

from graft import compare, runner
from graft.errors import ConfigError


class FakeRuns:
    """graft.runner.run stand-in: each run advances the virtual clock by `used[method]` of its
    budget (or `seconds` without one) and records the budget it got."""

    def __init__(self, used: dict[str, float], seconds: float = 20.0) -> None:
        self.used, self.seconds, self.clock = used, seconds, 0.0
        self.over: dict[str, float] = {}  # seconds a method's runs take past their budget
        self.budgets: list[tuple[str, float | None]] = []

    def now(self) -> float:
        return self.clock

    def run(self, config, log=print, splits=None, modality=None):
        method = "scratch" if config.weights == "random" else config.strategy
        self.budgets.append((method, config.time_budget))
        budget = config.time_budget
        self.clock += self.used[method] * budget + self.over.get(method, 0.0) if budget else self.seconds
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "graft.json").write_text("{}")
        scores = {"accuracy": 0.5}
        report = {"backbone": {"name": "fake"}, "test": scores, "validation": scores, "history": [{}]}
        return runner.RunResult(out, report, None, None)


@pytest.fixture
def fake_runs(monkeypatch) -> FakeRuns:
    fake = FakeRuns({"linear": 0.4, "finetune": 1.0, "scratch": 1.1})  # scratch overruns a little
    monkeypatch.setattr(runner, "run", fake.run)
    monkeypatch.setattr(compare, "_now", fake.now)
    return fake


def compare_config(tmp_path, methods, sizes=(3, 5), **options) -> compare.CompareConfig:
    data = make_image_folder(tmp_path / "data", per_class=12, seed=6)
    return compare.CompareConfig(
        data=str(data), out=str(tmp_path / "c"), labels_per_class=sizes, methods=methods,
        options={"image_size": 32, **options},
    )  # fmt: skip


def test_the_compare_budget_is_split_across_its_runs(tmp_path, fake_runs):
    """--time-budget 200 over 2 sizes x 3 methods, every run using all of its budget: the budgets
    add up to the budget less the reserve, the split is said once and recorded in each row."""
    fake_runs.used = {"linear": 1.0, "finetune": 1.0, "scratch": 1.0}
    lines: list[str] = []
    config = compare_config(tmp_path, ("linear", "finetune", "scratch"), time_budget=200.0)
    summary = compare.run_compare(config, log=lines.append)
    budgets = [b for _, b in fake_runs.budgets]
    reserve = max(compare.RESERVE_MIN_S, compare.RESERVE_SHARE * 200)
    assert len(budgets) == 6 and min(budgets) >= compare.MIN_RUN_BUDGET_S
    assert sum(budgets) <= 200 - reserve + 0.3  # (each share is rounded to 0.1 s)
    said = [line for line in lines if "for the whole compare" in line]
    assert len(said) == 1 and "6 run(s)" in said[0] and f"{reserve:.0f}s kept" in said[0]
    assert [r["time_budget"] for r in summary["rows"]] == budgets


def test_what_a_run_leaves_goes_to_the_later_runs_within_the_budget(tmp_path, fake_runs):
    """Linear uses 40% of its share, scratch overruns its own by 10%: each run gets an equal share
    of what is left, so fine-tuning gets more than linear did, and the whole compare (on the
    virtual clock) still ends within its budget."""
    config = compare_config(tmp_path, ("linear", "finetune", "scratch"), time_budget=200.0)
    compare.run_compare(config, log=lambda line: None)
    budgets = [b for _, b in fake_runs.budgets]
    assert budgets[1] > budgets[0] and budgets[4] > budgets[3]
    assert fake_runs.clock <= 200


def test_a_compare_continued_under_a_budget_splits_it_over_the_runs_left(tmp_path, fake_runs):
    """The same command again, with one size more: the finished runs are reused (their budget then
    was another share), and only the new runs share the budget."""
    compare.run_compare(compare_config(tmp_path, ("linear",), sizes=(3,), time_budget=60.0), log=print)
    fake_runs.budgets.clear()
    lines: list[str] = []
    again = compare_config(tmp_path, ("linear",), sizes=(3, 5), time_budget=60.0)
    compare.run_compare(again, log=lines.append)
    assert len(fake_runs.budgets) == 1 and sum("done before" in line for line in lines) == 1
    assert fake_runs.budgets[0][1] == pytest.approx(60 - max(compare.RESERVE_MIN_S, 6.0), abs=0.1)


def test_a_budget_too_small_for_the_runs_is_refused_with_what_would_do(tmp_path, fake_runs):
    config = compare_config(tmp_path, ("linear", "finetune", "scratch"), time_budget=30.0)
    with pytest.raises(ConfigError, match=r"--time-budget 30 for a compare of 6 runs .* --time-budget 134 "):
        compare.run_compare(config)
    assert fake_runs.budgets == []  # refused before any run


def test_scratch_without_a_budget_or_fine_tuning_gets_minutes(tmp_path, fake_runs):
    """`--methods linear,scratch` with no --time-budget: scratch runs within
    SCRATCH_DEFAULT_BUDGET_S (3 minutes), not its 30 epochs' worth; linear stays unbounded."""
    lines: list[str] = []
    config = compare_config(tmp_path, ("linear", "scratch"), sizes=(3,))
    summary = compare.run_compare(config, log=lines.append)
    assert fake_runs.budgets == [("linear", None), ("scratch", compare.SCRATCH_DEFAULT_BUDGET_S)]
    assert compare.SCRATCH_DEFAULT_BUDGET_S <= 300
    assert {r["method"]: r["time_budget"] for r in summary["rows"]}["scratch"] == 180.0
    assert sum("scratch without --time-budget" in line for line in lines) == 1


def test_what_a_method_ran_over_is_taken_off_its_later_runs(tmp_path, fake_runs):
    """Fine-tuning's fixed costs take each of its runs 25 s past its budget, more than the 20 s
    reserve: its second run gets that much less, and the compare still ends within its budget."""
    fake_runs.used = {"linear": 1.0, "finetune": 1.0, "scratch": 1.0}
    fake_runs.over = {"finetune": 25.0}
    compare.run_compare(compare_config(tmp_path, ("linear", "finetune"), time_budget=200.0), log=print)
    (_, linear), (_, first), (_, linear_2), (_, second) = fake_runs.budgets
    assert first == pytest.approx(linear, abs=0.2) and second < linear_2 - 20
    assert fake_runs.clock <= 200
