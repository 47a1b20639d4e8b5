"""What the report concludes: one answer per searched question (its first screen, "## Answers")
and the headline line of each confirmation (analysis.report).

A confirmation's factor (search.confirm's confirm.json) is answered over seeds: the level of the
sweep's best configuration with the highest mean test PSNR, its difference to the runner-up
paired by seed (Holm-corrected over the pairs), and a clause for each other metric (the
latent, seconds to + 1 dB) in which a pair of levels differs. Every other searched parameter
rests on the sweep's single runs: the best trial's value, and the difference in best
validation PSNR between the trials above the median value and the rest (numeric), or between
the trials of the best trial's value and the rest (categorical), with Welch's interval over
those few trials (analysis.stats).
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from analysis import stats
from analysis.results import Experiment, spec_choices
from analysis.tables import METRIC_NAMES, PSNRS, confirm_metrics, fmt

SINGLE = "single runs, not confirmed over seeds"


def answers(exp: Experiment, confirmations: list[tuple[str, dict]]) -> list[str]:
    """One line per searched parameter, and per confirmed factor that was not searched; a
    factor confirmed again with other values fixed (search.confirm --set) gets a line for each
    confirmation, the fixed values named."""
    confirmed: dict[str, list[tuple[str, dict]]] = {}
    for stem, summary in confirmations:
        confirmed.setdefault(summary["factor"], []).append((stem, summary))
    params = [*exp.searched, *(f for f in confirmed if f not in exp.searched)]
    lines = []
    for p in params:
        if p not in confirmed:
            lines.append(single_run_answer(exp, p))
            continue
        for stem, summary in confirmed[p]:
            fixed = ", ".join(f"{k}={fmt(v)}" for k, v in (summary.get("fixed") or {}).items())
            line = confirmed_answer(p, stem, summary)
            lines.append(line.replace(f"`{p}`:", f"`{p}` (at {fixed}):", 1) if fixed else line)
    return lines


def confirmed_answer(param: str, stem: str, summary: dict) -> str:
    """The level with the highest mean test PSNR over seeds (the sweep's best configuration)."""
    group = summary["configs"][0]
    source = (f"Source: `{stem}/confirm.json` (configuration {group['rank']}), "
              f"`tables/{stem}_levels.csv`, `tables/{stem}_comparisons.csv`.")
    ranked = ranked_levels(group)
    if not ranked:
        return f"`{param}`: no confirmation run has a test PSNR yet. {source}"
    (top, iv), *others = ranked.items()
    head = f"`{param}`: **{top}** (mean test PSNR {fmt(iv['mean'])} dB over {iv['n']} seeds)"
    if not others:
        return f"{head}; one level scored, nothing to compare. {source}"
    runner = others[0][0]
    paired = group.get("paired_comparisons", {})
    pair = _pair(paired.get("test_psnr") or group["comparisons"]["test_psnr"], top, runner)
    how = "paired by seed" if paired.get("test_psnr") else "Welch"
    verdict = (f"confirmed over {pair['n_a']} seeds" if pair["significant"] else
               f"not confirmed over {pair['n_a']} seeds (the gap is within seed noise)"
               if pair["p_holm"] is not None else "not confirmed (fewer than 2 seed pairs)")
    measured = [m for m in confirm_metrics(summary) if m not in PSNRS and m in paired]
    clauses = [c for c in (_differs(group, m, top) for m in measured) if c]
    if measured and not clauses:
        clauses = ["no other metric differs between levels"]
    clauses += never_reached(group)
    return "; ".join([f"{head}; vs {runner}, {how}: {_effect(pair)}", *clauses,
                      verdict]) + f". {source}"


def ranked_levels(group: dict) -> dict[str, dict]:
    """The test PSNR interval of each level with one, highest mean first."""
    scored = {lv: v["test_psnr"] for lv, v in group["statistics"].items()
              if v["test_psnr"]["mean"] is not None}
    return dict(sorted(scored.items(), key=lambda item: -item[1]["mean"]))


def never_reached(group: dict) -> list[str]:
    """For each level with censored runs, e.g. "3 of 3 cyclical runs never reached + 1 dB"."""
    return [f"{iv['censored']} of {iv['n'] + iv['censored']} {lv} runs never reached "
            + METRIC_NAMES.get(m, m).removeprefix("seconds to ")
            for lv, values in group["statistics"].items() for m, iv in values.items()
            if isinstance(iv, dict) and iv.get("censored")]


def confirm_headline(stem: str, summary: dict) -> list[str]:
    """Per configuration of a confirmation: the level with the highest mean test PSNR over
    seeds, how many gaps are real, and in which other metrics the levels differ."""
    lines = []
    for group in summary["configs"]:
        ranked = ranked_levels(group)
        if not ranked:
            continue
        top, iv = next(iter(ranked.items()))
        ci = (f" (95% CI {fmt(iv['low'])} to {fmt(iv['high'])})" if iv["low"] is not None
              else "")
        tested = [x for x in group["comparisons"]["test_psnr"] if x["p_holm"] is not None]
        pairs = [x for x in group.get("paired_comparisons", {}).get("test_psnr", [])
                 if x["p_holm"] is not None]
        paired = (f" ({sum(x['significant'] for x in pairs)} of {len(pairs)} when paired by "
                  "seed)" if pairs else "")
        others = {m: found for m, found in group.get("paired_comparisons", {}).items()
                  if m not in PSNRS}
        differ = [m for m, found in others.items() if any(x["significant"] for x in found)]
        names = ", ".join(METRIC_NAMES.get(m, m) for m in differ) or "no other metric"
        latent = f"; paired by seed, the levels differ in {names}" if others else ""
        lines.append(f"Confirmation of configuration {group['rank']} over {len(summary['seeds'])} "
                     f"seeds per `{summary['factor']}` level: highest mean test PSNR **{top}**, "
                     f"{fmt(iv['mean'])} dB{ci}; {sum(x['significant'] for x in tested)} of "
                     f"{len(tested)} pairwise differences significant after Holm correction"
                     f"{paired}{latent}. Traceability: `{stem}/confirm.json`, "
                     f"`tables/{stem}_levels.csv`.")
    return lines


def _differs(group: dict, metric: str, top: str) -> Optional[str]:
    """A clause for the significant paired difference in `metric` (one of `top`'s, else the
    largest), e.g. "KL 1.10 nats/step for monotonic vs 0.02 for none, +1.08 nats/step [...]"."""
    found = [c for c in group["paired_comparisons"][metric] if c["significant"]]
    if not found:
        return None
    c = max(found, key=lambda c: (top in (c["a"], c["b"]), abs(c["diff"])))
    if c["b"] == top:
        c = _pair([c], top, c["a"])
    mean = {lv: fmt(group["statistics"][lv][metric]["mean"]) for lv in (c["a"], c["b"])}
    return (f"{METRIC_NAMES.get(metric, metric)} {mean[c['a']]} {c['unit']} for {c['a']} vs "
            f"{mean[c['b']]} for {c['b']}, {_effect(c)}")


def _pair(comparisons: list[dict], a: str, b: str) -> dict:
    """The comparison of levels a and b as a - b (turned round when stored as b - a)."""
    for c in comparisons:
        if (c["a"], c["b"]) == (a, b):
            return c
        if (c["a"], c["b"]) == (b, a):
            low, high = c["low"], c["high"]
            return {**c, "a": a, "b": b, "diff": -c["diff"],
                    "low": None if high is None else -high, "high": None if low is None else -low}
    raise KeyError(f"no comparison of {a} with {b}")


def _effect(c: dict) -> str:
    """The difference with its interval and Holm p, e.g. "+3.10 dB [2.85, 3.35], p = 0.004
    (Holm)"; the difference alone when it was not tested."""
    unit = c.get("unit", "dB")
    if c["p_holm"] is None:
        return f"{_signed(c['diff'])} {unit} (not tested)"
    return (f"{_signed(c['diff'])} {unit} [{fmt(c['low'])}, {fmt(c['high'])}], "
            f"{stats.p_text(c['p_holm'])} (Holm)")


def single_run_answer(exp: Experiment, param: str) -> str:
    """The best trial's value and a single-run effect size with Welch's interval."""
    source = ("Source: best `val_psnr` of each trial's result.json by its params.json value "
              "(`tables/effects.csv`, `tables/top_trials.csv`).")
    ranked = exp.ranked().dropna(subset=["best_val_psnr"])
    data = ranked[[param, "best_val_psnr"]].dropna()
    if data.empty:
        return f"`{param}`: no trial with a validation PSNR used it yet; {SINGLE}. {source}"
    x, y = data[param], data["best_val_psnr"].astype(float)
    who = "best trial" if data.index[0] == ranked.index[0] else "best trial that uses it"
    head = (f"`{param}`: **{fmt(x.iloc[0])}** ({who} `{data.index[0]}`, best val PSNR "
            f"{fmt(y.iloc[0])} dB)")
    if spec_choices(exp.sweep["searched"][param]) or not pd.api.types.is_numeric_dtype(x):
        chosen = x == x.iloc[0]
        groups = "its trials vs the others"
    else:  # above the median vs the rest (at or above, when the top value is the median)
        median, above = float(x.median()), (x > x.median()).any()
        chosen = x > median if above else x >= median
        cut = fmt(int(median) if median.is_integer() else median)
        groups = f"trials with {param} {'>' if above else '>='} {cut} vs the rest"
    if chosen.all():
        return f"{head}; one value tried, no effect to estimate; {SINGLE}. {source}"
    n = (int(chosen.sum()), int((~chosen).sum()))
    diff, low, high, _, _ = stats.welch(y[chosen], y[~chosen])
    interval = (f" [{fmt(low)}, {fmt(high)}] (Welch 95% CI, {n[0]} vs {n[1]} trials, n small)"
                if not math.isnan(low) else
                f" (no interval: too few trials, {n[0]} vs {n[1]})" if min(n) < 2 else
                " (no interval: no spread between trials)")
    return (f"{head}; {groups}: mean best val PSNR {_signed(diff)} dB{interval}; {SINGLE}. "
            f"{source}")


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + fmt(value)
