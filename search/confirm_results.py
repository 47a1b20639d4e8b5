"""A confirmation's results (search.confirm): the state of each run directory and confirm.json.

confirm.json holds every run's numbers (final val_psnr, its test_metrics.json written by
search.confirm_runs, and the METRICS derived from them), per level the mean and 95% confidence
interval over seeds of each metric, the pairwise Welch tests and the tests paired by seed with
Holm correction within each metric (analysis.stats), what each schedule did to the latent and
the seconds to reach the copy baseline + 1/+2 dB (analysis.speed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from analysis import stats
from analysis.results import read_history
from analysis.speed import level_speed, margin_label, measured, seconds_to_quality
from cvae.jsonsafe import number
from search.confirm_plan import Plan, label

# per-run numbers that get per-level statistics, each a key of a run's dict -> its unit
METRICS = {
    "val_psnr": "dB",  # final validation PSNR (0 dB when diverged)
    "test_psnr": "dB",  # test PSNR of the final checkpoint, z from the prior
    "kl": "nats/step",  # val_kl: KL of the posterior from the prior per predicted step
    "active_units": "units",  # latent dimensions whose posterior mean varies (Burda et al. 2016)
    "posterior_gain": "dB",  # posterior_psnr - test_psnr: what z carries that the prior lacks
    "best_of_n_gain": "dB",  # best_of_n_psnr - first_sample_psnr: SVG's best of `samples` prior
    # draws by SSIM against the first draw, on the same test sequences
    "seconds_to_1db": "s",  # seconds_to["+1 dB"]; runs that never get there are `censored`
}
PSNRS = ("val_psnr", "test_psnr")  # always summarized; the others only where a run has them
CENSORED = "seconds_to_1db"  # None for a measured run means "never reached": counted, not averaged
CONFIRM_FILE = "confirm.json"
TEST_FILE = "test_metrics.json"  # a run's test-split evaluation, in its run directory


def run_state(run_dir: Path, epochs: int) -> tuple[str, Any]:
    """(status, history) of a run directory: completed | diverged | incomplete | missing."""
    history = read_history(run_dir)
    if history.empty or history["epoch"].isna().all():
        return "missing", history
    if history["diverged"].any():
        return "diverged", history
    done = history.dropna(subset=["val_psnr"])
    if len(done) and int(done["epoch"].max()) >= epochs:
        return "completed", history
    return "incomplete", history


def final_checkpoint(run_dir: Path) -> Optional[Path]:
    """The run's latest kept checkpoint directory holding a state.pt."""
    found = sorted(p.parent for p in run_dir.glob("checkpoint_*/state.pt"))
    return found[-1] if found else None


def summarize(plan: Plan, ci_method: str = "t", wall_time_s: Optional[float] = None) -> dict:
    """confirm.json: the plan, every run's numbers, per-level statistics per configuration."""
    runs = []
    for run in plan.runs:
        run_dir = plan.run_dir(run)
        status, history = run_state(run_dir, plan.epochs)
        kept = history.dropna(subset=["val_psnr"])
        kept = kept[~kept["diverged"]]
        test = read_kept(run_dir / TEST_FILE) or {}
        final = (0.0 if status == "diverged"  # fit's finite worst case
                 else float(kept["val_psnr"].iloc[-1]) if status == "completed" else None)
        seconds = seconds_to_quality(history) if measured(history) else None
        runs.append({
            "name": run.name, "rank": run.rank, "level": run.level, "label": label(run.level),
            "seed": run.seed, "status": status, "epochs": len(history),
            "val_psnr": final,
            "val_psnr_best": float(kept["val_psnr"].max()) if len(kept) else None,
            "val_psnr_curve": [number(v) for v in history["val_psnr"]],
            "seconds_to": seconds,
            "test_psnr": test.get("psnr"), "test_ssim": test.get("ssim"),
            "baseline_psnr": test.get("baseline_psnr"),
            "checkpoint": f"{run.name}/{test['checkpoint']}" if test else None,
            **{k: test.get(k) for k in ("posterior_psnr", "val_kl", "val_kl_per_dim",
                                        "active_units", "best_of_n_psnr", "samples",
                                        "first_sample_psnr")},
            "kl": test.get("val_kl"),
            "posterior_gain": _gain(test.get("posterior_psnr"), test.get("psnr")),
            "best_of_n_gain": _gain(test.get("best_of_n_psnr"), test.get("first_sample_psnr")),
            CENSORED: seconds[margin_label(1.0)] if seconds else None,
            "config": run.config,
        })
    groups = []
    for entry in plan.configs:
        mine = [r for r in runs if r["rank"] == entry["rank"]]
        counted = [r for r in mine if r["status"] in ("completed", "diverged")]
        levels: dict[str, dict] = {label(v): {} for v in plan.levels}
        comparisons, paired = {}, {}
        for metric, unit in METRICS.items():
            by_seed = {lv: {r["seed"]: r[metric] for r in counted if r["label"] == lv}
                       for lv in levels}
            scored = {lv: values for lv, values in by_seed.items()
                      if any(v is not None for v in values.values())}
            never = ({lv: sum(r["label"] == lv and r[metric] is None and r["seconds_to"]
                              is not None for r in counted) for lv in levels}
                     if metric == CENSORED else {})
            if metric not in PSNRS and not scored and not any(never.values()):
                continue  # nothing measured it (e.g. runs scored before it existed)
            by_level = {lv: list(values.values()) for lv, values in by_seed.items()}
            for lv, interval in stats.summarize(by_level, method=ci_method).items():
                levels[lv][metric] = {**interval.to_dict(),
                                      **({"censored": never[lv]} if never else {})}
            comparisons[metric] = [c.to_dict() for c in stats.compare(
                {lv: by_level[lv] for lv in scored}, unit=unit)]
            # one seed = the same initialisation and batches at every level: matched pairs
            paired[metric] = [c.to_dict() for c in stats.compare_paired(scored, unit=unit)]
        for lv in levels:
            levels[lv]["diverged"] = sum(r["status"] == "diverged" for r in mine
                                         if r["label"] == lv)
        groups.append({**entry, "statistics": levels, "comparisons": comparisons,
                       "paired_comparisons": paired})
    finished = all(r["status"] in ("completed", "diverged") for r in runs)
    return {
        "experiment": str(plan.experiment), "factor": plan.factor,
        "levels": plan.levels, "labels": [label(v) for v in plan.levels],
        "seeds": plan.seeds, "epochs": plan.epochs, "fixed": plan.fixed,
        "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA, "ci_method": ci_method, "finished": finished,
        "wall_time_s": wall_time_s, "notes": plan.notes, "metrics": METRICS,
        "configs": groups, "runs": runs,
        "latent": latent_statistics(runs), "speed": level_speed(runs),
    }


def latent_statistics(runs: list[dict]) -> dict:
    """Per level, the KL of the posterior from the prior per latent dimension on the validation
    split, averaged over its scored runs: the one latent number that is a vector (the scalar
    ones, KL per step, active units and the gains, are per-level `statistics`)."""
    out: dict[str, list] = {}
    for r in runs:
        if r.get("val_kl_per_dim") is not None:
            out.setdefault(r["label"], []).append(r["val_kl_per_dim"])
    return {lv: {"n": len(rows), "kl_per_dim": np.mean(rows, 0).tolist()}
            for lv, rows in out.items()}


def _gain(psnr: Optional[float], reference: Optional[float]) -> Optional[float]:
    """psnr - reference (dB); None when either is missing."""
    return None if psnr is None or reference is None else psnr - reference


def describe(summary: dict) -> list[str]:
    """Lines for the terminal: per level mean and CI of each metric, then the comparison
    sentences (of the metrics other than PSNR, only the significant ones)."""
    lines = []
    for group in summary["configs"]:
        lines.append(f"configuration {group['rank']} (sweep trial {group['trial_id']}, "
                     f"{summary['factor']} varied):")
        others = [m for m in METRICS if m not in PSNRS and m in group["comparisons"]]
        for lv, values in group["statistics"].items():
            lines.append(f"  {lv}: " + ", ".join(_interval(m, values[m]) for m in PSNRS)
                         + f" (n = {values['val_psnr']['n']})")
            if others:
                lines.append("    " + ", ".join(_interval(m, values[m]) for m in others))
        quiet = []
        for metric in METRICS:
            found = [c for key in ("comparisons", "paired_comparisons")
                     for c in group.get(key, {}).get(metric, [])]
            shown = found if metric in PSNRS else [c for c in found if c["significant"]]
            lines += [f"  {metric}: {c['sentence']}" for c in shown]
            if found and not shown:
                quiet.append(metric)
        if quiet:
            lines.append(f"  no pair differs in {', '.join(quiet)} (Welch nor paired by seed)")
    return lines


def _interval(metric: str, iv: dict) -> str:
    """Mean [CI] of one metric, e.g. "kl 0.52 [0.31, 0.73]"; censored runs as "(k of n never)"."""
    mean = f"{iv['mean']:.2f}" if number(iv["mean"]) is not None else "-"
    ci = f" [{iv['low']:.2f}, {iv['high']:.2f}]" if number(iv["low"]) is not None else ""
    never = (f" ({iv['censored']} of {iv['n'] + iv['censored']} never)"
             if iv.get("censored") else "")
    return f"{metric} {mean}{ci}{never}"


def read_kept(path: Path) -> Optional[dict]:
    """A JSON file kept by an earlier step (test_metrics.json, confirm.json); None when it is
    missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
