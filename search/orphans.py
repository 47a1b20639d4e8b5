"""Leftovers of a local Ray instance whose launcher was killed (`kill -9`, a lost terminal).

Ray's daemons of a local instance (GCS, raylet, dashboard, DashboardAgent, RuntimeEnvAgent,
idle workers) can outlive a driver killed with SIGKILL, some listening on network ports. The
launcher records each local instance it starts (`record`: driver pid and start time, Ray's
session directory) in `$CVAE_CACHE/ray-instances/`, removes the record when it shuts Ray down
(`forget`), and at every start ends the processes of instances whose driver is gone
(`end_orphans`). A process belongs to an instance when its command line names the instance's
session directory or it holds a file open there (agents rename themselves `ray::...` but keep
their logs open). Linux only (/proc); elsewhere nothing is recorded or ended.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Iterator, Optional

PROC = Path("/proc")
GRACE_S = 3.0  # seconds between SIGTERM and SIGKILL


def records_dir() -> Path:
    """`$CVAE_CACHE/ray-instances`, else ~/.cache/cvae-sweeps/ray-instances."""
    env = os.environ.get("CVAE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "cvae-sweeps"
    return root / "ray-instances"


def record(session_dir: str) -> Optional[Path]:
    """Note that this process started the local Ray instance of `session_dir`."""
    start = _start_time(os.getpid())
    if start is None:
        return None
    path = records_dir() / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"driver_pid": os.getpid(), "driver_start": start,
                                "session_dir": session_dir}))
    return path


def forget() -> None:
    """This process shut its Ray instance down: drop its record."""
    (records_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def end_orphans() -> list[str]:
    """End the processes of recorded instances whose driver is gone; one line per instance."""
    lines = []
    for path in sorted(records_dir().glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            pid, start, session = rec["driver_pid"], rec["driver_start"], rec["session_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _start_time(pid) == start:
            continue  # its launcher still runs
        ended = end_session(session)
        path.unlink(missing_ok=True)
        if ended:
            lines.append(f"ray: ended {len(ended)} leftover process(es) of the local Ray "
                         f"instance of a killed launcher (pid {pid}, {session})")
    return lines


def end_session(session_dir: str, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, every process of one Ray session; their pids."""
    pids = [p for p in _pids() if p != os.getpid() and _belongs(p, session_dir)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def _pids() -> Iterator[int]:
    if PROC.is_dir():
        for entry in PROC.iterdir():
            if entry.name.isdigit():
                yield int(entry.name)


def _belongs(pid: int, session_dir: str) -> bool:
    """Whether the process names `session_dir` on its command line or has a file open in it."""
    named = re.compile(re.escape(session_dir).encode() + rb"(?=[/\0\s]|$)")
    try:
        if named.search((PROC / str(pid) / "cmdline").read_bytes()):
            return True
        for fd in (PROC / str(pid) / "fd").iterdir():
            target = os.readlink(fd)
            if target == session_dir or target.startswith(session_dir + "/"):
                return True
    except OSError:  # gone, or not ours to inspect
        return False
    return False


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
