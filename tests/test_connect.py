"""Joining a Ray cluster: absent clusters fail in seconds with one line (search.cluster).

Kept apart from test_launcher, whose module-wide local Ray instance would be found by
`--address auto`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from search import cluster as clusters
from test_launcher import free_port, write_space

ROOT = Path(__file__).resolve().parents[1]


def gcs_running():
    """Whether any Ray GCS server runs on this machine (Linux /proc)."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:
            pass
    return "gcs_server" in names


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:1", "error: --address 127.0.0.1:1: no Ray cluster answers there (Connection "
                    "refused); start one with `ray start --head` or check host and port"),
    ("auto", "error: --address auto: Could not find any running Ray instance; start one with "
             "`ray start --head` or pass its host:port"),
])
def test_absent_cluster_is_one_line_within_seconds(tmp_path, address, expected):
    if address == "auto" and gcs_running():
        pytest.skip("a Ray instance runs on this machine; 'auto' would join it")
    # no timed assertion (a loaded machine starts Python slowly): the subprocess timeout
    # catches a hang (the old behaviour waited 200 s), the probe test below the fast path
    run = subprocess.run([sys.executable, "-m", "search.run", "--space", str(write_space(tmp_path)),
                          "--storage", str(tmp_path / "runs"), "--address", address],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert (run.returncode, run.stderr.strip()) == (2, expected)
    assert not (tmp_path / "runs").exists()


def test_probe_refuses_a_closed_port_at_once():
    port = free_port()  # bound, then closed again: nothing listens
    with pytest.raises(clusters.ConnectError, match=f"--address 127.0.0.1:{port}: no Ray "):
        clusters.probe(f"127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        clusters.probe("127.0.0.1:%d" % server.getsockname()[1])  # something answers: no error
    clusters.probe("auto")


def test_auto_without_cluster_is_a_connect_error(monkeypatch):
    import ray

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(clusters.ConnectError) as info:
        clusters.connect("auto")
    assert str(info.value) == ("--address auto: Could not find any running Ray instance; start "
                               "one with `ray start --head` or pass its host:port")



def test_failed_local_start_is_one_line(monkeypatch):
    import ray

    def timed_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen ...\n"
                        "more lines")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(clusters, "private_token", lambda: None)
    with pytest.raises(clusters.ConnectError) as info:
        clusters.connect(None)
    assert str(info.value) == (
        "could not start a local Ray instance: The current node timed out during startup. "
        "This could happen ... (Ray's logs: /tmp/ray/session_latest/logs)")
