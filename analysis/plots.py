"""Figures of a sweep as PNGs, drawn from the `Experiment` of analysis.results.

Figures are built on `matplotlib.figure.Figure` and saved through the Agg canvas: headless, no
pyplot state. Colors name the KL annealing mode everywhere; line styles and markers the status.
`make_plots` writes every figure of `PLOTS`, each named and captioned there for the report.
(Over 350 lines: one short function per figure, the sweep's and the confirmation's, sharing the
colour and figure helpers; the confirmation's figures could move to a module of their own.)
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.results import (CYCLES, CYCLICAL, INCOMPLETE, LR, MISSING, MODE, OPTUNA_JOURNAL,
                              OPTUNA_STUDY, TFR_START, Experiment, spec_choices)
from analysis.tables import METRIC_NAMES, PSNRS, confirm_metrics, fmt
from cvae.config import config_from_trial
from cvae.schedules import beta_curve

MODE_COLORS = {"monotonic": "tab:blue", "cyclical": "tab:orange", "cyclical-sigmoid": "tab:green",
               "none": "tab:gray"}
OTHER_COLOR = "tab:purple"  # a mode this module does not know
STATUS_COLORS = {"completed": "tab:green", "early_stopped": "tab:orange", "diverged": "tab:red",
                 "error": "black", "running": "tab:blue", "pending": "tab:cyan",
                 INCOMPLETE: "tab:blue", MISSING: "lightgray"}
LINESTYLES = {"early_stopped": "--", "running": ":", INCOMPLETE: ":"}  # others solid
MARKERS = {"completed": "o", "early_stopped": "x", "diverged": "X"}  # others "s"
MIN_TRIALS_FOR_IMPORTANCE = 3


def make_plots(exp: Experiment, out_dir: Path) -> dict[str, Path]:
    """Write every figure of PLOTS as <out_dir>/<name>.png; return the paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (draw, _) in PLOTS.items():
        fig = draw(exp)
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
    return paths


def param_importances(exp: Experiment) -> Optional[dict[str, float]]:
    """Importance of each searched hyperparameter for the best validation PSNR, by optuna's default
    evaluator (PED-ANOVA); None with fewer than MIN_TRIALS_FOR_IMPORTANCE trials with results.

    The trials come from the sweep's own Optuna study (its journal, OPTUNA_JOURNAL in the
    experiment: the parameters and distributions Optuna sampled), each valued at its best
    intermediate value, so that the trials ASHA stopped (PRUNED) count beside the finished ones.
    An experiment without a journal is rebuilt from the trials table and the sweep.json
    distributions instead."""
    trials = _journal_trials(exp)
    if trials is None:
        trials = _table_trials(exp)
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE or not exp.searched:
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _journal_trials(exp: Experiment) -> Optional[list[optuna.trial.FrozenTrial]]:
    """The study's trials with a result, valued at their best intermediate value (a diverged
    trial at the worst-case value it was told with); None without a journal."""
    journal = exp.path / OPTUNA_JOURNAL
    if not journal.is_file():
        return None
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = []
    for t in study.get_trials(deepcopy=False, states=done):
        steps = [v for v in t.intermediate_values.values() if math.isfinite(v)]
        value = max(steps) if steps else t.value
        if value is not None and t.params:
            trials.append(optuna.trial.create_trial(params=t.params,
                                                    distributions=t.distributions,
                                                    value=float(value)))
    return trials


def _table_trials(exp: Experiment) -> list[optuna.trial.FrozenTrial]:
    """Trials rebuilt from the trials table with the sweep.json distributions."""
    ran = exp.ran().dropna(subset=["best_val_psnr"])
    dists = {p: _distribution(exp.sweep["searched"][p], ran[p].dropna())
             for p in exp.searched if ran[p].notna().any()}
    trials = []
    for _, trial in ran.iterrows():
        params = {p: _plain(trial[p]) for p in dists if not pd.isna(trial[p])}
        trials.append(optuna.trial.create_trial(
            params=params, distributions={p: dists[p] for p in params},
            value=float(trial["best_val_psnr"])))
    return trials


def plot_val_psnr(exp: Experiment) -> Figure:
    fig, ax = _figure(8, 5)
    for tid, trial in exp.ran().iterrows():
        hist = exp.trial_history(tid)
        kept = hist[~hist["diverged"]].dropna(subset=["val_psnr"])
        color = _mode_color(trial[MODE])
        ax.plot(kept["epoch"], kept["val_psnr"], LINESTYLES.get(trial["status"], "-"), color=color,
                lw=1.3, alpha=0.85)
        if trial["status"] == "early_stopped" and len(kept):
            last = kept.iloc[-1]
            ax.plot(last["epoch"], last["val_psnr"], "x", color=color, ms=9, mew=2)
        if hist["diverged"].any():  # no PSNR to show: mark the epoch at the bottom of the axes
            ax.plot(hist["epoch"][hist["diverged"]].iloc[0], 0.03, "X", color="tab:red", ms=10,
                    transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set(xlabel="epoch", ylabel="validation PSNR (dB)",
           title=f"Validation PSNR per epoch ({len(exp.ran())} trials)")
    ax.set_xlim(0.5, max(exp.epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    styles = [Line2D([], [], color="k", label="completed"),
              Line2D([], [], color="k", ls="--", marker="x", label="early-stopped (ASHA)"),
              Line2D([], [], color="k", ls=":", label="running / incomplete"),
              Line2D([], [], color="tab:red", ls="none", marker="X", label="diverged (epoch)")]
    fig.legend(handles=_mode_handles(exp) + styles, fontsize="small", loc="outside right upper")
    return fig


def plot_psnr_vs_lr(exp: Experiment) -> Figure:
    return _psnr_against(exp, LR, "learning rate", log=True)


def plot_psnr_vs_tfr_start(exp: Experiment) -> Figure:
    return _psnr_against(exp, TFR_START, "teacher-forcing decay start (epoch)", log=False)


def plot_psnr_distribution(exp: Experiment) -> Figure:
    fig, (by_mode, by_cycles) = _figure(11, 4.5, ncols=2)
    ran = exp.ran().dropna(subset=["best_val_psnr"])
    _box_strip(by_mode, [(m, ran[ran[MODE] == m]) for m in exp.modes()])
    by_mode.set(title="by annealing mode", ylabel="best validation PSNR (dB)")
    cyclical = ran[ran[MODE].isin(CYCLICAL)].dropna(subset=[CYCLES])
    counts = sorted(cyclical[CYCLES].unique())
    _box_strip(by_cycles, [(str(c), cyclical[cyclical[CYCLES] == c]) for c in counts])
    by_cycles.set(title="by cycle count (cyclical modes)", xlabel="kl_anneal_cycle")
    fig.legend(handles=_mode_handles(exp), loc="outside right upper", fontsize="small")
    return fig


def plot_schedules(exp: Experiment) -> Figure:
    """beta as every training step saw it (the schedule of the trial's config: a per-step
    schedule restarts within epochs), teacher forcing per epoch."""
    return _best_curves(exp, {"beta": "KL weight beta", "tfr": "teacher forcing ratio"}, log=False,
                        drawn={"beta": lambda tid: _beta_curve(exp, tid)})


def _beta_curve(exp: Experiment, trial_id: str) -> Optional[tuple[list, list]]:
    """(epochs, beta) of a trial's schedule as a step curve over [0, epochs run], from its
    params.json (cvae.schedules.beta_curve); None when the config cannot be read."""
    trial = exp.trials.loc[exp.trials["trial_id"] == trial_id].iloc[0]
    try:
        cfg = config_from_trial(json.loads((exp.path / str(trial["dir"]) / "params.json")
                                           .read_text()))
    except (OSError, ValueError, TypeError):
        return None
    x, beta = beta_curve(cfg)
    keep = x < int(trial["epochs"])  # the epochs the trial ran
    x, beta = list(x[keep]), list(beta[keep])
    if not x:
        return None
    return x + [float(trial["epochs"])], beta + [beta[-1]]


def plot_losses(exp: Experiment) -> Figure:
    return _best_curves(exp, {"loss": "training loss", "mse": "MSE", "kld": "KL divergence"},
                        log=True)


def plot_importance(exp: Experiment) -> Figure:
    importances = param_importances(exp)
    if importances is None:
        return _message(f"not enough trials for parameter importance "
                        f"(need {MIN_TRIALS_FOR_IMPORTANCE} with results, have {len(exp.ran())})")
    fig, ax = _figure(7, 1 + 0.5 * len(importances))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (normalized, optuna PED-ANOVA)",
           title="Hyperparameter importance for best validation PSNR")
    return fig


def plot_compute(exp: Experiment) -> Figure:
    trials = exp.trials
    fig, ax = _figure(max(6, 0.35 * len(trials) + 2), 4.5)
    x = np.arange(len(trials))
    ax.bar(x, trials["epochs"], color=[STATUS_COLORS.get(s, "black") for s in trials["status"]])
    ax.axhline(exp.epochs, color="k", ls="--", lw=1)
    ax.set_xticks(x, trials["trial_id"], rotation=90, fontsize="small")
    why = "saved" if exp.finished else "not spent yet"
    saved = f", {exp.saved_fraction():.0%} {why}" if exp.budget else ""
    ax.set(ylabel="epochs run",
           title=f"Compute: {exp.trial_epochs()} of {exp.budget} trial-epochs{saved}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    statuses = list(dict.fromkeys(trials["status"]))
    fig.legend(handles=[Patch(color=STATUS_COLORS.get(s, "black"), label=s) for s in statuses]
               + [Line2D([], [], color="k", ls="--", label=f"full budget ({exp.epochs} epochs)")],
               fontsize="small", loc="outside right upper")
    return fig


PLOTS: dict[str, tuple[Callable[[Experiment], Figure], str]] = {
    "val_psnr": (plot_val_psnr, "Validation PSNR per epoch, colored by KL annealing mode; dashed "
                 "with x: stopped early by ASHA; red X: diverged"),
    "psnr_vs_lr": (plot_psnr_vs_lr, "Best validation PSNR against learning rate"),
    "psnr_vs_tfr_start": (plot_psnr_vs_tfr_start, "Best validation PSNR against teacher-forcing "
                          "decay start"),
    "psnr_distribution": (plot_psnr_distribution, "Best validation PSNR per annealing mode and per "
                          "cycle count"),
    "schedules": (plot_schedules, "KL weight beta and teacher forcing ratio of each mode's best "
                  "trial"),
    "losses": (plot_losses, "Training loss, MSE and KL of each mode's best trial"),
    "importance": (plot_importance, "Hyperparameter importance"),
    "compute": (plot_compute, "Epochs each trial ran before ASHA stopped it, by status"),
}


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols)


def _message(text: str) -> Figure:
    fig, ax = _figure(6, 2)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig


def _mode_color(mode: object) -> str:
    return MODE_COLORS.get(mode, OTHER_COLOR)


def _mode_handles(exp: Experiment) -> list[Patch]:
    return [Patch(color=_mode_color(m), label=m) for m in exp.modes()]


def _psnr_against(exp: Experiment, param: str, label: str, log: bool) -> Figure:
    """Scatter of best validation PSNR against one hyperparameter: color = mode, marker = status."""
    fig, ax = _figure(7, 4.5)
    ran = exp.ran().dropna(subset=["best_val_psnr", param])
    for _, trial in ran.iterrows():
        ax.scatter(float(trial[param]), trial["best_val_psnr"], color=_mode_color(trial[MODE]),
                   marker=MARKERS.get(trial["status"], "s"), s=45)
    if log:
        ax.set_xscale("log")
    fixed = "" if param in exp.searched else f" (fixed at {fmt(exp.trials[param].iloc[0])})"
    ax.set(xlabel=label, ylabel="best validation PSNR (dB)",
           title=f"Best validation PSNR vs {param}{fixed}")
    ax.grid(alpha=0.3)
    markers = [Line2D([], [], color="k", ls="none", marker=MARKERS.get(s, "s"), label=s)
               for s in dict.fromkeys(ran["status"])]
    fig.legend(handles=_mode_handles(exp) + markers, fontsize="small", loc="outside right upper")
    return fig


def _box_strip(ax: Axes, groups: list[tuple[str, pd.DataFrame]]) -> None:
    """Box plot of best validation PSNR per group, with every trial as a dot colored by mode."""
    groups = [(label, g) for label, g in groups if len(g)]
    if not groups:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
        return
    ax.boxplot([g["best_val_psnr"].astype(float) for _, g in groups],
               tick_labels=[label for label, _ in groups], widths=0.5, showfliers=False,
               medianprops={"color": "black"})
    for i, (_, g) in enumerate(groups, start=1):
        jitter = np.linspace(-0.15, 0.15, len(g)) if len(g) > 1 else np.zeros(1)
        ax.scatter(i + jitter, g["best_val_psnr"], c=[_mode_color(m) for m in g[MODE]], s=30,
                   zorder=3, edgecolors="k", linewidths=0.5)
    ax.grid(alpha=0.3, axis="y")


def _best_curves(exp: Experiment, keys: dict[str, str], log: bool,
                 drawn: Optional[dict[str, Callable]] = None) -> Figure:
    """One panel per history column, one line per annealing mode's best trial; `drawn[key]`
    (trial id -> (x, y) step curve or None) replaces a column's per-epoch values."""
    best = exp.best_by_mode()
    if best.empty:
        return _message("no trial with results")
    fig, axes = _figure(4.2 * len(keys), 4, ncols=len(keys))
    for ax, (key, label) in zip(axes, keys.items()):
        for mode, tid in best.items():
            curve = (drawn or {}).get(key, lambda _: None)(tid)
            if curve is not None:
                ax.step(*curve, where="post", color=_mode_color(mode), label=f"{mode} ({tid})")
                continue
            hist = exp.trial_history(tid)
            hist = hist[~hist["diverged"]]
            ax.plot(hist["epoch"], hist[key], color=_mode_color(mode), label=f"{mode} ({tid})")
        values = exp.history.loc[exp.history["trial_id"].isin(best), key].dropna()
        if log and len(values) and values.min() > 0 and values.max() > 100 * values.min():
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(handles=axes[0].get_lines(), fontsize="small", loc="outside lower center",
               ncols=len(best))
    return fig


def _distribution(spec: object, values: pd.Series) -> optuna.distributions.BaseDistribution:
    """The optuna distribution of a sweep.json search spec ({type: loguniform | uniform | int |
    categorical, low, high, log, choices}), widened to hold every observed value."""
    spec = spec if isinstance(spec, dict) else {}
    choices = spec_choices(spec)
    if choices or not pd.api.types.is_numeric_dtype(values):
        extra = [v for v in values.unique() if v not in choices]
        return optuna.distributions.CategoricalDistribution([_plain(c) for c in choices + extra])
    kind = spec.get("type")
    log = kind == "loguniform" or bool(spec.get("log"))
    low = min(float(spec.get("low", math.inf)), values.min())
    high = max(float(spec.get("high", -math.inf)), values.max())
    if kind == "int" or (kind is None and pd.api.types.is_integer_dtype(values)):
        return optuna.distributions.IntDistribution(int(low), int(high), log=log)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log)


def _plain(value: object) -> object:
    """numpy/pandas scalars as the Python values optuna stores."""
    return value.item() if isinstance(value, np.generic) else value


def confirm_plots(summary: dict, out_dir: Path, stem: str) -> dict[str, tuple[Path, str]]:
    """Figures of a confirmation (search.confirm's confirm.json, in directory `stem`):
    learning curves per level with a confidence band over seeds, and dot-and-interval plots per
    level of final validation and test PSNR and of the other metrics (the latent, seconds to
    the copy baseline + 1 dB). Returns {name: (path, caption)}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    factor, level = summary["factor"], f"{summary['confidence']:.0%}"
    shown = {m for group in summary["configs"] for m in group["comparisons"]}
    others = {m: f"{METRIC_NAMES.get(m, m)} ({unit})"
              for m, unit in confirm_metrics(summary).items() if m in shown and m not in PSNRS}
    figures = {
        f"{stem}_curves": (_confirm_curves(summary),
                           f"Validation PSNR per epoch for each {factor} level: mean over seeds "
                           f"with a {level} confidence band (t); thin lines: single seeds"),
        f"{stem}_levels": (_confirm_levels(summary, {"val_psnr": "final validation PSNR (dB)",
                                                     "test_psnr": "test PSNR (dB)"}),
                           f"Final PSNR per {factor} level: dots = seeds, bar = mean with "
                           f"{level} confidence interval"),
    }
    if others:
        figures[f"{stem}_latent"] = (
            _confirm_levels(summary, others),
            f"What each {factor} level did to the latent: KL per predicted step and active units "
            "(posterior-mean variance over inputs > 0.01) on the validation split, test PSNR "
            "with z from the posterior and best of N prior samples minus one prior sample; and "
            "seconds to the copy baseline + 1 dB (runs that never got there left out); dots = "
            f"seeds, bar = mean with {level} confidence interval")
    paths = {}
    for name, (fig, caption) in figures.items():
        paths[name] = (out_dir / f"{name}.png", caption)
        fig.savefig(paths[name][0], dpi=110)
    return paths


def _level_colors(summary: dict) -> dict[str, str]:
    cycle = [c for c in ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                         "tab:brown", "tab:pink", "tab:olive", "tab:cyan")]
    if summary["factor"] == MODE:
        return {lv: _mode_color(lv) for lv in summary["labels"]}
    return {lv: cycle[i % len(cycle)] for i, lv in enumerate(summary["labels"])}


def _confirm_curves(summary: dict) -> Figure:
    from analysis.stats import mean_ci

    groups, colors = summary["configs"], _level_colors(summary)
    fig, axes = _figure(6 * len(groups), 4.5, ncols=len(groups))
    for ax, group in zip(np.atleast_1d(axes), groups):
        for lv in summary["labels"]:
            curves = [r["val_psnr_curve"] for r in summary["runs"]
                      if r["rank"] == group["rank"] and r["label"] == lv and r["val_psnr_curve"]]
            if not curves:
                continue
            width = max(map(len, curves))
            grid = np.full((len(curves), width), np.nan)
            for i, curve in enumerate(curves):
                grid[i, :len(curve)] = [np.nan if v is None else v for v in curve]
            epochs = np.arange(1, width + 1)
            for row in grid:
                ax.plot(epochs, row, color=colors[lv], lw=0.6, alpha=0.35)
            intervals = [mean_ci(grid[:, j]) for j in range(width)]
            ax.plot(epochs, [iv.mean for iv in intervals], color=colors[lv], lw=2,
                    label=f"{lv} (n = {len(curves)})")
            ax.fill_between(epochs, [iv.low for iv in intervals], [iv.high for iv in intervals],
                            color=colors[lv], alpha=0.2, lw=0)
        ax.set(xlabel="epoch", ylabel="validation PSNR (dB)",
               title=f"configuration {group['rank']} (sweep trial {group['trial_id']})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def _confirm_levels(summary: dict, metrics: dict[str, str]) -> Figure:
    """One panel per metric ({metric: axis label}): each level's seeds and mean with its CI."""
    groups, colors, labels = summary["configs"], _level_colors(summary), summary["labels"]
    fig, axes = _figure(4.5 * len(metrics), 1.5 + 0.45 * len(labels) * len(groups),
                        ncols=len(metrics))
    for ax, (metric, title) in zip(np.atleast_1d(axes), metrics.items()):
        ticks = []
        for g, group in enumerate(groups):
            for i, lv in enumerate(labels):
                y = -(g * (len(labels) + 1) + i)
                ticks.append((y, lv if len(groups) == 1 else f"c{group['rank']} {lv}"))
                values = [r[metric] for r in summary["runs"] if r["rank"] == group["rank"]
                          and r["label"] == lv and r.get(metric) is not None]
                jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(values, y + np.asarray(jitter[:len(values)]), color=colors[lv], s=22,
                           alpha=0.6, zorder=2)
                iv = group["statistics"][lv].get(metric) or {"mean": None}
                if iv["mean"] is not None:
                    low = iv["mean"] - iv["low"] if iv["low"] is not None else 0.0
                    high = iv["high"] - iv["mean"] if iv["high"] is not None else 0.0
                    ax.errorbar([iv["mean"]], [y], xerr=[[low], [high]], fmt="D", color="black",
                                ms=6, capsize=4, zorder=3)
                if iv.get("censored"):  # runs that never got there: not on the axis
                    ax.annotate(f"{iv['censored']} never reached ", (1.0, y),
                                xycoords=("axes fraction", "data"), ha="right", va="center",
                                fontsize="small")
        ax.set_yticks([t for t, _ in ticks], [text for _, text in ticks])
        ax.set(xlabel=title, title=title.split(" (")[0], ylim=(ticks[-1][0] - 0.5, 0.5))
        ax.grid(alpha=0.3, axis="x")
    return fig
