"""A sweep submitted as a Ray Job, as docs/monitoring.md says: a local `ray start --head` with
token authentication, the job submitted through Ray's job client, the launcher joining the job's
cluster (no Ray instance of its own), its live output read back as the job's logs."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from test_launcher import free_port
from test_multinode import ray_start

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
name: job
num_samples: 2
seed: 0
base: {preset: tiny, epochs: 2}
params:
  lr: {type: loguniform, low: 1.0e-3, high: 5.0e-3}
asha: {grace_period: 2, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
"""
# The job's entrypoint: the launcher with the fake trainable (0.1 s per epoch).
DRIVER = ("import sys; sys.path[:0] = ['tests']; import fakes; from search.run import main; "
          "sys.exit(main(sys.argv[1:], trainable=fakes.fake_fast))")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_sweep_submitted_as_a_ray_job(tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from search.orphans import end_session

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    gcs, dashboard = free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="cvae-ray-"))  # AF_UNIX socket paths: <= 107 bytes
    (tmp_path / "job.yaml").write_text(textwrap.dedent(SPACE))
    try:
        ray_start(env, "--head", f"--port={gcs}", f"--temp-dir={temp}", "--num-cpus=2",
                  "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}")
        client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}",
                                     headers={"Authorization": f"Bearer {token.read_text()}"})
        entrypoint = shlex.join([sys.executable, "-c", DRIVER, "--space",
                                 str(tmp_path / "job.yaml"), "--storage",
                                 str(tmp_path / "runs"), "--no-report"])
        job = client.submit_job(entrypoint=f"cd {shlex.quote(str(ROOT))} && {entrypoint}")
        start = time.monotonic()
        while (status := client.get_job_status(job)) not in (
                JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.monotonic() - start < 240, client.get_job_logs(job)[-3000:]
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        assert f"ray: running as Ray job {job}; joining its cluster" in logs
        assert "ray: joined at " in logs and "started a local Ray instance" not in logs
        assert "warning: token authentication" not in logs  # the cluster has it on
        assert "sweep job: " in logs and "best val_psnr" in logs  # the launcher's own lines
        trials = json.loads((tmp_path / "runs" / "job" / "trials.json").read_text())
        assert len(trials) == 2
        assert all(t["status"] in ("completed", "early_stopped") for t in trials.values())
    finally:
        session = temp / "session_latest"
        if session.exists():
            end_session(str(session.resolve()))
        shutil.rmtree(temp, ignore_errors=True)
