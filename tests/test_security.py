"""What a Ray instance of the launcher exposes: a local instance listens on loopback only, its
token is private, and joining a cluster with token authentication off is refused."""
from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from search import cluster as clusters

ROOT = Path(__file__).resolve().parents[1]


# --- the token of a local instance -------------------------------------------------------------

@pytest.fixture
def token_env(tmp_path, monkeypatch):
    path = tmp_path / "home" / ".ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return path


def test_created_token_is_private(token_env):
    assert clusters.private_token() == token_env
    assert stat.S_IMODE(token_env.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_env.parent.stat().st_mode) == 0o700
    token = token_env.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert clusters.private_token() is None and token_env.read_text() == token  # kept


def test_existing_token_and_disabled_auth_are_left_alone(token_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert clusters.private_token() is None and not token_env.exists()
    monkeypatch.delenv("RAY_AUTH_MODE")
    token_env.parent.mkdir(parents=True)
    token_env.write_text("mine")
    token_env.chmod(0o644)
    assert clusters.private_token() is None
    assert token_env.read_text() == "mine" and stat.S_IMODE(token_env.stat().st_mode) == 0o644


# --- joining a cluster -------------------------------------------------------------------------

@pytest.fixture
def dashboard():
    """A stand-in dashboard answering /api/authentication_mode with `state["mode"]`."""
    state = {"mode": "disabled"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"authentication_mode": state["mode"]}).encode()
            ok = self.path == "/api/authentication_mode"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(body if ok else b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


@pytest.fixture
def fake_ray(monkeypatch, dashboard):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(clusters, "probe", lambda address: None)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append("init") or SimpleNamespace(
        dashboard_url=dashboard["url"]))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(gcs_address="gcs"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    return calls


def test_cluster_without_token_auth_is_refused(fake_ray, dashboard):
    with pytest.raises(clusters.ConnectError) as info:
        clusters.connect("10.0.0.1:6379")
    assert str(info.value) == (
        "--address 10.0.0.1:6379: the cluster has token authentication off (disabled): anyone "
        "who reaches its ports can run code on it; start every node with RAY_AUTH_MODE=token "
        "and a shared token (docs/operations.md, Several machines), or pass "
        "--allow-unauthenticated-cluster to join anyway")
    assert fake_ray == ["init", "shutdown"]  # disconnected again, nothing submitted
    joined = clusters.connect("10.0.0.1:6379", allow_unauthenticated=True)
    assert joined.auth_mode == "disabled" and not joined.started
    dashboard["mode"] = "token"
    assert clusters.connect("10.0.0.1:6379").auth_mode == "token"


def test_cluster_whose_dashboard_is_silent_is_refused(fake_ray, dashboard):
    dashboard["url"] = "127.0.0.1:1"
    with pytest.raises(clusters.ConnectError, match="cannot tell whether the cluster has token "
                                                    "authentication on"):
        clusters.connect("10.0.0.1:6379")


# --- what a local instance listens on ------------------------------------------------------------

LISTENERS = r'''
import json, os, sys
sys.path.insert(0, os.getcwd())
from search import cluster as clusters
clusters.keep_local_ray_on_loopback()
import ray
c = clusters.connect(num_cpus=1, dashboard=True, dashboard_port=int(sys.argv[1]))
ray.get(ray.remote(lambda: 1).remote())  # a worker process too

def children(pid):
    kids = set()
    for p in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{p}/stat").read()
        except (OSError, ValueError):
            continue
        if p.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids |= {int(p)} | children(int(p))
    return kids

inodes = set()
for pid in children(os.getpid()) | {os.getpid()}:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            host, port = f[1].split(":")
            listening.append([host, int(port, 16)])
print(json.dumps({"address": c.address, "listening": listening}))
ray.shutdown()
'''
IPV4_LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
IPV6_LOOPBACKS = ("00000000000000000000000001000000",  # ::1
                  "0000000000000000FFFF00000100007F")  # ::ffff:127.0.0.1


@pytest.mark.slow
def test_local_instance_listens_on_loopback_only(tmp_path):
    from test_launcher import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "auth_token")
    run = subprocess.run([sys.executable, "-c", LISTENERS, str(free_port())], cwd=ROOT,
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["address"].startswith("127.0.0.1:")
    assert len(seen["listening"]) >= 5  # GCS, raylet, dashboard, agents, worker
    exposed = [(h, p) for h, p in seen["listening"]
               if h != IPV4_LOOPBACK and h not in IPV6_LOOPBACKS]
    assert not exposed, exposed
    assert stat.S_IMODE((tmp_path / "auth_token").stat().st_mode) == 0o600
