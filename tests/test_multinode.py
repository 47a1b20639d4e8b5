"""A real two-node sweep on one machine: a head and a worker node with one CPU each and token
authentication on; the launcher joins with --address, the worker node is killed mid-sweep, and
its trial continues on the head from its latest checkpoint with a complete history."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_launcher import free_port, read

ROOT = Path(__file__).resolve().parents[1]
# The smoke sweep's parameters; ASHA's only rung at the last epoch, so that the killed trial
# cannot be stopped early instead of retried.
SPACE = """
name: multinode
num_samples: 4
seed: 0
base: {preset: tiny, epochs: 4}
params:
  lr: {type: loguniform, low: 1.0e-3, high: 5.0e-3}
  tfr_start_decay_epoch: {type: int, low: 0, high: 2}
  kl_anneal: {type: categorical, choices: [monotonic, cyclical]}
  kl_anneal_cycle: {type: int, low: 1, high: 2, when: {kl_anneal: cyclical}}
asha: {grace_period: 4, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
"""


def ancestors(pid):
    """pid's parent, grandparent, ... (Linux /proc)."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def rows(trial_dir):
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def ray_start(env, *args):
    ray = str(Path(sys.executable).parent / "ray")  # the CLI of this environment's Ray
    run = subprocess.run([ray, "start", "--disable-usage-stats", "--num-cpus=1",
                          "--node-ip-address=127.0.0.1",
                          f"--dashboard-agent-listen-port={free_port()}", *args],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def raylet_pid(node_manager_port):
    """The raylet started with `--node-manager-port`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"/raylet") and f"--node_manager_port={node_manager_port}".encode() \
                in args:
            return int(cmdline.parent.name)
    raise LookupError(node_manager_port)


def descendants(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return kids + [d for k in kids for d in descendants(k)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_two_node_sweep_survives_losing_the_worker_node(tmp_path, synth_root):
    """The recipe of docs/operations.md on one machine (`ray start --head`, then `ray start --address`, both
    with RAY_AUTH_MODE=token and the same token); the worker node is lost
    (its raylet and everything under it SIGKILLed) while one of its trials runs."""
    from search.orphans import end_session

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    gcs, dashboard, head_port, worker_port = free_port(), free_port(), free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="cvae-ray-"))  # AF_UNIX socket paths: <= 107 bytes
    (tmp_path / "multinode.yaml").write_text(textwrap.dedent(SPACE))
    exp = tmp_path / "runs" / "multinode"
    log = tmp_path / "driver.log"
    driver = None
    try:
        ray_start(env, "--head", f"--port={gcs}", f"--temp-dir={temp}",
                  "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
                  f"--node-manager-port={head_port}")
        ray_start(env, f"--address=127.0.0.1:{gcs}", f"--node-manager-port={worker_port}")
        raylet, head = raylet_pid(worker_port), raylet_pid(head_port)
        with pytest.raises(urllib.error.HTTPError) as denied:  # token authentication is on
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/jobs/", timeout=10)
        assert denied.value.code == 401
        start = time.monotonic()
        driver = subprocess.Popen(
            [sys.executable, "-m", "search.run", "--space", str(tmp_path / "multinode.yaml"),
             "--address", f"127.0.0.1:{gcs}", "--storage", str(tmp_path / "runs"),
             "--data", str(synth_root), "--no-report"],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

        # Lose the worker node once a trial running there has reported an epoch.
        victim = None
        while victim is None:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - start < 150, log.read_text()[-3000:]
            for trial_dir in exp.glob("t*_*"):
                done = rows(trial_dir)
                if (done and done[-1]["epoch"] < 4
                        and raylet in ancestors(done[-1]["pid"])):
                    victim = (trial_dir, done[-1]["pid"], done[-1]["epoch"])
            time.sleep(0.2)
        for pid in [raylet, *descendants(raylet)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed_at = time.monotonic() - start

        retried = {}  # pid of the victim's retry -> its ancestors while it ran
        while driver.poll() is None:
            assert time.monotonic() - start < 300, log.read_text()[-3000:]
            for r in rows(victim[0]):
                if r["pid"] != victim[1] and r["pid"] not in retried:
                    chain = ancestors(r["pid"])
                    if chain:
                        retried[r["pid"]] = chain
            time.sleep(0.2)
        assert driver.returncode == 0, log.read_text()[-3000:]
        elapsed = time.monotonic() - start
        out = log.read_text()
        trials = read(exp / "trials.json")
        assert len(trials) == 4 and all(t["status"] == "completed" for t in trials.values())
        for t in trials.values():
            history = read(exp / t["dir"] / "history.json")
            assert [r["epoch"] for r in history] == [1, 2, 3, 4], t["dir"]
        trial_dir, old_pid, epoch = victim
        after = [r for r in rows(trial_dir) if r["pid"] != old_pid]
        assert after and min(r["epoch"] for r in after) > 1  # from a checkpoint, not epoch 1
        assert min(r["epoch"] for r in after) <= epoch + 1  # nothing skipped
        assert retried and all(head in chain for chain in retried.values()), retried
        assert "from its checkpoint" in out and "warning: token authentication" not in out
        print(f"worker node lost at {killed_at:.0f} s (trial {trial_dir.name} at epoch "
              f"{epoch}); sweep done at {elapsed:.0f} s")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        session = temp / "session_latest"
        if session.exists():
            end_session(str(session.resolve()))
        shutil.rmtree(temp, ignore_errors=True)
