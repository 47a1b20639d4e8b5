"""Ray: start a local instance or join a cluster, the dashboard, and per-trial resources.

Multi-node sweeps: start Ray on every machine with token authentication on
(`ray get-auth-token --generate` on the head, the same token copied to ~/.ray/auth_token on
every node, `RAY_AUTH_MODE=token` set for `ray start --head` on one and `ray start
--address=<head>:6379` on the others); the launcher refuses to join a cluster whose dashboard
reports token authentication off unless `--allow-unauthenticated-cluster` is given (a sweep
submitted as a Ray Job joins its own cluster: its code already runs there). Then run the
launcher on the head with `--address auto` and a `--storage` every node can reach:
a shared file system path (NFS mounted at the same path everywhere) or a bucket URI
(s3://bucket/sweeps, gs://...). Trial workers on other nodes upload their checkpoints to that
storage directly; the driver writes results, trials.json and the experiment state there, and
`--resume` restores from it.

A local instance (no --address) listens on 127.0.0.1 only (`keep_local_ray_on_loopback`), and
a token the launcher creates for it is readable by its owner only (`private_token`).

Dashboard: the launcher starts a local Ray with the dashboard on 127.0.0.1 (`--dashboard-host`
changes it, `--no-dashboard` turns it off). Ray 2.60 protects it with token authentication:
the token is in ~/.ray/auth_token (or $RAY_AUTH_TOKEN / the file $RAY_AUTH_TOKEN_PATH names);
`ray get-auth-token` prints it. A browser asks for it once (it is kept as a cookie); HTTP
clients send `Authorization: Bearer <token>`. On a remote machine, forward the port:
`ssh -L 8265:127.0.0.1:8265 user@host`, then open http://127.0.0.1:8265 locally. Keep the
dashboard off public interfaces: its job API runs arbitrary code (CVE-2023-48022).
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from search import orphans
from search import ray_internals as internals

MAX_TRIALS_PER_GPU = 4  # "auto" shares a GPU among at most this many trials (no memory isolation)
PROBE_S = 5.0  # seconds to wait for a TCP connection to a cluster's GCS port before ray.init


class ResourceError(Exception):
    """A per-trial request the cluster cannot satisfy; the message is one line."""


class ConnectError(Exception):
    """No Ray cluster to join at the given address; the message is one line."""


@dataclass
class Cluster:
    address: str  # GCS address
    started: bool  # True: this process started a local Ray instance
    dashboard_url: Optional[str]  # "http://host:port", None without a dashboard
    resources: dict[str, float]  # ray.cluster_resources()
    max_node_cpus: float
    max_node_gpus: float
    auth_mode: Optional[str] = None  # as its dashboard says: "token", "disabled", None: unknown


@dataclass
class TrialResources:
    cpu: float
    gpu: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpu > 0 else "cpu"

    @property
    def threads(self) -> int:
        """torch threads: the CPUs the trial holds (at least one)."""
        return max(1, int(self.cpu))

    def config(self) -> dict[str, Any]:
        """The trial config keys that carry these resources to cvae.config.Config."""
        return {"device": self.device, "threads": self.threads,
                "gpu_memory_fraction": self.gpu if 0 < self.gpu < 1 else 0.0}

    def describe(self) -> str:
        where = f"GPU ({self.gpu:g} each)" if self.gpu else "CPU"
        return f"trials run on {where}, {self.cpu:g} CPU and {self.threads} torch thread(s) each"


def connect(address: Optional[str] = None, *, dashboard: bool = True,
            dashboard_host: str = "127.0.0.1", dashboard_port: int = 8265,
            num_cpus: Optional[int] = None, allow_unauthenticated: bool = False) -> Cluster:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray instance.

    Reuses an existing connection of this process. Worker output is not forwarded to the
    driver (the launcher prints its own table; trial logs stay in Ray's session logs). A
    joined cluster must have token authentication on (its dashboard says so), unless
    `allow_unauthenticated`; a local instance gets a token readable only by its owner.
    """
    import ray

    started, url, auth = False, None, None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
        if address:
            probe(address)
            try:
                url = ray.init(address=address, **kwargs).dashboard_url
            except ConnectionError as e:
                raise ConnectError(f"--address {address}: {str(e).split('. ')[0]}; start one "
                                   "with `ray start --head` or pass its host:port") from None
            auth = cluster_auth_mode(url)
            if auth != "token" and not allow_unauthenticated:
                ray.shutdown()  # only this driver's connection; the cluster keeps running
                raise ConnectError(_unauthenticated(address, auth))
        else:
            private_token()
            # Token auth is on by default for a local instance; dashboard_help says how to
            # use it, so Ray's own warning about it is not shown.
            logging.getLogger(internals.TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
            try:
                context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard,
                                   dashboard_host=dashboard_host,
                                   dashboard_port=dashboard_port, **kwargs)
            except Exception as e:  # Ray raises bare Exceptions when its services time out
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ConnectError(f"could not start a local Ray instance: {reason} (Ray's "
                                   "logs: /tmp/ray/session_latest/logs)") from None
            url, started = context.dashboard_url, True
            orphans.record(context.address_info["session_dir"])
            auth = cluster_auth_mode(url)
    else:  # connected before: ray.init returns the existing connection's context
        url = ray.init(ignore_reinit_error=True).dashboard_url
        auth = cluster_auth_mode(url)
    context = ray.get_runtime_context()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return Cluster(address=context.gcs_address, started=started, auth_mode=auth,
                   dashboard_url=f"http://{url}" if url else None,
                   resources=dict(ray.cluster_resources()),
                   max_node_cpus=max((n.get("CPU", 0.0) for n in nodes), default=0.0),
                   max_node_gpus=max((n.get("GPU", 0.0) for n in nodes), default=0.0))


def cluster_auth_mode(dashboard: Optional[str], timeout: float = PROBE_S) -> Optional[str]:
    """"token" or "disabled" as the cluster's dashboard reports it (a public endpoint, no token
    needed), None when there is no dashboard to ask."""
    if not dashboard:
        return None
    url = dashboard if "://" in dashboard else f"http://{dashboard}"
    try:
        with urllib.request.urlopen(f"{url}/api/authentication_mode", timeout=timeout) as r:
            return str(json.loads(r.read()).get("authentication_mode"))
    except (OSError, ValueError):
        return None


def _unauthenticated(address: str, mode: Optional[str]) -> str:
    flag = "pass --allow-unauthenticated-cluster to join anyway"
    if mode is None:
        return (f"--address {address}: cannot tell whether the cluster has token "
                f"authentication on (its dashboard does not answer); {flag}")
    return (f"--address {address}: the cluster has token authentication off ({mode}): anyone "
            "who reaches its ports can run code on it; start every node with "
            "RAY_AUTH_MODE=token and a shared token (docs/operations.md, Several machines), "
            f"or {flag}")


def keep_local_ray_on_loopback() -> None:
    """Make a local Ray instance listen on 127.0.0.1 only (GCS, raylet, workers, agents).

    Ray binds its services to the node IP, which it resolves to loopback when
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode, the default on macOS and
    Windows). Read when ray is imported: call before that. An explicit setting is kept.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def token_path() -> Path:
    """Where Ray reads the auth token from: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def private_token() -> Optional[Path]:
    """Create the token a local Ray instance will use, readable by its owner only (Ray's
    own file would be 0644), when token auth is wanted and no token exists; returns the
    path of a token created here."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "token") != "token":
        return None
    path = token_path()
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    return path


def probe(address: str, timeout: float = PROBE_S) -> None:
    """Fail fast (ConnectError) when nothing accepts TCP connections at a host:port address;
    ray.init would retry for minutes. 'auto', 'local' and unparsable addresses pass."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConnectError(f"--address {address}: no Ray cluster answers there ({reason}); "
                           "start one with `ray start --head` or check host and port") from None


def dashboard_help(cluster: Cluster, requested: bool = True) -> str:
    """How to open the dashboard: URL, token, SSH tunnel."""
    if not cluster.dashboard_url:
        if requested and cluster.started:
            return "dashboard: not running (it needs ray[default])"
        return "dashboard: off"
    lines = [f"dashboard: {cluster.dashboard_url}"]
    if cluster.auth_mode == "token":
        lines.append("  token auth is on: the browser asks for the token printed by "
                     "`ray get-auth-token` (stored in ~/.ray/auth_token); HTTP clients send "
                     "'Authorization: Bearer <token>'")
    host_port = cluster.dashboard_url.split("://", 1)[1]
    host, _, port = host_port.rpartition(":")
    if host in ("127.0.0.1", "localhost"):
        lines.append(f"  from another machine: ssh -L {port}:127.0.0.1:{port} user@<this host>, "
                     f"then open http://127.0.0.1:{port}")
    else:
        lines.append(f"  warning: the dashboard listens on {host}, not only on this machine; "
                     "its job API runs arbitrary code for whoever reaches it")
    return "\n".join(lines)


def trial_resources(cpu: float, gpu: Union[float, str], cluster: Cluster,
                    concurrency: int) -> TrialResources:
    """Per-trial CPUs and GPUs, checked against the cluster.

    gpu "auto": CPU-only when the cluster has no GPUs; otherwise the concurrent trials are
    spread over the GPUs, sharing one GPU among at most MAX_TRIALS_PER_GPU trials:
    gpu = 1 / min(MAX_TRIALS_PER_GPU, ceil(concurrency / GPUs)). `concurrency` is the number
    of trials that can run at once (max_concurrent, num_samples and CPUs permitting).
    """
    gpus = cluster.resources.get("GPU", 0.0)
    if cpu > cluster.max_node_cpus:
        raise ResourceError(f"resources.cpu={cpu:g} per trial, but the largest node has "
                            f"{cluster.max_node_cpus:g} CPUs")
    if gpu == "auto":
        if gpus == 0:
            return TrialResources(cpu=cpu, gpu=0.0)
        share = min(MAX_TRIALS_PER_GPU, max(1, math.ceil(concurrency / gpus)))
        return TrialResources(cpu=cpu, gpu=1.0 / share)
    gpu = float(gpu)
    if gpu > 0 and gpus == 0:
        raise ResourceError(f"resources.gpu={gpu:g} per trial, but the Ray cluster has no GPUs "
                            "(use gpu: 0 or --gpus-per-trial auto)")
    if gpu > cluster.max_node_gpus:
        raise ResourceError(f"resources.gpu={gpu:g} per trial, but the largest node has "
                            f"{cluster.max_node_gpus:g} GPUs")
    if gpu > 1 and not gpu.is_integer():
        raise ResourceError(f"resources.gpu={gpu:g}: a trial takes a fraction of one GPU or a "
                            "whole number of GPUs")
    return TrialResources(cpu=cpu, gpu=gpu)


def concurrency(num_samples: int, max_concurrent: Optional[int], cpu: float,
                cluster: Cluster) -> int:
    """How many trials can run at once: samples, the concurrency limit and CPUs permitting."""
    by_cpu = max(1, int(cluster.resources.get("CPU", 1.0) // cpu))
    return max(1, min(num_samples, max_concurrent or num_samples, by_cpu))
