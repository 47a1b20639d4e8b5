"""What the report concludes from a confirmation (analysis.report): the headline line of each
configuration, and the runs that never reached a quality.
"""
from __future__ import annotations

from analysis.tables import METRIC_NAMES, PSNRS, fmt


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
