"""The sweep launcher (search.run, search.cluster, search.progress) with fake trainables.

Command-line errors and resource rules run without Ray; the sweeps share one local Ray
instance (2 CPUs, dashboard on 127.0.0.1) started for this module.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

import fakes
from search import cluster as clusters
from search.progress import SweepCallback
from search.launcher import run_sweep
from search.run import build_parser, main, space_from_args

ROOT = Path(__file__).resolve().parents[1]

SPACE = """
name: {name}
num_samples: {num_samples}
seed: 0
base: {{preset: tiny, epochs: {epochs}}}
params:
  lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
  kl_anneal: {{type: categorical, choices: [monotonic, cyclical]}}
  kl_anneal_cycle: {{type: int, low: 1, high: 4, when: {{kl_anneal: cyclical}}}}
points_to_evaluate:
  - {{lr: 0.009}}
  - {{lr: 0.002, kl_anneal: cyclical, kl_anneal_cycle: 2}}
  - {{lr: 0.0001, kl_anneal: monotonic}}
asha: {{grace_period: 1, reduction_factor: 2}}
resources: {{cpu: 1, gpu: {gpu}}}
"""


def write_space(tmp_path, name="t", num_samples=6, epochs=4, gpu=0, lr_high=None):
    text = SPACE.format(name=name, num_samples=num_samples, epochs=epochs, gpu=gpu)
    if lr_high:  # lets the search reach the fake's divergence region
        text = text.replace("high: 1.0e-2", f"high: {lr_high}").replace("lr: 0.009", "lr: 0.03")
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def read(path):
    return json.loads(Path(path).read_text())


def study_trials(exp):
    """The sweep's Optuna trials, read with Optuna's own API from the experiment's journal."""
    import optuna

    from search.searcher import JOURNAL, STUDY_NAME, journal_storage

    storage = journal_storage(str(exp / JOURNAL))
    return optuna.load_study(study_name=STUDY_NAME, storage=storage).trials


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- command line (no Ray) ---------------------------------------------------------------------

def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ("--space", "--num-samples", "--data", "--preset", "--epochs", "--gpus-per-trial",
                 "--name", "--seed", "--storage", "--address", "--resume", "--no-dashboard",
                 "--dashboard-host", "--dashboard-port", "--max-concurrent", "--no-report",
                 "--allow-unauthenticated-cluster", "--skip-bad"):
        assert flag in text


@pytest.mark.parametrize("argv, expected", [
    (["--num-samples", "3"], "--space"),
    (["--space", "{space}", "--num-samples", "0"], "--num-samples"),
    (["--space", "{space}", "--dashboard-port", "99999"], "--dashboard-port"),
    (["--space", "{space}", "--bogus"], "--bogus"),
    (["--space", "{space}", "--preset", "huge"], "base.preset"),
    (["--space", "{space}", "--gpus-per-trial", "lots"], "resources.gpu"),
    (["--space", "missing.yaml"], "missing.yaml"),
    (["--space", "{space}", "--resume"], "no experiment to resume"),
])
def test_usage_errors_are_one_line_before_ray_starts(tmp_path, capsys, argv, expected):
    import ray

    space = write_space(tmp_path)
    argv = [a.format(space=space) for a in argv] + ["--storage", str(tmp_path / "runs")]
    assert main(argv, trainable=fakes.fake_fast) == 2
    assert expected in one_line_error(capsys)
    assert not ray.is_initialized()
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.parametrize("storage, expected", [
    ("{file}", "--storage {file}: is a file (expected a directory)"),
    ("{file}/runs", "--storage {file}/runs: {file} is a file (expected a directory)"),
    ("/proc/cvae-no-such/runs", "--storage /proc/cvae-no-such/runs: not writable (/proc: "),
    ("{locked}/runs", "--storage {locked}/runs: not writable ({locked}: Permission denied)"),
])
def test_unusable_storage_is_one_line_before_ray_starts(tmp_path, capsys, storage, expected):
    import ray

    if "{locked}" in storage and os.geteuid() == 0:
        pytest.skip("root may write to any directory")
    names = {"file": tmp_path / "file.txt", "locked": tmp_path / "locked"}
    names["file"].write_text("")
    names["locked"].mkdir(mode=0o500)
    storage, expected = storage.format(**names), expected.format(**names)
    rc = main(["--space", str(write_space(tmp_path)), "--storage", storage],
              trainable=fakes.fake_fast)
    assert rc == 2
    assert one_line_error(capsys).startswith(f"error: {expected}")
    assert not ray.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "locked", "t.yaml"]


def test_existing_experiment_needs_resume(tmp_path, capsys):
    space = write_space(tmp_path)
    exp = tmp_path / "runs" / "t"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    assert main(["--space", str(space), "--storage", str(tmp_path / "runs")],
                trainable=fakes.fake_fast) == 2
    assert "--resume" in one_line_error(capsys)


def test_overrides_reach_the_space(tmp_path):
    from search.space import trial_config

    args = build_parser().parse_args(
        ["--space", str(write_space(tmp_path)), "--num-samples", "3", "--epochs", "5",
         "--seed", "7", "--name", "other", "--max-concurrent", "2", "--gpus-per-trial", "auto",
         "--skip-bad"])
    space = space_from_args(args)
    assert (space.num_samples, space.asha["max_t"], space.seed, space.name,
            space.max_concurrent, space.resources["gpu"]) == (3, 5, 7, "other", 2, "auto")
    assert trial_config(space, {})["skip_bad"] is True  # every trial's config
    strict = space_from_args(build_parser().parse_args(["--space", str(write_space(tmp_path))]))
    assert trial_config(strict, {}).get("skip_bad", False) is False


def test_module_is_runnable():
    out = subprocess.run([sys.executable, "-m", "search.run", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--gpus-per-trial" in out.stdout


# --- resources (no Ray) ------------------------------------------------------------------------

def fake_cluster(cpus=2.0, gpus=0.0, node_gpus=None):
    return clusters.Cluster(address="x", started=False, dashboard_url=None,
                            resources={"CPU": cpus, "GPU": gpus}, max_node_cpus=cpus,
                            max_node_gpus=gpus if node_gpus is None else node_gpus)


@pytest.mark.parametrize("gpu, cluster, running, expected", [
    ("auto", fake_cluster(), 2, (0.0, "cpu")),
    ("auto", fake_cluster(gpus=1), 2, (0.5, "cuda")),
    ("auto", fake_cluster(cpus=16, gpus=1), 12, (0.25, "cuda")),  # at most 4 per GPU
    ("auto", fake_cluster(cpus=16, gpus=8), 4, (1.0, "cuda")),
    (0.25, fake_cluster(gpus=1), 4, (0.25, "cuda")),
    (0, fake_cluster(gpus=1), 4, (0.0, "cpu")),
])
def test_trial_resources(gpu, cluster, running, expected):
    res = clusters.trial_resources(1.5, gpu, cluster, running)
    assert (res.gpu, res.device) == expected
    assert res.threads == 1 and res.cpu == 1.5


@pytest.mark.parametrize("cpu, gpu, cluster, message", [
    (1, 0.5, fake_cluster(), "no GPUs"),
    (1, 2, fake_cluster(gpus=2, node_gpus=1), "largest node has 1 GPUs"),
    (1, 1.5, fake_cluster(gpus=4, node_gpus=4), "whole number"),
    (4, 0, fake_cluster(cpus=2), "largest node has 2 CPUs"),
])
def test_impossible_resources(cpu, gpu, cluster, message):
    with pytest.raises(clusters.ResourceError, match=message):
        clusters.trial_resources(cpu, gpu, cluster, 1)


# --- history.json (no Ray) ---------------------------------------------------------------------

def fake_trial(tmp_path, trial_id="abc", index=1):
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                              experiment_fs_path=str(tmp_path),
                              trial_dir_name=f"t{index}_{trial_id}")
    return SimpleNamespace(trial_id=trial_id, experiment_tag=f"{index}_lr=0.1",
                           config={"lr": 0.1}, storage=storage,
                           path=f"{tmp_path}/t{index}_{trial_id}", last_result={})


def test_history_is_gap_and_duplicate_free(tmp_path, capsys):
    scheduler = SimpleNamespace(rung_state=lambda: {})
    callback = SweepCallback(searched=["lr"], metric="val_psnr", mode="max", max_t=5,
                             searcher=SimpleNamespace(outcomes={}), scheduler=scheduler)
    trial = fake_trial(tmp_path)
    callback.on_trial_start(0, [trial], trial)
    for epoch in (1, 2, 3, 2, 3, 4):  # resumed from the epoch-1 checkpoint after epoch 3
        callback.on_trial_result(0, [trial], trial, {"epoch": epoch, "training_iteration": epoch,
                                                     "val_psnr": 10.0 + epoch, "config": {}})
    rows = read(tmp_path / "t1_abc" / "history.json")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert "config" not in rows[0]
    callback.on_trial_result(0, [trial], trial, {"epoch": 2, "val_psnr": 30.0})
    assert [r["epoch"] for r in read(tmp_path / "t1_abc" / "history.json")] == [1, 2]
    assert callback.records["abc"]["best_val_psnr"] == 30.0
    assert "t1   started" in capsys.readouterr().out


def test_flush_uploads_the_journal_of_a_remote_experiment(tmp_path):
    local = tmp_path / "local" / "optuna_journal.log"
    local.parent.mkdir()
    local.write_bytes(b'{"op_code": 0}\n')
    callback = SweepCallback(searched=["lr"], metric="val_psnr", mode="max", max_t=5,
                             searcher=SimpleNamespace(outcomes={}),
                             scheduler=SimpleNamespace(rung_state=lambda: {}),
                             journal_copy=str(local))
    trial = fake_trial(tmp_path / "exp")
    callback.on_trial_start(0, [trial], trial)
    callback.flush()
    assert (tmp_path / "exp" / "optuna_journal.log").read_bytes() == b'{"op_code": 0}\n'
    assert read(tmp_path / "exp" / "trials.json")["abc"]["status"] == "running"


# --- sweeps on a local Ray instance ------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    cluster = clusters.connect(dashboard=True, dashboard_port=free_port(), num_cpus=2)
    yield cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def fast_sweep(ray_cluster, tmp_path_factory):
    """A 6-trial sweep through main(): one starting point diverges, ASHA stops some."""
    tmp = tmp_path_factory.mktemp("fast")
    space = write_space(tmp, name="fast", lr_high=5e-2)
    storage = tmp / "runs"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--space", str(space), "--storage", str(storage), "--no-report"],
                  trainable=fakes.fake_fast)
    return SimpleNamespace(rc=rc, exp=storage / "fast", out=out.getvalue())


def test_gpu_request_on_cpu_cluster_fails_before_any_trial(ray_cluster, tmp_path, capsys):
    space = write_space(tmp_path, gpu=0.5)
    rc = main(["--space", str(space), "--storage", str(tmp_path / "runs")],
              trainable=fakes.fake_fast)
    assert rc == 2
    assert "resources.gpu=0.5" in one_line_error(capsys)
    assert not (tmp_path / "runs" / "t").exists()


def test_sweep_outcomes(fast_sweep):
    assert fast_sweep.rc == 0, fast_sweep.out
    trials = read(fast_sweep.exp / "trials.json")
    assert len(trials) == 6
    by_status = {}
    for trial_id, t in trials.items():
        by_status.setdefault(t["status"], []).append(t)
        assert t["dir"].startswith("t") and t["dir"].endswith("_" + trial_id)
        rows = read(fast_sweep.exp / t["dir"] / "history.json")
        assert [r["epoch"] for r in rows] == list(range(1, t["epochs"] + 1))
        params = read(fast_sweep.exp / t["dir"] / "params.json")
        assert params["device"] == "cpu" and params["threads"] == 1
        assert params["gpu_memory_fraction"] == 0.0  # only fractional GPU trials are capped
        assert "preset" not in params and params["epochs"] == 4
    expected_state = {"completed": "COMPLETE", "early_stopped": "PRUNED",
                      "diverged": "COMPLETE"}
    for status, group in by_status.items():
        assert all(t["optuna_state"] == expected_state[status] for t in group), status
    assert by_status.get("early_stopped") and by_status.get("completed")
    assert len(by_status.get("diverged", [])) >= 1  # the first starting point, lr=0.03
    assert all(t["epochs"] < 4 for t in by_status["early_stopped"])
    optuna = {t.user_attrs["ray_trial_id"]: t for t in study_trials(fast_sweep.exp)}
    for trial_id, t in trials.items():
        assert optuna[trial_id].state.name == t["optuna_state"]
        if t["status"] == "diverged":
            assert optuna[trial_id].value == 0.0
        if t["status"] == "completed":
            assert optuna[trial_id].value == pytest.approx(t["best_val_psnr"])
    assert not (fast_sweep.exp / "optuna_trials.json").exists()
    sweep = read(fast_sweep.exp / "sweep.json")
    assert sweep["finished"] is True and sweep["wall_time_s"] > 0
    assert sweep["num_samples"] == 6 and sweep["base"]["preset"] == "tiny"


def test_sweep_prints_a_table_and_the_best_config(fast_sweep):
    out = fast_sweep.out
    best = max((t for t in read(fast_sweep.exp / "trials.json").values()),
               key=lambda t: t["best_val_psnr"] or 0)
    assert f"best val_psnr {best['best_val_psnr']:.4g} in " in out
    assert best["dir"] in out and "best config: lr=" in out
    assert "stopped by ASHA at epoch" in out and "(Optuna PRUNED)" in out
    assert "diverged at epoch 1" in out
    assert "dashboard:" in out
    assert "Trial status" not in out and "╭" not in out  # no Ray progress tables


def trial_actors():
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # other Ray instances may run here
    return [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
            if "fake_slow" in a.class_name or "ImplicitFunc" in a.class_name]


def wait_for(predicate, timeout=60.0, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def history_epochs(exp):
    try:
        return [max(r["epoch"] for r in read(p)) for p in exp.glob("t*/history.json")]
    except (ValueError, json.JSONDecodeError):
        return []


def load(tmp_path, name, num_samples, epochs):
    return space_from_args(build_parser().parse_args(
        ["--space", str(write_space(tmp_path, name=name, num_samples=num_samples,
                                    epochs=epochs))]))


def start_sweep(tmp_path, name, num_samples, epochs):
    space = load(tmp_path, name, num_samples, epochs)
    res = clusters.TrialResources(cpu=1, gpu=0)
    box = {}

    def target():
        box["sweep"] = run_sweep(space, resources=res, trainable=fakes.fake_slow,
                                 storage=str(tmp_path / "runs"))
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box, tmp_path / "runs" / name


@pytest.mark.slow
def test_dashboard_answers_with_token_and_lists_trial_actors(ray_cluster, tmp_path):
    from ray._raylet import AuthenticationTokenLoader

    assert ray_cluster.dashboard_url.startswith("http://127.0.0.1:")
    thread, box, exp = start_sweep(tmp_path, "dash", num_samples=1, epochs=4)
    wait_for(lambda: any(e >= 1 for e in history_epochs(exp)))
    url = f"{ray_cluster.dashboard_url}/api/v0/actors?limit=100"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url, timeout=10)
    assert denied.value.code == 401
    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        listing = json.loads(response.read())
    actors = listing["data"]["result"]["result"]
    alive = [a["class_name"] for a in actors if a["state"] == "ALIVE"]
    assert any("fake_slow" in name or "ImplicitFunc" in name for name in alive), alive
    thread.join(timeout=120)
    assert box["sweep"].finished


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(ray_cluster, tmp_path, capsys):
    thread, box, exp = start_sweep(tmp_path, "kill", num_samples=1, epochs=6)
    wait_for(lambda: any(e >= 2 for e in history_epochs(exp)))
    actors = wait_for(trial_actors)
    os.kill(actors[0].pid, signal.SIGKILL)
    thread.join(timeout=180)
    sweep = box["sweep"]
    assert sweep.finished
    (trial,) = sweep.trials.values()
    assert trial["status"] == "completed" and trial["epochs"] == 6
    rows = read(exp / trial["dir"] / "history.json")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "retry 1/2 from its checkpoint" in capsys.readouterr().out


@pytest.mark.slow
def test_failing_trial_is_retried_then_failed_in_optuna(ray_cluster, tmp_path, capsys):
    sweep = run_sweep(load(tmp_path, "broken", num_samples=1, epochs=3),
                      resources=clusters.TrialResources(cpu=1, gpu=0),
                      trainable=fakes.fake_broken, storage=str(tmp_path / "runs"))
    assert sweep.finished
    (trial,) = sweep.trials.values()
    assert (trial["status"], trial["optuna_state"], trial["epochs"]) == ("error", "FAIL", 1)
    out = capsys.readouterr().out
    assert "retry 2/2" in out and "error after 3 failure(s): RuntimeError: broken trainable" in out


def test_connect_joins_the_cluster_in_ray_address(monkeypatch):
    import ray

    calls = []
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace(
        dashboard_url="10.0.0.1:8265"))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(gcs_address="gcs"))
    resources = {"CPU": 8.0, "GPU": 2.0}
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": resources}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(clusters, "probe", lambda address: None)  # no cluster at 10.0.0.1
    monkeypatch.setattr(clusters, "cluster_auth_mode", lambda url: "token")
    cluster = clusters.connect(None, dashboard=True)
    assert calls[0]["address"] == "10.0.0.1:6379" and "include_dashboard" not in calls[0]
    assert not cluster.started and cluster.dashboard_url == "http://10.0.0.1:8265"
    assert (cluster.max_node_cpus, cluster.max_node_gpus) == (8.0, 2.0)
    clusters.connect("auto")
    assert calls[1]["address"] == "auto"


# --- the outcome line (no Ray) -----------------------------------------------------------------

def fake_result(name, psnrs, diverged_at=None):
    import pandas as pd

    rows = [{"val_psnr": v, "diverged": diverged_at is not None and i + 1 >= diverged_at}
            for i, v in enumerate(psnrs)]
    return SimpleNamespace(path=f"/exp/{name}", config={"lr": float(len(name))},
                           metrics=rows[-1], metrics_dataframe=pd.DataFrame(rows))


@pytest.mark.parametrize("results, best", [
    ([fake_result("a", [0.0], 1), fake_result("bb", [0.0, 0.0], 1)], None),
    # the 25 dB before trial a diverged is no result; trial c's NaN epoch is skipped
    ([fake_result("a", [25.0, 0.0], 2), fake_result("bb", [18.0, 20.0]),
      fake_result("ccc", [19.0, float("nan")])], ("/exp/bb", 20.0)),
])
def test_best_config_never_comes_from_a_diverged_trial(tmp_path, capsys, results, best):
    from search.outcome import SweepResult, finish

    space = load(tmp_path, "out", num_samples=len(results), epochs=2)
    trials = {r.path: {"status": "diverged" if r.metrics["diverged"] else "completed"}
              for r in results}
    sweep = SweepResult(path="/exp", results=results, finished=True, trials=trials)
    assert finish(sweep, space, "resume", report=False) == 0
    out = capsys.readouterr().out
    if best is None:
        assert "no trial converged: none reported a finite val_psnr without diverging (2 of 2 " \
               "diverged); no best config" in out
        assert "best config" not in out.replace("no best config", "")
    else:
        assert f"best val_psnr {best[1]:.4g} in {best[0]}\nbest config: lr=2.0" in out


def test_disk_full_is_one_line_with_the_resume_command(tmp_path, capsys, monkeypatch):
    import errno

    import search.launcher

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x"))
    monkeypatch.setattr(search.launcher, "launch", full)
    space = write_space(tmp_path)
    assert main(["--space", str(space), "--storage", str(tmp_path / "runs")]) == 1
    assert one_line_error(capsys) == (
        f"error: no space left on the device ({tmp_path / 'runs' / 'x'}): free some, then "
        f"try: python -m search.run --space {space} --storage {tmp_path / 'runs'} --resume (if "
        "Ray could not save the experiment state, start anew with another --name)")


def test_space_warnings_are_printed_once_per_line(tmp_path, capsys, monkeypatch):
    import search.launcher

    monkeypatch.setattr(search.launcher, "launch", lambda *args, **kwargs: 0)
    text = write_space(tmp_path).read_text().replace(
        "params:\n", "params:\n  tfr_start_decay_epoch: {type: int, low: 0, high: 5}\n")
    space = tmp_path / "tfr.yaml"
    space.write_text(text)
    assert main(["--space", str(space), "--storage", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().err == (
        f"warning: {space}: params.tfr_start_decay_epoch.high: values >= base epochs = 4 never "
        "decay teacher forcing (got 5)\n")
