"""End to end, in subprocesses as a user runs them: the CI smoke sweep with the real trainable,
and an interrupted sweep (Ctrl-C, then a driver killed with SIGKILL) resumed twice.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_launcher import study_trials

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ("completed", "early_stopped", "diverged", "error")
# A driver running the launcher with the fake trainable of tests/fakes.py (1 s per epoch).
DRIVER = ("import sys; sys.path[:0] = ['tests']; import fakes; from search.run import main; "
          "sys.exit(main(sys.argv[1:], trainable=fakes.fake_slow))")


def read(path):
    return json.loads(Path(path).read_text())


def check_histories(exp, trials):
    for t in trials.values():
        rows = read(exp / t["dir"] / "history.json")
        assert [r["epoch"] for r in rows] == list(range(1, t["epochs"] + 1)), t["dir"]


@pytest.mark.slow
def test_smoke_sweep(tmp_path, synth_root):
    """spaces/smoke.yaml: 4 tiny trials of 4 epochs, ASHA grace 1 rf 2, in < 3 minutes."""
    run = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "spaces/smoke.yaml",
         "--storage", str(tmp_path / "runs"), "--data", str(synth_root)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = tmp_path / "runs" / "smoke"
    trials = read(exp / "trials.json")
    assert len(trials) == 4
    assert all(t["status"] in ("completed", "early_stopped") for t in trials.values())
    stopped = [t for t in trials.values() if t["status"] == "early_stopped"]
    assert stopped and all(t["optuna_state"] == "PRUNED" and t["epochs"] < 4 for t in stopped)
    assert all(t["optuna_state"] == "COMPLETE" and t["epochs"] == 4
               for t in trials.values() if t["status"] == "completed")
    check_histories(exp, trials)
    study = {t.user_attrs["ray_trial_id"]: t for t in study_trials(exp)}
    assert {tid: t.state.name for tid, t in study.items()} == {
        tid: t["optuna_state"] for tid, t in trials.items()}
    pruned = [t for t in study.values() if t.state.name == "PRUNED"]
    assert all(t.intermediate_values for t in pruned)  # TPE ranks them by these
    sweep = read(exp / "sweep.json")
    assert sweep["finished"] and sweep["name"] == "smoke"
    best = max(trials.values(), key=lambda t: t["best_val_psnr"])
    assert f"best val_psnr {best['best_val_psnr']:.4g} in {exp / best['dir']}" in run.stdout
    assert "Trial status" not in run.stdout  # Ray's own progress output stays off
    if importlib.util.find_spec("analysis.report") is not None:
        assert "report: " in run.stdout
    check_tensorboard(exp, trials)
    check_confirmation(exp, trials, run.stdout + run.stderr)



DANCE_SPACE = """\
name: dance-smoke
num_samples: 4
base: {preset: dance-tiny, epochs: 4}
params:
  lr: {type: loguniform, low: 1.0e-3, high: 5.0e-3}
  tfr_start_decay_epoch: {type: int, low: 1, high: 2}
  kl_anneal: {type: categorical, choices: [monotonic, cyclical]}
  kl_anneal_cycle: {type: int, low: 1, high: 2, when: {kl_anneal: cyclical}}
points_to_evaluate:
  - {lr: 0.002, tfr_start_decay_epoch: 1, kl_anneal: monotonic}
  - {lr: 0.002, tfr_start_decay_epoch: 1, kl_anneal: cyclical, kl_anneal_cycle: 2}
asha: {grace_period: 1, reduction_factor: 2, brackets: 1}
resources: {cpu: 1, gpu: 0}
confirm: {seeds: 2, levels: [monotonic, cyclical], epochs: 2}
"""


@pytest.mark.slow
def test_dance_smoke_sweep(tmp_path):
    """The dance task through the same launcher, trainable and report: 4 dance-tiny trials on
    tiny synthetic dance data, ASHA stopping some, per-mode tables and test GIFs."""
    from cvae.tasks.dance import synth

    data = tmp_path / "dance"
    synth.write_dataset(data, dancers=2, train_len=32, val_len=40, test=2, test_len=20, seed=0,
                        progress=False)
    space = tmp_path / "dance-smoke.yaml"
    space.write_text(DANCE_SPACE)
    run = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", str(space), "--storage",
         str(tmp_path / "runs"), "--data", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = tmp_path / "runs" / "dance-smoke"
    trials = read(exp / "trials.json")
    assert len(trials) == 4
    assert all(t["status"] in ("completed", "early_stopped") for t in trials.values())
    assert any(t["status"] == "early_stopped" and t["epochs"] < 4 for t in trials.values())
    check_histories(exp, trials)
    for t in trials.values():
        params = read(exp / t["dir"] / "params.json")
        assert params["task"] == "dance" and params["data"] == str(data)
        assert all(math.isfinite(r["val_psnr"]) for r in read(exp / t["dir"] / "history.json"))
    if importlib.util.find_spec("analysis.report") is None:
        return
    report = (exp / "report.md").read_text()
    for mode in ("monotonic", "cyclical"):
        metrics = read(exp / "media" / mode / "test_metrics.json")
        assert metrics["task"] == "dance" and (metrics["n_past"], metrics["n_future"]) == (1, 19)
        assert math.isfinite(metrics["psnr"]) and len(metrics["psnr_per_frame"]) == 19
        for name in ("test_0.gif", "test_1.gif", "submission.csv", "grid.png"):
            assert (exp / "media" / mode / name).stat().st_size > 0, (mode, name)
        assert f"media/{mode}/test_0.gif" in report
    modes = (exp / "tables" / "modes.csv").read_text()
    assert "monotonic" in modes and "cyclical" in modes
    assert ("the first frame given -> 19 generated frames, against the baseline first frame "
            "repeated") in report
    assert "first frame repeated (baseline)" in report and "copy last frame" not in report
    # the confirmation scores each run with the dance protocol (its test GIFs from the prior)
    summary = read(exp / "confirm-kl_anneal" / "confirm.json")
    assert summary["finished"] and len(summary["runs"]) == 4
    for r in summary["runs"]:
        assert r["status"] == "completed" and r["epochs"] == 2
        assert all(math.isfinite(r[k]) for k in ("val_psnr", "test_psnr", "baseline_psnr")), r
        scored = read(exp / "confirm-kl_anneal" / r["name"] / "test_metrics.json")
        assert (scored["n_past"], scored["n_future"]) == (1, 19)


SMMNIST_SPACE = """\
name: smmnist-smoke
num_samples: 4
base: {preset: smmnist-tiny, epochs: 3, tfr_lower_bound: 0.0}
params:
  lr: {type: loguniform, low: 1.0e-3, high: 5.0e-3}
  tfr_start_decay_epoch: {type: int, low: 1, high: 3}
  kl_anneal: {type: categorical, choices: [monotonic, cyclical, none]}
  kl_anneal_cycle: {type: int, low: 1, high: 2, when: {kl_anneal: cyclical}}
  beta_max: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
points_to_evaluate:
  - {lr: 0.002, tfr_start_decay_epoch: 3, kl_anneal: monotonic, beta_max: 1.0e-4}
asha: {grace_period: 1, reduction_factor: 2, brackets: 1}
resources: {cpu: 1, gpu: 0}
confirm: {seeds: 2, levels: [monotonic, none], epochs: 2, best_of: 3}
"""


@pytest.mark.slow
def test_smmnist_smoke_sweep(tmp_path):
    """The main command's task (SM-MNIST, spaces/annealing.yaml) at smmnist-tiny through the
    same launcher, trainable, confirmation (latent, best of N) and report (answers first)."""
    from cvae.tasks.smmnist.data import write_digits

    data = tmp_path / "digits"
    write_digits(data, sizes={"train": 40, "validate": 20, "test": 20})
    space = tmp_path / "smmnist-smoke.yaml"
    space.write_text(SMMNIST_SPACE)
    run = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", str(space), "--storage",
         str(tmp_path / "runs"), "--data", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = tmp_path / "runs" / "smmnist-smoke"
    trials = read(exp / "trials.json")
    assert len(trials) == 4 and all(t["status"] in FINISHED for t in trials.values())
    for t in trials.values():
        assert read(exp / t["dir"] / "params.json")["task"] == "smmnist"
    summary = read(exp / "confirm-kl_anneal" / "confirm.json")
    assert summary["finished"] and len(summary["runs"]) == 4
    for r in summary["runs"]:
        assert r["samples"] == 3 and all(math.isfinite(r[k]) for k in (
            "test_psnr", "kl", "posterior_gain", "best_of_n_gain", "active_units")), r
        scored = read(exp / "confirm-kl_anneal" / r["name"] / "test_metrics.json")
        assert (scored["n_past"], scored["n_future"], scored["best_of_n_sequences"]) == (2, 4, 32)
    assert set(summary["configs"][0]["paired_comparisons"]) >= {"kl", "best_of_n_gain"}
    report = (exp / "report.md").read_text()
    answers = report.split("## Answers")[1].split("\n## ")[0]
    for param in ("lr", "tfr_start_decay_epoch", "kl_anneal", "kl_anneal_cycle", "beta_max"):
        assert f"`{param}`" in answers, param
    assert "over 2 seeds" in answers and "single runs, not confirmed over seeds" in answers
    metrics = read(exp / "media" / "monotonic" / "test_metrics.json")
    assert metrics["task"] == "smmnist" and (metrics["n_past"], metrics["n_future"]) == (2, 4)
    assert (exp / "media" / "monotonic" / "prediction.gif").stat().st_size > 0


def tensorboard_events(trial_dir):
    """Every event of a trial's TensorBoard files (TFRecord framing: length, CRC, data, CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return events


def check_tensorboard(exp, trials):
    """`tensorboard --logdir <experiment>` finds each trial's per-epoch metrics and, for trials
    that ended, its searched hyperparameters (the HParams view)."""
    if importlib.util.find_spec("tensorboardX") is None:
        return
    searched = set(read(exp / "sweep.json")["searched"])
    for t in trials.values():
        events = tensorboard_events(exp / t["dir"])
        psnr = sorted(e.step for e in events for v in e.summary.value
                      if v.tag == "ray/tune/val_psnr")
        assert psnr == list(range(1, t["epochs"] + 1)), t["dir"]
        plugins = [v.metadata.plugin_data for e in events for v in e.summary.value
                   if v.metadata.plugin_data.plugin_name == "hparams"]
        assert plugins, t["dir"]
        text = b"".join(p.content for p in plugins)
        assert all(name.encode() in text for name in searched if name != "kl_anneal_cycle")


def check_confirmation(exp, trials, output):
    """The space's `confirm:` re-ran the best config for both modes x 2 seeds x 2 epochs with
    finite metrics; `search.confirm` run again after one run's results were lost re-runs only
    that one."""
    confirm_dir = exp / "confirm-kl_anneal"
    summary = read(confirm_dir / "confirm.json")
    assert summary["finished"] and summary["labels"] == ["monotonic", "cyclical"]
    best = max(trials.values(), key=lambda t: t["best_val_psnr"])
    assert summary["configs"][0]["dir"] == best["dir"]
    runs = {(r["label"], r["seed"]): r for r in summary["runs"]}
    assert set(runs) == {(m, s) for m in ("monotonic", "cyclical") for s in (1, 2)}
    for r in runs.values():
        assert r["status"] == "completed" and r["epochs"] == 2
        assert all(isinstance(r[k], float) and math.isfinite(r[k])
                   for k in ("val_psnr", "test_psnr", "baseline_psnr")), (r, output[-3000:])
        assert r["val_psnr"] == r["val_psnr_curve"][-1]
    stats = summary["configs"][0]["statistics"]["cyclical"]["test_psnr"]
    values = [runs["cyclical", s]["test_psnr"] for s in (1, 2)]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(values) / 2)
    assert len(summary["configs"][0]["comparisons"]["val_psnr"]) == 1

    lost = confirm_dir / "c1-cyclical-s2"
    kept = {p: p.stat().st_mtime_ns for p in confirm_dir.glob("c1-*/result.json") if
            p.parent != lost}
    (lost / "result.json").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "search.confirm", str(exp), "--seeds", "2", "--levels",
         "monotonic", "cyclical", "--epochs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 runs, 3 already done, 1 to run" in again.stdout
    assert "c1-cyclical-s2: started" in again.stdout and again.stdout.count(": started") == 1
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    rerun = read(confirm_dir / "confirm.json")
    assert rerun["finished"] and len(rerun["runs"]) == 4
    assert [r["test_psnr"] for r in rerun["runs"] if r["name"] != lost.name] == [
        r["test_psnr"] for r in summary["runs"] if r["name"] != lost.name]


SPACE = """
name: resumed
num_samples: 6
max_concurrent: 2
seed: 1
base: {preset: tiny, epochs: 4}
params:
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
  kl_anneal: {type: categorical, choices: [monotonic, cyclical]}
  kl_anneal_cycle: {type: int, low: 1, high: 4, when: {kl_anneal: cyclical}}
asha: {grace_period: 1, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
"""


class Driver:
    """The launcher with the fake trainable in its own process group."""

    def __init__(self, tmp_path, *extra):
        self.log = tmp_path / f"driver{len(list(tmp_path.glob('driver*.log')))}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "--space", str(tmp_path / "resumed.yaml"),
             "--storage", str(tmp_path / "runs"), "--no-dashboard", "--no-report", *extra],
            cwd=ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self):
        return self.log.read_text()

    def wait_until(self, exp, finished, timeout=120):
        """Poll until trials.json lists `finished` ended trials and another trial has results
        (a history.json)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                trials = read(exp / "trials.json")
            except (FileNotFoundError, json.JSONDecodeError):
                trials = {}
            done = {tid for tid, t in trials.items() if t["status"] in FINISHED}
            running = [p for p in exp.glob("t*_*/history.json")
                       if p.parent.name.split("_", 1)[1] not in done]
            if len(done) >= finished and running:
                return
            time.sleep(0.1)
        raise TimeoutError(self.output()[-3000:])

    def kill(self):
        """SIGKILL the driver, then whatever of its Ray processes outlived it."""
        self.proc.kill()
        self.proc.wait()
        time.sleep(1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def snapshot(exp, trials):
    """Finished trials: record, history and result.json of each."""
    return {tid: (t, read(exp / t["dir"] / "history.json"),
                  (exp / t["dir"] / "result.json").read_text())
            for tid, t in trials.items() if t["status"] in FINISHED}


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_losing_or_repeating_trials(tmp_path):
    (tmp_path / "resumed.yaml").write_text(textwrap.dedent(SPACE))
    exp = tmp_path / "runs" / "resumed"

    # 1. Ctrl-C (SIGINT to the process group, as a terminal sends it, Ray's processes
    # included): Tune stops the trials and saves; the launcher says how to continue.
    first = Driver(tmp_path)
    first.wait_until(exp, finished=1)
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.proc.wait(timeout=60) == 130, first.output()[-3000:]
    first.kill()  # Ray processes that outlived the driver, if any
    assert "interrupted; continue with: " in first.output()
    before = snapshot(exp, read(exp / "trials.json"))
    assert read(exp / "sweep.json")["finished"] is False

    # 2. Resume, then SIGKILL the driver once more trials have finished.
    second = Driver(tmp_path, "--resume")
    second.wait_until(exp, finished=len(before) + 1)
    second.kill()
    after_kill = snapshot(exp, read(exp / "trials.json"))
    for tid, old in before.items():
        assert after_kill[tid] == old
    assert not any(f"{old[0]['dir'].split('_')[0]:<4} started" in second.output()
                   or f"{old[0]['dir'].split('_')[0]:<4} resumed" in second.output()
                   for old in before.values())

    # 3. Resume to the end: every finished trial kept as it was, none lost, none repeated.
    third = Driver(tmp_path, "--resume")
    assert third.proc.wait(timeout=180) == 0, third.output()[-3000:]
    final = read(exp / "trials.json")
    assert len(final) == 6
    assert all(t["status"] in FINISHED for t in final.values())
    for tid, old in after_kill.items():
        assert (final[tid], read(exp / final[tid]["dir"] / "history.json"),
                (exp / final[tid]["dir"] / "result.json").read_text()) == old
        name = old[0]["dir"].split("_")[0]
        assert f"{name:<4} started" not in third.output()
        assert f"{name:<4} resumed" not in third.output()
    check_histories(exp, final)
    assert sorted(p.name for p in exp.glob("t*_*") if p.is_dir()) == sorted(
        t["dir"] for t in final.values())  # no orphaned trial directories
    study = study_trials(exp)  # the same Optuna study, continued by both resumes
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study}
    assert set(final) <= set(by_id) and all(t.state.name != "RUNNING" for t in study)
    assert all(by_id[tid].state.name == t["optuna_state"] for tid, t in final.items())
    # asked from Optuna but never recorded by Ray (the driver was killed in between): FAIL
    assert all(t.state.name == "FAIL" for tid, t in by_id.items() if tid not in final)
    sweep = read(exp / "sweep.json")
    assert sweep["finished"] is True
