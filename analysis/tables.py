"""Discussion tables of a sweep, each written as Markdown, LaTeX (booktabs) and CSV.

Every builder takes the `Experiment` of analysis.results and returns a `Table`: a frame of raw
values (NaN/None = not applicable) with a title and a traceability note naming the file/column
behind each number. CSV holds the raw values; Markdown and LaTeX print them through `fmt`
(so '-' in a printed table is an empty CSV cell); pandas renders them (`to_markdown` through
tabulate, `to_latex` through its Styler).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from analysis.results import CYCLES, LR, MODE, TFR_START, Experiment, spec_choices
from analysis.speed import seconds_to_quality

COPY_BASELINE = "the copy baseline: BAIR's last given frame, the dance task's first frame repeated"
TEST_PROTOCOL = "test split; BAIR: 2 past -> 10 future, dance: the lab's 630-frame protocol"
SINGLE_RUNS = ("Each trial is a single run with one seed: a gap between trials can be seed "
               "noise (the confirmation tables, when present, give means over seeds).")


def fmt(value: Any) -> str:
    """A cell as printed: '-' for missing, yes/no, integers as is, floats to 2 decimals (3
    significant digits below 1, e.g. learning rates)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


@dataclass
class Table:
    name: str  # file stem under <out>/tables/
    title: str
    frame: pd.DataFrame  # raw values
    source: str  # traceability: which file/column each column comes from

    def cells(self) -> list[list[str]]:
        """Header row, then the printed rows."""
        return [[str(c) for c in self.frame.columns],
                *([fmt(v) for v in row] for row in self.frame.itertuples(index=False))]

    def printed(self) -> pd.DataFrame:
        """The frame with every cell as printed (`fmt`)."""
        head, *rows = self.cells()
        return pd.DataFrame(rows, columns=head, dtype=object)

    def right_aligned(self) -> list[bool]:
        """Per column: numeric (not boolean) columns are right-aligned in print."""
        numeric, boolean = pd.api.types.is_numeric_dtype, pd.api.types.is_bool_dtype
        return [numeric(t) and not boolean(t) for t in self.frame.dtypes]

    def markdown(self) -> str:
        """A pipe table (pandas + tabulate), cells as printed."""
        cells = self.printed().map(lambda c: c.replace("|", r"\|"))
        align = ["right" if r else "left" for r in self.right_aligned()]
        return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                                 colalign=align or None)

    def latex(self) -> str:
        """A booktabs tabular (pandas' Styler), cells as printed and escaped."""
        align = "".join("r" if r else "l" for r in self.right_aligned()) or "l"
        body = self.printed().to_latex(index=False, escape=True, column_format=align)
        return f"% {self.title}\n{body}"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write <name>.md, <name>.tex and <name>.csv into out_dir; return them by extension."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {ext: out_dir / f"{self.name}.{ext}" for ext in ("md", "tex", "csv")}
        paths["md"].write_text(
            f"## {self.title}\n\n{self.markdown()}\n\nTraceability: {self.source}\n")
        paths["tex"].write_text(self.latex())
        self.frame.to_csv(paths["csv"], index=False)
        return paths


def mode_table(exp: Experiment, test_psnr: Mapping[str, float]) -> Table:
    """Per annealing mode: trials, best/median validation PSNR, and the best trial's test PSNR,
    settings and epochs run."""
    ran, best = exp.ran(), exp.best_by_mode()
    rows = []
    for mode, tid in best.items():
        group, top = ran[ran[MODE] == mode], exp.trials.loc[tid]
        rows.append({"mode": mode, "trials": len(group),
                     "best val PSNR": top["best_val_psnr"],
                     "median val PSNR": group["best_val_psnr"].median(),
                     "test PSNR (best)": test_psnr.get(mode, math.nan), "best trial": tid,
                     "lr": top[LR], "tfr decay start": top[TFR_START], "cycles": top[CYCLES],
                     "epochs run (best)": top["epochs"]})
    columns = ["mode", "trials", "best val PSNR", "median val PSNR", "test PSNR (best)",
               "best trial", "lr", "tfr decay start", "cycles", "epochs run (best)"]
    return Table("modes", "Annealing modes (single runs: each trial is one seed)",
                 pd.DataFrame(rows, columns=columns),
                 f"trials = trial dirs with result.json rows per `{MODE}` (params.json); "
                 "best/median val PSNR = max of `val_psnr` over each trial's result.json, then "
                 "max/median over the mode's trials; test PSNR = `psnr` of evaluate_checkpoint on "
                 f"the best trial's best kept checkpoint ({TEST_PROTOCOL}); "
                 f"lr/tfr decay start/cycles = `{LR}`/`{TFR_START}`/`{CYCLES}` of the best trial's "
                 "params.json ('-': not a cyclical mode); epochs run = last `epoch` in its "
                 f"result.json. {SINGLE_RUNS}")


def topk_table(exp: Experiment, k: int) -> Table:
    """The k trials with the highest best validation PSNR, with every searched hyperparameter."""
    columns = {"trial_id": "trial", **{p: p for p in exp.searched},
               "best_val_psnr": "best val PSNR", "best_epoch": "best epoch", "epochs": "epochs",
               "status": "status"}
    frame = exp.ranked().head(k)[list(columns)].rename(columns=columns).reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return Table("top_trials", f"Top {k} trials by best validation PSNR (single runs, one "
                 "seed each)", frame,
                 "hyperparameters from each trial's params.json; best val PSNR / best epoch = max "
                 "and argmax of `val_psnr` in result.json; epochs = last `epoch`; status from "
                 "trials.json, else inferred from result.json and sweep.json `finished`. "
                 + SINGLE_RUNS)


def effect_table(exp: Experiment) -> Table:
    """Effect of each searched hyperparameter on the best validation PSNR: per value (categorical,
    numeric with at most 4 values, integers with at most 6) or per tercile (numeric), with
    Spearman's rank correlation for numeric parameters. Groups are disjoint: equal values always
    share a group."""
    ran, rows = exp.ran(), []
    for param in exp.searched:
        data = ran[[param, "best_val_psnr"]].dropna()
        if data.empty:
            continue
        x, y = data[param], data["best_val_psnr"].astype(float)
        choices = spec_choices(exp.sweep["searched"][param])
        if choices or not pd.api.types.is_numeric_dtype(x):
            order = choices or sorted(x.unique(), key=str)
            groups = [(fmt(v), y[x == v]) for v in order if (x == v).any()]
            rho = math.nan
        else:
            numbers = x.astype(float)
            bins = _value_bins(numbers, pd.api.types.is_integer_dtype(x))
            groups = [(label, y[bins == b]) for b, label in _range_labels(x, bins)]
            rho = numbers.rank().corr(y.rank()) if len(x) >= 3 else math.nan
        top = max(range(len(groups)), key=lambda i: groups[i][1].median())
        rows += [{"parameter": param, "group": label, "trials": len(vals), "mean": vals.mean(),
                  "median": vals.median(), "best": vals.max(), "spearman rho": rho,
                  "best group": i == top} for i, (label, vals) in enumerate(groups)]
    columns = ["parameter", "group", "trials", "mean", "median", "best", "spearman rho",
               "best group"]
    return Table("effects", "Effect of each searched hyperparameter on best validation PSNR "
                 "(single runs, one seed each)",
                 pd.DataFrame(rows, columns=columns),
                 "groups over trials with result.json rows, by the parameter's params.json value "
                 "(categorical, at most 4 values or at most 6 integers: one group per value; else "
                 "three groups of consecutive values, equal values in the same group, labelled "
                 "[min, max] of their values); mean/median/best of each trial's max `val_psnr`; "
                 "each trial is one run with one seed; spearman "
                 "rho = rank correlation of the value with that PSNR; best group = highest median. "
                 f"`{CYCLES}` counts cyclical modes only.")


def compute_table(exp: Experiment) -> Table:
    """Trial-epochs the sweep ran against the grid budget without early stopping, and time."""
    ran = exp.ran()
    rows = [("trials with results", len(ran), "trial dirs with result.json rows"),
            ("trials planned", exp.planned, "sweep.json num_samples (or trials found, if more)"),
            ("epochs per trial (budget)", exp.epochs, "sweep.json epochs"),
            ("trial-epochs run", exp.trial_epochs(),
             "sum over trials of the last `epoch` in result.json"),
            ("grid budget (trials x epochs)", exp.budget, "trials planned x epochs per trial"),
            ("fraction saved", exp.saved_fraction(), "1 - trial-epochs run / grid budget"),
            ("total trial time (s)", ran["time_total_s"].sum(min_count=1),
             "sum over trials of the last `time_total_s` in result.json"),
            ("sweep wall time (s)", exp.sweep.get("wall_time_s"), "sweep.json wall_time_s")]
    frame = pd.DataFrame(rows, columns=["quantity", "value", "source"], dtype=object)
    return Table("compute", "Compute used", frame, "the source column of each row.")


def speed_table(exp: Experiment, k: int) -> Table:
    """Learning speed of the k best trials: training seconds to the copy baseline + 1 dB and
    + 2 dB on the validation split (analysis.speed)."""
    rows = []
    for _, trial in exp.ranked().head(k).iterrows():
        history = exp.trial_history(trial["trial_id"])
        base = history["val_baseline_psnr"].dropna()
        rows.append({"trial": trial["trial_id"], "mode": trial[MODE], "lr": trial[LR],
                     "copy baseline val PSNR": base.iloc[-1] if len(base) else math.nan,
                     "best val PSNR": trial["best_val_psnr"], "epochs": trial["epochs"],
                     **{f"seconds to {key}": math.nan if v is None else v
                        for key, v in seconds_to_quality(history).items()}})
    return Table("speed", f"Learning speed of the top {k} trials: training seconds to the "
                 "copy baseline + 1 and + 2 dB", pd.DataFrame(rows),
                 f"`val_baseline_psnr` ({COPY_BASELINE}, PSNR on the validation sequences "
                 "scored each epoch) and `epoch_time_s` (training + validation, without Ray "
                 "start-up) in each trial's result.json; seconds = sum of epoch_time_s up to the "
                 "first epoch whose `val_psnr` reaches the baseline + margin; '-': not reached "
                 "(or stopped by ASHA first). " + SINGLE_RUNS)


def all_tables(exp: Experiment, top_k: int, test_psnr: Mapping[str, float]) -> list[Table]:
    return [mode_table(exp, test_psnr), topk_table(exp, top_k), speed_table(exp, top_k),
            effect_table(exp), compute_table(exp)]


def _value_bins(numbers: pd.Series, integer: bool) -> pd.Series:
    """Group index of each value: one group per distinct value when there are few (at most 4,
    or 6 integers), else terciles of the trials over the sorted distinct values, each value
    going to the tercile holding the middle of its run of ties."""
    distinct = np.sort(numbers.unique())
    if len(distinct) <= (6 if integer else 4):
        return numbers.map({v: i for i, v in enumerate(distinct)})
    counts = numbers.value_counts().reindex(distinct).to_numpy()
    middle = (np.cumsum(counts) - counts / 2) / len(numbers)
    return numbers.map(dict(zip(distinct, np.minimum(2, (3 * middle).astype(int)))))


def _range_labels(values: pd.Series, bins: pd.Series) -> list[tuple[int, str]]:
    """(group, label) in value order: the group's value, or [min, max] of its values, printed
    with as many significant digits as it takes to tell all the bounds apart."""
    bounds = [(b, values[bins == b].min(), values[bins == b].max())
              for b in sorted(bins.unique())]
    ends = sorted({v for _, low, high in bounds for v in (low, high)})
    for digits in range(3, 16):
        text = {v: fmt(v) if digits == 3 else f"{v:.{digits}g}" for v in ends}
        if len(set(text.values())) == len(ends):
            break
    return [(b, text[low] if low == high else f"[{text[low]}, {text[high]}]")
            for b, low, high in bounds]


PSNRS = ("val_psnr", "test_psnr")  # a confirmation's metrics in every confirm.json
METRIC_NAMES = {"val_psnr": "val psnr", "test_psnr": "test psnr", "kl": "KL",
                "active_units": "active units", "posterior_gain": "posterior gain",
                "best_of_n_gain": "best-of-N gain", "seconds_to_1db": "seconds to + 1 dB"}


def confirm_metrics(summary: dict) -> dict[str, str]:
    """{metric: unit} of a confirmation's per-level statistics, in order (confirm.json
    `metrics`; one written before it: the two PSNRs)."""
    return summary.get("metrics") or {m: "dB" for m in PSNRS}


def confirm_tables(summary: dict, stem: str) -> list[Table]:
    """Tables of a confirmation (search.confirm's confirm.json, in directory `stem`): per level,
    mean and confidence interval over seeds of final validation and test PSNR, and of the other
    metrics; every pairwise comparison (Welch and paired by seed, Holm-corrected); the latent
    and the seconds to the copy baseline + 1 and + 2 dB per level."""
    factor, level = summary["factor"], f"{summary['confidence']:.0%}"
    units = confirm_metrics(summary)
    rows, pairs, others = [], [], []
    for group in summary["configs"]:
        for label, values in group["statistics"].items():
            others += [{"config": group["rank"], factor: label, "metric": m, "unit": unit,
                        "n": values[m]["n"], "mean": values[m]["mean"],
                        f"{level} CI low": values[m]["low"], f"{level} CI high": values[m]["high"],
                        "never reached": values[m].get("censored")}
                       for m, unit in units.items() if m not in PSNRS and m in values]
            val, test = values["val_psnr"], values["test_psnr"]
            rows.append({"config": group["rank"], factor: label, "n": val["n"],
                         "diverged": values["diverged"], "val PSNR mean": val["mean"],
                         f"val {level} CI low": val["low"], f"val {level} CI high": val["high"],
                         "n test": test["n"], "test PSNR mean": test["mean"],
                         f"test {level} CI low": test["low"],
                         f"test {level} CI high": test["high"]})
        for key, test in (("comparisons", "Welch"), ("paired_comparisons", "paired by seed")):
            for metric, comparisons in group.get(key, {}).items():
                pairs += [{"config": group["rank"], "metric": metric, "test": test,
                           "unit": c.get("unit", "dB"), "a": c["a"], "b": c["b"],
                           "difference a - b": c["diff"], f"{level} CI low": c["low"],
                           f"{level} CI high": c["high"], "df": c["df"], "p": c["p"],
                           "p (Holm)": c["p_holm"], "Hedges g": c["g"], "n a": c["n_a"],
                           "n b": c["n_b"], "significant": c["significant"]}
                          for c in comparisons]
    seeds = ", ".join(map(str, summary["seeds"]))
    method = "t-based" if summary.get("ci_method", "t") == "t" else "bootstrap (BCa)"
    latent = [{factor: lv, "n": v["n"],
               "KL per dimension": " ".join(f"{x:.3g}" for x in v["kl_per_dim"])}
              for lv, v in (summary.get("latent") or {}).items()]
    extra = [Table(f"{stem}_latent", f"{factor}: KL per latent dimension of each level",
                   pd.DataFrame(latent),
                   f"{stem}/confirm.json `latent`: the mean over the runs of each level of the "
                   "KL of the posterior from the prior per dimension, per predicted step, on the "
                   "validation split (first 64 sequences); KL per step, active units and the "
                   f"gains are in {stem}_metrics. A KL near 0 in every dimension is a collapsed "
                   "latent, which KL annealing is meant to prevent.")
             ] if latent else []
    if others:
        frame = pd.DataFrame(others)
        frame["never reached"] = frame["never reached"].astype("Int64")
        extra.insert(0, Table(
            f"{stem}_metrics", f"{factor} over seeds: mean and {level} CI of what each level did "
            "to the latent, and of its seconds to the copy baseline + 1 dB", frame,
            f"{stem}/confirm.json `configs[].statistics` ({method} intervals over the runs of "
            "each level; n = runs with a value), from each run's `runs[]` value: kl = `val_kl` "
            "(nats per predicted step, validation split), active_units, posterior_gain = "
            "`posterior_psnr` - `test_psnr`, best_of_n_gain = `best_of_n_psnr` (best of "
            "`samples` prior draws by SSIM) - `first_sample_psnr` (the first draw, same test "
            "sequences), seconds_to_1db = `seconds_to` "
            "\"+1 dB\"; never reached = runs that did not get there, left out of n and mean."))
    speed = [{factor: lv, **{f"{key}: reached": f"{v['reached']}/{v['n']}"
                             for key, v in margins.items()},
              **{f"{key}: median s": v["median_s"] for key, v in margins.items()}}
             for lv, margins in (summary.get("speed") or {}).items()]
    if speed:
        extra.append(Table(
            f"{stem}_speed", f"{factor}: training seconds to the copy baseline + 1 and + 2 dB",
            pd.DataFrame(speed),
            f"{stem}/confirm.json `speed` from each run's `seconds_to` (analysis.speed): sum of "
            "`epoch_time_s` up to the first epoch whose `val_psnr` reaches `val_baseline_psnr` "
            f"({COPY_BASELINE}, on the same validation sequences) + margin; reached = runs "
            "that got there, of those run; median over the runs that got there."))
    return [
        Table(f"{stem}_levels", f"{factor} over seeds: mean and {level} CI of final PSNR "
              f"({len(summary['seeds'])} seeds per level)", pd.DataFrame(rows),
              f"{stem}/confirm.json `configs[].statistics`: over the runs of each level (seeds "
              f"{seeds}, {summary['epochs']} epochs, no early stopping) of the configuration of "
              f"rank `config` in the sweep; val = the last `val_psnr` of each run's result.json "
              "(a diverged run counts as 0 dB), test = `psnr` of evaluate_checkpoint on its final "
              f"checkpoint ({TEST_PROTOCOL}); {method} intervals; n = runs "
              "counted, n test = runs with a test evaluation."),
        Table(f"{stem}_comparisons", f"{factor}: pairwise comparisons (Welch, and paired by "
              "seed; Holm-corrected within each metric)", pd.DataFrame(pairs),
              f"{stem}/confirm.json `configs[].comparisons`: Welch's t-test of the level means "
              "(scipy.stats.ttest_ind, equal_var=False), interval of the difference with the "
              "Welch-Satterthwaite df (not adjusted), p Holm-adjusted over the pairs of each "
              f"metric, Hedges' g with pooled SD; significant = p (Holm) < {summary['alpha']}. "
              "`configs[].paired_comparisons`: the same pairs matched by seed (a seed gives "
              "every level the same initialisation and batches), paired t-test on the per-seed "
              "differences (scipy.stats.ttest_rel, df = pairs - 1), Holm over the pairs of each "
              "metric; Hedges g column = g_z (mean / SD of the differences, bias-corrected); "
              "n a = n b = seed pairs; unit = of the difference and its interval; a level with "
              "no value of a metric is in none of its pairs."),
    ] + extra
