import math

import pandas as pd

from analysis.speed import level_speed, measured, seconds_to_quality


def _history(psnr, base=20.0, seconds=10.0, diverged=None):
    n = len(psnr)
    return pd.DataFrame({"epoch": range(1, n + 1), "val_psnr": psnr,
                         "val_baseline_psnr": [base] * n, "epoch_time_s": [seconds] * n,
                         "diverged": diverged or [False] * n})


def test_seconds_are_summed_up_to_the_first_epoch_past_each_margin():
    out = seconds_to_quality(_history([19.0, 20.5, 21.2, 20.0, 22.3]))
    assert out == {"+1 dB": 30.0, "+2 dB": 50.0}  # epochs 3 and 5, 10 s each


def test_margins_not_reached_or_unknown_baseline_are_none():
    assert seconds_to_quality(_history([19.0, 20.9])) == {"+1 dB": None, "+2 dB": None}
    old = _history([25.0]).drop(columns="val_baseline_psnr")  # a run from before the baseline
    assert seconds_to_quality(old) == {"+1 dB": None, "+2 dB": None}
    nan_base = _history([25.0, 25.0], base=math.nan)
    assert seconds_to_quality(nan_base, margins=(0.5,)) == {"+0.5 dB": None}


def test_only_a_history_with_the_copy_baseline_is_measured():
    assert measured(_history([19.0]))
    assert not measured(_history([25.0]).drop(columns="val_baseline_psnr"))
    assert not measured(_history([25.0], base=math.nan))
    assert not measured(pd.DataFrame())  # no history yet


def test_a_diverged_epoch_does_not_count_but_its_time_does():
    out = seconds_to_quality(_history([30.0, 23.0], seconds=5.0, diverged=[True, False]))
    assert out == {"+1 dB": 10.0, "+2 dB": 10.0}


def test_level_speed_counts_runs_that_reached_and_takes_their_median():
    runs = [{"label": "monotonic", "seconds_to": {"+1 dB": 10.0, "+2 dB": None}},
            {"label": "monotonic", "seconds_to": {"+1 dB": 30.0, "+2 dB": 50.0}},
            {"label": "monotonic", "seconds_to": {"+1 dB": 20.0, "+2 dB": None}},
            {"label": "none", "seconds_to": {"+1 dB": None, "+2 dB": None}},
            {"label": "none", "seconds_to": None}]  # a run with no history yet
    out = level_speed(runs)
    assert out["monotonic"]["+1 dB"] == {"n": 3, "reached": 3, "median_s": 20.0}
    assert out["monotonic"]["+2 dB"] == {"n": 3, "reached": 1, "median_s": 50.0}
    assert out["none"]["+1 dB"] == {"n": 1, "reached": 0, "median_s": None}
