"""The sweep's live output and its files: one line per trial event, a compact table now and
then, and `trials.json` + per-trial `history.json` in the experiment directory.

`SweepCallback` is a Tune callback running on the driver. Files go straight to the storage
path (local directory or URI) through the trial's pyarrow filesystem, not through Tune's
driver staging directory, and are replaced atomically (write, then move):

- `<trial_dir>/history.json`: the trial's per-epoch rows, one per epoch, sorted. Tune appends to
  `result.json`, so a trial resumed from an older checkpoint (after a crash of the driver) logs
  some epochs twice; here a row for epoch e replaces any earlier rows for epochs >= e, so the
  history is the gap-free, duplicate-free timeline that led to the trial's last result.
- `trials.json` (format in docs/CONTRACTS.md), written after every forced experiment-state save
  (`flush`, called by `search.scheduler.SweepScheduler`) and at the end.
- `optuna_journal.log` (remote storage only; a local experiment directory holds the journal
  itself): a copy of the Optuna study's journal, uploaded at every flush.

Its state (trial records, histories, ASHA's rung records) is saved with Tune's experiment state
(`get_state`/`set_state`), so `--resume` continues with it.
"""
from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any, Optional

import pyarrow.fs
from ray.tune import Callback

from analysis.results import trial_status
from cvae.jsonsafe import number
from search.searcher import JOURNAL
from search.storage import write_json

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from search.scheduler import SweepScheduler
    from search.searcher import SweepSearcher

# Short column names for the live table; other searched fields show their own name.
SHORT_NAMES = {"kl_anneal": "mode", "kl_anneal_cycle": "cycles", "kl_anneal_ratio": "ratio",
               "tfr_start_decay_epoch": "tfr_decay@", "tfr_decay_step": "tfr_step",
               "tfr_lower_bound": "tfr_min", "batch_size": "batch", "learned_prior": "lp",
               "beta_max": "beta", "beta_min": "beta_min", "kl_anneal_unit": "unit"}
# Ray's bookkeeping keys that history.json leaves out.
_RAY_KEYS = {"config", "date", "hostname", "node_ip", "pid", "done", "experiment_tag",
             "should_checkpoint", "time_since_restore",
             "iterations_since_restore", "timesteps_since_restore", "timesteps_total",
             "episodes_total", "trial_id"}
FINISHED = ("completed", "early_stopped", "diverged", "error")


def trial_dirname(trial: "Trial") -> str:
    """Short trial directory names `t<index>_<trial_id>` (Tune's default embeds the config)."""
    return f"t{trial_index(trial)}_{trial.trial_id}"


def trial_name(trial: "Trial") -> str:
    return f"t{trial_index(trial)}"


def trial_index(trial: "Trial") -> str:
    """The 1-based creation index Tune puts at the start of the experiment tag."""
    return (trial.experiment_tag or "0").split("_", 1)[0]


class SweepCallback(Callback):
    """Live output and experiment files of one sweep (see the module docstring).

    Args:
        searched: names of the searched config fields (table columns).
        metric: the objective, e.g. val_psnr (mode max).
        max_t: epochs of a full-length trial.
        searcher, scheduler: read for Optuna states and ASHA rung records.
        table_every_s: seconds between compact tables (0 = never).
        when: conditions of conditional parameters ({name: {parent: [values]}}); an inactive
            parameter shows as '-' instead of the base value the trial runs with.
        journal_copy: the local Optuna journal to upload at each flush (remote storage).
    """

    def __init__(self, *, searched: list[str], metric: str, mode: str, max_t: int,
                 searcher: "SweepSearcher", scheduler: "SweepScheduler",
                 table_every_s: float = 60.0, when: Optional[dict[str, dict]] = None,
                 journal_copy: Optional[str] = None):
        self.searched = searched
        self.when = when or {}
        self.metric = metric
        self.mode = mode
        self.max_t = max_t
        self.searcher = searcher
        self.scheduler = scheduler
        self.table_every_s = table_every_s
        self.journal_copy = journal_copy
        self.records: dict[str, dict[str, Any]] = {}  # trial_id -> trials.json entry + extras
        self.histories: dict[str, dict[int, dict]] = {}  # trial_id -> epoch -> row
        self.fs: Optional[pyarrow.fs.FileSystem] = None
        self.exp_path: Optional[str] = None
        self.start = time.monotonic()
        self.last_table = 0.0
        self.changed = False

    # --- Tune hooks --------------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        self.start = self.last_table = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self.locate(trial)
        record = self.record(trial)
        resumed = record["epochs"] > 0
        record["status"] = "running"
        params = "  ".join(f"{self.short(k)}={_fmt(v)}" for k, v in record["params"].items())
        what = f"resumed at epoch {record['epochs']}" if resumed else "started"
        self.say(trial, f"{what:<18} {params}")
        self.changed = True

    def on_trial_result(self, iteration: int, trials: list, trial: "Trial", result: dict,
                        **info: Any) -> None:
        self.locate(trial)
        row = {k: v for k, v in result.items() if k not in _RAY_KEYS and _scalar(v)}
        epoch = int(row.get("epoch", row.get("training_iteration", 0)))
        history = self.histories.setdefault(trial.trial_id, {})
        for stale in [e for e in history if e >= epoch]:  # an abandoned timeline
            del history[stale]
        history[epoch] = row
        record = self.record(trial)
        record["epochs"] = epoch
        record["status"] = "running"
        record["best_val_psnr"] = _best(history.values(), "val_psnr", "max")
        record["best"] = _best(history.values(), self.metric, self.mode)
        record["last"] = number(row.get(self.metric))
        self.write_history(trial)
        self.changed = True

    def on_trial_complete(self, iteration: int, trials: list, trial: "Trial",
                          **info: Any) -> None:
        record = self.record(trial)
        last = trial.last_result or {}
        epochs = int(last.get("training_iteration", record["epochs"]) or 0)
        record["status"] = trial_status(diverged=bool(last.get("diverged")), epochs=epochs,
                                        max_t=self.max_t)
        text = {"diverged": f"diverged at epoch {record['epochs']}",
                "early_stopped": f"stopped by ASHA at epoch {record['epochs']}/{self.max_t}",
                "completed": f"completed {record['epochs']} epochs"}[record["status"]]
        record["optuna_state"] = self.searcher.outcomes.get(trial.trial_id)
        self.say(trial, f"{text:<30} {self.metric} {_fmt(record.get('last'))}  best "
                 f"{_fmt(record.get('best'))}  (Optuna {record['optuna_state']})")
        self.changed = True

    def on_trial_error(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        record = self.record(trial)
        record["status"] = "error"
        record["optuna_state"] = self.searcher.outcomes.get(trial.trial_id)
        self.say(trial, f"error after {trial.num_failures} failure(s): {_error_line(trial)} "
                 f"(see {trial.path}/error.txt; Optuna {record['optuna_state']})")
        self.changed = True

    def on_trial_recover(self, iteration: int, trials: list, trial: "Trial",
                         **info: Any) -> None:
        record = self.record(trial)
        self.say(trial, f"failed ({_error_line(trial)}); retry {trial.num_failures}/"
                 f"{trial.max_failures} from its checkpoint at epoch {record['epochs']}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self.table_every_s and self.changed and now - self.last_table >= self.table_every_s:
            self.last_table = now
            self.changed = False
            print(self.table(trials, finished_rows=5), flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        print(self.table(trials, finished_rows=20), flush=True)

    def get_state(self) -> dict[str, Any]:
        return {"records": self.records, "histories": self.histories,
                "rungs": self.scheduler.rung_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.records = state["records"]
        self.histories = state["histories"]
        self.scheduler.load_rung_state(state["rungs"])

    # --- files -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write trials.json (after a durable experiment-state save) and upload the Optuna
        journal when the experiment is on remote storage."""
        if self.fs is None:
            return
        trials = {tid: {k: r.get(k) for k in
                        ("dir", "status", "epochs", "best_val_psnr", "optuna_state")}
                  for tid, r in self.records.items()}
        write_json(self.fs, f"{self.exp_path}/trials.json", trials)
        if self.journal_copy and os.path.exists(self.journal_copy):
            with open(self.journal_copy, "rb") as src, \
                    self.fs.open_output_stream(f"{self.exp_path}/{JOURNAL}") as dst:
                dst.write(src.read())

    def write_history(self, trial: "Trial") -> None:
        rows = [row for _, row in sorted(self.histories[trial.trial_id].items())]
        write_json(self.fs, f"{trial.path}/history.json", rows)

    def locate(self, trial: "Trial") -> None:
        self.fs = trial.storage.storage_filesystem
        self.exp_path = trial.storage.experiment_fs_path

    # --- output ------------------------------------------------------------------------------

    def record(self, trial: "Trial") -> dict[str, Any]:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = {
                "dir": trial.storage.trial_dir_name, "status": "pending", "epochs": 0,
                "best_val_psnr": None, "optuna_state": None, "name": trial_name(trial),
                "params": {k: trial.config.get(k) for k in self.searched
                           if all(trial.config.get(parent) in values
                                  for parent, values in self.when.get(k, {}).items())},
                "best": None, "last": None}
        return self.records[trial.trial_id]

    def say(self, trial: "Trial", text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.start)}] {trial_name(trial):<4} {text}",
              flush=True)

    def short(self, name: str) -> str:
        return SHORT_NAMES.get(name, name)

    def table(self, trials: list, finished_rows: int) -> str:
        """Running trials, then the best `finished_rows` finished ones."""
        live = [self.records[t.trial_id] for t in trials
                if t.trial_id in self.records and self.records[t.trial_id]["status"] == "running"]
        done = [r for r in self.records.values() if r["status"] in FINISHED]
        sign = -1 if self.mode == "max" else 1
        done.sort(key=lambda r: sign * r["best"] if r["best"] is not None else math.inf)
        columns = ["trial", *map(self.short, self.searched), "epoch", self.metric, "best",
                   "status"]
        rows = [[r["name"], *(_fmt(r["params"].get(k)) for k in self.searched),
                 f"{r['epochs']}/{self.max_t}", _fmt(r["last"]), _fmt(r["best"]), r["status"]]
                for r in live + done[:finished_rows]]
        counts = {s: sum(r["status"] == s for r in self.records.values())
                  for s in ("running", *FINISHED)}
        head = f"[{_clock(time.monotonic() - self.start)}] " + ", ".join(
            f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
        widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
        lines = [head] + ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
                          for line in [columns, *rows]]
        return "\n".join(lines)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _best(rows: Any, key: str, mode: str) -> Optional[float]:
    values = [v for v in (number(r.get(key)) for r in rows if not r.get("diverged"))
              if v is not None]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _error_line(trial: "Trial") -> str:
    """The last line of the trial's error.txt (the exception), else a placeholder."""
    try:
        with open(trial.error_file) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1][:200] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"
