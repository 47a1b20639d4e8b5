"""How fast a model learns per second of training: seconds to the copy baseline + 1 and + 2 dB.

Each epoch's result row carries `val_psnr`, the copy baseline's PSNR on the same validation
sequences (`val_baseline_psnr`: BAIR's last given frame, the dance task's first frame repeated)
and the epoch's wall time (`epoch_time_s`: training plus validation, without Ray's start-up).
The seconds to a margin are the sum of `epoch_time_s` up to and including the first epoch
whose `val_psnr` reaches the baseline plus that margin; None when no epoch does (or the run
predates `val_baseline_psnr`). Epoch granularity: a run that gets there within its first epoch
is counted at the end of that epoch.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

MARGINS = (1.0, 2.0)  # dB over the copy baseline


def margin_label(margin: float) -> str:
    return f"+{margin:g} dB"


def measured(history: pd.DataFrame) -> bool:
    """Whether the history can tell when a margin was reached: it has epoch times and a copy
    baseline (runs from before `val_baseline_psnr` do not)."""
    return ("epoch_time_s" in history and "val_baseline_psnr" in history
            and bool(history["val_baseline_psnr"].notna().any()))


def seconds_to_quality(history: pd.DataFrame, margins: tuple[float, ...] = MARGINS
                       ) -> dict[str, Optional[float]]:
    """{"+1 dB": seconds, "+2 dB": seconds} for one run's per-epoch history (None: not reached)."""
    out: dict[str, Optional[float]] = {margin_label(m): None for m in margins}
    if not measured(history):
        return out
    elapsed = 0.0
    for row in history.itertuples(index=False):
        seconds = float(getattr(row, "epoch_time_s"))
        elapsed += seconds if math.isfinite(seconds) else 0.0
        psnr, base = float(getattr(row, "val_psnr")), float(getattr(row, "val_baseline_psnr"))
        if getattr(row, "diverged", False) or not (math.isfinite(psnr) and math.isfinite(base)):
            continue
        for m in margins:
            key = margin_label(m)
            if out[key] is None and psnr >= base + m:
                out[key] = round(elapsed, 1)
    return out


def level_speed(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """Per level of a confirmation (its runs' `seconds_to`, None where not `measured`): for each
    margin, how many runs reached it, of how many, and the median seconds of those that did."""
    out: dict[str, dict[str, dict]] = {}
    for r in runs:
        if r.get("seconds_to") is None:
            continue
        for key, seconds in r["seconds_to"].items():
            entry = out.setdefault(r["label"], {}).setdefault(key, {"n": 0, "reached": []})
            entry["n"] += 1
            if seconds is not None:
                entry["reached"].append(seconds)
    return {lv: {key: {"n": e["n"], "reached": len(e["reached"]),
                       "median_s": (float(pd.Series(e["reached"]).median())
                                    if e["reached"] else None)}
                 for key, e in by_margin.items()}
            for lv, by_margin in out.items()}
