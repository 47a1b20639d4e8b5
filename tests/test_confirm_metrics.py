"""A confirmation's metrics besides PSNR (search.confirm_results: the latent, best of N, seconds
to + 1 dB) over seeds, and the report's tables, sentences and figure of them, on fake runs."""
from __future__ import annotations

import csv
import json

import pytest
from test_analysis import make_experiment
from test_confirm import _write_runs

from analysis import stats
from analysis.report import build_report
from search.confirm import make_plan, summarize
from search.confirm_results import describe

KL = {("monotonic", 1): 1.10, ("monotonic", 2): 1.05, ("monotonic", 3): 1.15,
      ("cyclical", 1): 0.02, ("cyclical", 2): 0.03, ("cyclical", 3): 0.01}
UNITS = {("monotonic", 1): 2, ("monotonic", 2): 1, ("monotonic", 3): 3,  # no effect: the same
         ("cyclical", 1): 3, ("cyclical", 2): 1, ("cyclical", 3): 2}  # values, other seeds


def write_confirmation(exp, **test):
    """Runs of monotonic and cyclical over 3 seeds (_write_runs: cyclical never reaches the copy
    baseline + 1 dB) scored with `test` ({key: {(level, seed): value}}) in test_metrics.json."""
    plan = make_plan(exp, levels=["monotonic", "cyclical"], seeds=3, epochs=3)
    _write_runs(plan)
    for run in plan.runs:
        path = plan.run_dir(run) / "test_metrics.json"
        scored = {k: v[run.level, run.seed] for k, v in test.items()}
        path.write_text(json.dumps({**json.loads(path.read_text()), **scored}))
    summary = summarize(plan)
    (plan.directory / "confirm.json").write_text(json.dumps(summary))
    return summary


def test_latent_metrics_are_paired_by_seed_and_runs_that_never_got_there_censored(tmp_path):
    summary = write_confirmation(make_experiment(tmp_path), val_kl=KL, active_units=UNITS)
    group = summary["configs"][0]
    (kl,) = group["paired_comparisons"]["kl"]
    by_seed = {lv: {s: KL[lv, s] for s in (1, 2, 3)} for lv in ("monotonic", "cyclical")}
    assert kl["significant"] and kl["unit"] == "nats/step" and kl["diff"] == pytest.approx(1.08)
    assert kl["p_holm"] == pytest.approx(stats.compare_paired(by_seed)[0].p_holm)
    (units,) = group["paired_comparisons"]["active_units"]
    assert units["diff"] == 0 and units["p_holm"] == pytest.approx(1) and not units["significant"]
    mono, cyc = (group["statistics"][lv] for lv in ("monotonic", "cyclical"))
    assert mono["kl"]["mean"] == pytest.approx(1.10) and cyc["posterior_gain"]["n"] == 3
    # copy baseline 17.5 + 1 dB: monotonic at epoch 1 (10 s), cyclical (at most 18.4) never
    assert [mono["seconds_to_1db"][k] for k in ("n", "mean", "censored")] == [3, 10.0, 0]
    assert [cyc["seconds_to_1db"][k] for k in ("n", "mean", "censored")] == [0, None, 3]
    assert group["comparisons"]["seconds_to_1db"] == []  # one level has values: no pair
    assert "best_of_n_gain" not in group["comparisons"] | mono  # no run has it: skipped
    run = summary["runs"][0]
    assert (run["kl"], run["posterior_gain"], run["seconds_to_1db"]) == (1.10, 0.25, 10.0)
    lines = describe(summary)
    assert any(line.startswith("  kl: monotonic vs cyclical (paired by seed): +1.08 nats/step")
               for line in lines)
    assert "seconds_to_1db - (3 of 3 never)" in lines[4]
    assert lines[-1] == ("  no pair differs in active_units, posterior_gain (Welch nor paired "
                         "by seed)")


def test_best_of_n_gain_is_compared_where_runs_have_it(tmp_path):
    # the gain is measured against the first draw of the same pass, not the test PSNR
    best = {(lv, s): 22.0 + (0.3 * s if lv == "monotonic" else 0.0)
            for lv in ("monotonic", "cyclical") for s in (1, 2, 3)}
    first = {k: 21.0 for k in best}
    summary = write_confirmation(make_experiment(tmp_path), best_of_n_psnr=best,
                                 first_sample_psnr=first, samples={k: 20 for k in best})
    run = next(r for r in summary["runs"] if r["name"] == "c1-cyclical-s2")
    assert (run["samples"], run["best_of_n_gain"]) == (20, pytest.approx(1.0))
    (pair,) = summary["configs"][0]["paired_comparisons"]["best_of_n_gain"]
    assert pair["diff"] == pytest.approx(0.6)  # gains 1.3, 1.6, 1.9 vs 1.0, 1.0, 1.0


def test_report_shows_the_metrics_and_their_comparisons(tmp_path):
    exp = make_experiment(tmp_path)
    write_confirmation(exp, val_kl=KL, active_units=UNITS)
    text = build_report(exp, quiet=True, evaluate=False).read_text()
    assert "- KL: monotonic vs cyclical (paired by seed): +1.08 nats/step (95% CI " in text
    assert "- 3 of 3 cyclical runs never reached + 1 dB" in text
    assert "paired by seed, the levels differ in KL." in text
    with open(exp / "tables" / "confirm-kl_anneal_metrics.csv") as f:
        rows = {(r["kl_anneal"], r["metric"]): r for r in csv.DictReader(f)}
    assert rows["cyclical", "seconds_to_1db"]["never reached"] == "3"
    assert float(rows["monotonic", "kl"]["mean"]) == pytest.approx(1.10)
    with open(exp / "tables" / "confirm-kl_anneal_comparisons.csv") as f:
        units = {r["metric"]: r["unit"] for r in csv.DictReader(f)}
    assert units["kl"] == "nats/step" and units["active_units"] == "units"
    assert (exp / "plots" / "confirm-kl_anneal_latent.png").stat().st_size > 1000
