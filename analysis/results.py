"""Load a sweep experiment directory (docs/CONTRACTS.md, "Sweep experiment directory") into pandas.

The one loader behind plots, tables and the report. `load_experiment` returns an `Experiment` with
- `trials`: one row per trial, indexed by trial_id: dir, number (t<number>_...), status, epochs run,
  best validation PSNR and its epoch, total time, the searched hyperparameters and KEY_PARAMS;
- `history`: one row per (trial, epoch) for epochs 1..last, duplicate-free (Ray may append repeated
  rows after a trial restore: the last one wins) and gap-free (a lost epoch is a row of NaNs);
- `checkpoints`: the kept `checkpoint_*` dirs, each matched to the result row that reported it.
Nothing here needs Ray or a GPU.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from cvae.config import KL_ANNEAL_MODES, Config

MODE, CYCLES, LR, TFR_START = "kl_anneal", "kl_anneal_cycle", "lr", "tfr_start_decay_epoch"
KEY_PARAMS = (MODE, CYCLES, LR, TFR_START)  # always in `trials`; sweep.json "base" if not searched
CYCLICAL = ("cyclical", "cyclical-sigmoid")  # modes for which kl_anneal_cycle means something
STATUSES = ("completed", "early_stopped", "diverged", "error", "running", "pending")  # trials.json
INCOMPLETE = "running/incomplete"  # inferred: short of the budget while the sweep runs
MISSING = "missing"  # listed in trials.json or expected by num_samples, but no result rows
OPTUNA_JOURNAL, OPTUNA_STUDY = "optuna_journal.log", "sweep"  # the sweep's Optuna study (search/)
NOT_STARTED = "not-started-"  # trial_id prefix of the trials num_samples expects beyond those known
METRICS = ("loss", "mse", "kld", "beta", "tfr", "val_psnr", "val_ssim", "val_psnr_best", "diverged",
           "epoch_time_s", "time_total_s", "val_baseline_psnr")  # per-epoch columns kept in `history`


class ExperimentError(ValueError):
    """The directory is not a readable sweep experiment; the message names the file."""


@dataclass
class Experiment:
    path: Path
    sweep: dict[str, Any]  # sweep.json as written by search/
    trials: pd.DataFrame
    history: pd.DataFrame
    checkpoints: pd.DataFrame  # trial_id, name, path, epoch, val_psnr (NaN: no result row names it)

    @property
    def name(self) -> str:
        return str(self.sweep.get("name") or self.path.name)

    @property
    def searched(self) -> list[str]:
        """Searched hyperparameters, in sweep.json order."""
        return list(self.sweep.get("searched") or {})

    @property
    def epochs(self) -> int:
        """Epochs a trial runs when no scheduler stops it."""
        return _sweep_epochs(self.sweep)

    @property
    def finished(self) -> bool:
        return bool(self.sweep.get("finished"))

    @property
    def planned(self) -> int:
        """Trials the sweep was asked for (num_samples), at least the trials it knows about."""
        return max(int(self.sweep.get("num_samples") or 0), len(self.trials))

    @property
    def budget(self) -> int:
        """Trial-epochs of the sweep without early stopping: planned trials x epochs."""
        return self.planned * self.epochs

    def trial_epochs(self) -> int:
        """Epochs run, summed over all trials."""
        return int(self.trials["epochs"].sum())

    def saved_fraction(self) -> float:
        """Share of the budget that early stopping (or an unfinished sweep) did not spend."""
        return 1 - self.trial_epochs() / self.budget if self.budget else math.nan

    def ran(self) -> pd.DataFrame:
        """Trials that reported at least one epoch."""
        return self.trials[self.trials["status"] != MISSING]

    def modes(self) -> list[str]:
        """Annealing modes of the trials that ran, in KL_ANNEAL_MODES order."""
        return sorted(self.ran()[MODE].dropna().unique(), key=_mode_order)

    def ranked(self) -> pd.DataFrame:
        """Trials that ran, best validation PSNR first (ties: lower trial number first)."""
        return self.ran().sort_values(["best_val_psnr", "number"], ascending=[False, True],
                                      na_position="last", kind="stable")

    def best_by_mode(self) -> pd.Series:
        """trial_id of each annealing mode's best trial, modes in KL_ANNEAL_MODES order."""
        ranked = self.ranked().dropna(subset=["best_val_psnr"])
        best = ranked.groupby(MODE)["trial_id"].first()
        return best.reindex([m for m in self.modes() if m in best.index])

    def trial_history(self, trial_id: str) -> pd.DataFrame:
        return self.history[self.history["trial_id"] == trial_id]


def load_experiment(path: Path | str) -> Experiment:
    """Read `path` (sweep.json, optional trials.json, trial dirs) into an Experiment."""
    path = Path(path)
    if not (path / "sweep.json").is_file():
        raise ExperimentError(f"{path}: not a sweep experiment directory (no sweep.json)")
    sweep = _read_json(path / "sweep.json")
    registry = _read_json(path / "trials.json") if (path / "trials.json").is_file() else {}
    by_dir = {entry.get("dir"): tid for tid, entry in registry.items() if entry.get("dir")}

    dirs = {d.name for d in path.iterdir()
            if d.is_dir() and ((d / "params.json").is_file() or (d / "result.json").is_file())}
    dirs |= {d for d in by_dir if (path / d).is_dir()}
    trial_rows, histories, checkpoints = [], [], []
    seen = set()
    for name in sorted(dirs, key=_dir_order):
        rows = _read_lines(path / name / "result.json")
        reported = next((str(r["trial_id"]) for r in rows if r.get("trial_id")), None)
        tid = by_dir.get(name) or reported or name.split("_", 1)[-1]
        seen.add(tid)
        params_file = path / name / "params.json"
        params = _read_json(params_file) if params_file.is_file() else {}
        history = read_history(path / name).assign(trial_id=tid)
        histories.append(history)
        checkpoints += _checkpoints(path / name, rows, tid)
        trial_rows.append(_trial(tid, name, params, history, registry.get(tid), sweep))
    for tid, entry in registry.items():  # listed, but no dir on disk
        if tid not in seen:
            trial_rows.append(_trial(tid, entry.get("dir"), {}, _history([]), entry, sweep))
    for k in range(len(trial_rows), int(sweep.get("num_samples") or 0)):  # never started
        trial_rows.append(_trial(f"{NOT_STARTED}{k + 1}", None, {}, _history([]), None, sweep))

    if not trial_rows:
        raise ExperimentError(f"{path}: no trials (no trial dirs and num_samples is 0)")
    trials = pd.DataFrame({key: _typed([row[key] for row in trial_rows]) for key in trial_rows[0]})
    trials.index = trials["trial_id"].rename(None)
    columns = ["trial_id", "epoch", *METRICS]
    history = (pd.concat(histories, ignore_index=True)[columns] if histories
               else pd.DataFrame(columns=columns))
    ckpt_cols = ["trial_id", "name", "path", "epoch", "val_psnr"]
    return Experiment(path, sweep, trials, history, pd.DataFrame(checkpoints, columns=ckpt_cols))


def read_history(trial_dir: Path | str) -> pd.DataFrame:
    """One trial's per-epoch rows as in `Experiment.history` (without trial_id): the launcher's
    history.json when present, else Ray's result.json."""
    trial_dir = Path(trial_dir)
    timeline = trial_dir / "history.json"
    return _history(_read_json(timeline) if timeline.is_file()
                    else _read_lines(trial_dir / "result.json"))


def best_checkpoint(exp: Experiment, trial_id: str) -> Optional[tuple[Path, int]]:
    """(checkpoint dir, epoch) of the trial's kept checkpoint whose own result row has the highest
    val_psnr; None if it kept none. Checkpoints that no result row names (a writer without Ray's
    `checkpoint_dir_name` column) get their epoch from state.pt via `cvae.checkpoint.load`."""
    ckpts = exp.checkpoints[exp.checkpoints["trial_id"] == trial_id].copy()
    if ckpts.empty:
        return None
    unknown = ckpts["epoch"].isna()
    if unknown.any():
        from cvae.checkpoint import load
        psnr = exp.trial_history(trial_id).set_index("epoch")["val_psnr"]
        ckpts.loc[unknown, "epoch"] = [int(load(p)["epoch"]) for p in ckpts.loc[unknown, "path"]]
        ckpts.loc[unknown, "val_psnr"] = ckpts.loc[unknown, "epoch"].map(psnr)
    best = ckpts.sort_values(["val_psnr", "epoch"], na_position="first").iloc[-1]
    return Path(best["path"]), int(best["epoch"])


def spec_choices(spec: Any) -> list:
    """The choices of a categorical search spec (a sweep.json "searched" value), else []."""
    return list(spec.get("choices") or spec.get("values") or []) if isinstance(spec, dict) else []


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{file}: {err}") from None


def _read_lines(file: Path) -> list[dict]:
    """JSON-lines rows; a line that does not parse (a row cut off while written) is skipped."""
    if not file.is_file():
        return []
    rows = []
    for line in file.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _sweep_epochs(sweep: dict) -> int:
    return int(sweep.get("epochs") or (sweep.get("base") or {}).get("epochs") or 0)


def _mode_order(mode: str) -> tuple:
    known = mode in KL_ANNEAL_MODES
    return (KL_ANNEAL_MODES.index(mode) if known else len(KL_ANNEAL_MODES), "" if known else mode)


def _dir_order(name: str) -> tuple:
    """Trial dirs `t<index>_<trial_id>` sort by index; other names after them, alphabetically."""
    match = re.match(r"t(\d+)_", name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


def _history(rows: list[dict]) -> pd.DataFrame:
    """Rows for epochs 1..last: the last row of a repeated epoch wins, a missing epoch is NaN."""
    frame = pd.DataFrame(rows)
    if "epoch" not in frame and "training_iteration" in frame:
        frame["epoch"] = frame["training_iteration"]
    frame = frame.reindex(columns=["epoch", *METRICS])
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce")
    frame = frame.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last")
    last = int(frame["epoch"].max()) if len(frame) else 0
    frame = frame.set_index(frame["epoch"].astype(int)).reindex(range(1, last + 1))
    frame["epoch"] = frame.index
    frame["diverged"] = frame["diverged"].fillna(False).astype(bool)
    for key in METRICS:
        if key != "diverged":
            frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame.reset_index(drop=True)


def _checkpoints(trial_dir: Path, rows: list[dict], trial_id: str) -> list[dict]:
    """Kept checkpoint dirs with the epoch and val_psnr of the result row naming them."""
    reported = {r["checkpoint_dir_name"]: r for r in rows if r.get("checkpoint_dir_name")}
    out = []
    for ckpt in sorted(trial_dir.glob("checkpoint_*")):
        if (ckpt / "state.pt").is_file():
            row = reported.get(ckpt.name, {})
            epoch = row.get("epoch", row.get("training_iteration"))
            out.append({"trial_id": trial_id, "name": ckpt.name, "path": str(ckpt),
                        "epoch": math.nan if epoch is None else epoch,
                        "val_psnr": row.get("val_psnr", math.nan)})
    return out


def _trial(tid: str, name: Optional[str], params: dict, history: pd.DataFrame,
           entry: Optional[dict], sweep: dict) -> dict:
    """One `trials` row: status, results summary and hyperparameters (params.json, else base)."""
    searched = list(sweep.get("searched") or {})
    fixed = {**Config().to_dict(), **(sweep.get("base") or {})}
    values = {k: params.get(k, None if k in searched else fixed.get(k))
              for k in [*searched, *(k for k in KEY_PARAMS if k not in searched)]}
    if values.get(MODE) not in CYCLICAL:
        values[CYCLES] = None
    psnr, seconds = history["val_psnr"], history["time_total_s"].max()
    best = psnr.idxmax() if psnr.notna().any() else None
    match = re.match(r"t(\d+)_", name or "")
    return {
        "trial_id": tid, "dir": name, "number": int(match.group(1)) if match else None,
        "status": _status(entry, history, sweep),
        "status_source": "trials.json" if entry and entry.get("status") in STATUSES else "inferred",
        "epochs": len(history),
        "best_val_psnr": None if best is None else float(psnr[best]),
        "best_epoch": None if best is None else int(history["epoch"][best]),
        "time_total_s": None if pd.isna(seconds) else float(seconds),
        **values,
    }


def trial_status(*, diverged: bool, epochs: int, max_t: int, error: bool = False,
                 ended: bool = True) -> str:
    """How a trial ended, the one rule behind trials.json (search.progress), the Optuna states
    (search.searcher) and the statuses inferred here: error; diverged; completed (all `max_t`
    epochs); else early_stopped (by ASHA) once it has `ended`, INCOMPLETE while it may go on."""
    if error:
        return "error"
    if diverged:
        return "diverged"
    if epochs >= max_t:
        return "completed"
    return "early_stopped" if ended else INCOMPLETE


def _status(entry: Optional[dict], history: pd.DataFrame, sweep: dict) -> str:
    """trials.json's status when given; else inferred from the rows and whether the sweep ended."""
    if history.empty:
        return MISSING
    if entry and entry.get("status") in STATUSES:
        return entry["status"]
    return trial_status(diverged=bool(history["diverged"].any()), epochs=len(history),
                        max_t=_sweep_epochs(sweep), ended=bool(sweep.get("finished")))


def _typed(values: list) -> pd.Series:
    """A column: integers with gaps as Int64 (4 prints as 4, not 4.0), other numbers as float."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if present and len(numbers) == len(present):
        integers = all(isinstance(v, int) for v in numbers)
        return pd.Series(values, dtype="Int64" if integers else float)
    return pd.Series(values, dtype=object)
