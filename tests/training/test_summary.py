"""summarize_run: steps, meta-step time and validation history read back from a run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaml.config import load_config
from imaml.training import EvalResult, RunDir, SummaryError, resume_config, summarize_run, train
from training.helpers import SOURCE, tiny


def records_of(run: Path, split: str) -> list[dict]:
    return [r for r in RunDir(run).read_metrics() if r["split"] == split]


def test_summary_of_a_finished_run_matches_its_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny("eval.at_end=true"), run, SOURCE, quiet=True)
    summary = summarize_run(run)
    assert (summary.step, summary.meta_steps) == (6, 6)
    # Three logged windows of 2 steps each.
    expected = sum(2 * r["sec_per_step"] for r in records_of(run, "train"))
    assert summary.train_seconds == pytest.approx(expected, rel=1e-12)
    val = records_of(run, "val")
    assert [s for s, _ in summary.validation] == [3, 6]
    assert [r.mean for _, r in summary.validation] == [r["mse"] for r in val]
    assert summary.best_step == result.best[0]
    assert [name for name, _ in summary.final] == ["meta-learned", "initial"]
    assert summary.final[0][1] == result.final and summary.final[1][1] == result.baseline
    assert json.loads(json.dumps(summary.to_dict()))["validation"][0]["step"] == 3


def test_summary_of_a_resumed_run_counts_each_step_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny("train.meta_steps=4"), run, SOURCE, quiet=True)
    assert summarize_run(run).step == 4
    train(resume_config(run, ["train.meta_steps=6"]), run, SOURCE, resume=True, quiet=True)
    summary = summarize_run(run)
    assert summary.step == 6 and [s for s, _ in summary.validation] == [3, 4, 6]
    expected = sum(2 * r["sec_per_step"] for r in records_of(run, "train"))
    assert summary.train_seconds == pytest.approx(expected, rel=1e-12)


def write_run(run: Path, metrics: list[dict]) -> None:
    run.mkdir()
    config = load_config("omniglot-5w1s", ["train.meta_steps=25"])[1]
    (run / "config.toml").write_text(config.to_toml())
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_summary_weights_each_window_by_its_steps(tmp_path: Path) -> None:
    val = {"split": "val", "ci95": 0.01, "loss": 0.3, "tasks": 200}
    write_run(
        tmp_path / "run",
        [
            {"step": 10, "split": "train", "sec_per_step": 2.0, "residual": 0.5},
            {"step": 10, "accuracy": 0.90, "best": True, **val},
            {"step": 20, "split": "train", "sec_per_step": 3.0, "residual": 0.25},
            {"step": 20, "accuracy": 0.95, "best": True, **val},
            # The last, shorter window; a diagnostic that older records lack.
            {"step": 25, "split": "train", "sec_per_step": 4.0, "residual": 0.0, "curv": -1.0},
            {"step": 25, "accuracy": 0.93, "best": False, **val},
        ],
    )
    summary = summarize_run(tmp_path / "run")
    assert summary.train_seconds == 10 * 2.0 + 10 * 3.0 + 5 * 4.0
    assert summary.validation[1] == (20, EvalResult("accuracy", 0.95, 0.01, 0.3, 200))
    assert summary.best_step == 20 and summary.final == ()
    # Records at steps 10, 20, 25 lie in the last 250 steps; "curv" only in the last.
    assert summary.recent == {"residual": 0.25, "curv": -1.0}
    text = str(summary).splitlines()
    assert text[1] == "meta-steps: 25 of 25, 0.02 h of meta-steps (2.80 s per step)"
    assert text[2] == "steps 1-25 (mean): residual 0.25, curv -1"
    assert [line.endswith("(best)") for line in text[4:]] == [False, True, False]
    assert "accuracy 95.00% ± 1.00%" in text[5]
    # The run as it stood at step 20, diagnostics over its last 10 steps.
    then = summarize_run(tmp_path / "run", recent_steps=10, until=24)
    assert (then.step, then.train_seconds, then.best_step) == (20, 10 * 2.0 + 10 * 3.0, 20)
    assert [s for s, _ in then.validation] == [10, 20] and then.recent == {"residual": 0.25}
    assert str(then).splitlines()[2] == "steps 11-20 (mean): residual 0.25"


def test_summary_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SummaryError, match=r"no config\.toml"):
        summarize_run(tmp_path)
    write_run(tmp_path / "run", [])
    with pytest.raises(SummaryError, match="no training records yet"):
        summarize_run(tmp_path / "run")
    with pytest.raises(SummaryError, match="must be positive"):
        summarize_run(tmp_path / "run", recent_steps=0)
