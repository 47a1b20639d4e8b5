"""Leftover processes of a local Ray instance whose launcher was killed are ended at the next
start (search.orphans), and only those."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from search import orphans

pytestmark = pytest.mark.skipif(not orphans.PROC.is_dir(), reason="needs Linux /proc")

# A process that names nothing of the session on its command line but keeps a log open there,
# as Ray's renamed agents (ray::DashboardAgent) do.
HOLDS_LOG = "import os, time; f = open(os.environ['LOG'], 'a'); time.sleep(120)"


def spawn(*args, env=None):
    return subprocess.Popen([sys.executable, "-c", *args], env={**os.environ, **(env or {})})


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def wait_open(proc, path, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if orphans._belongs(proc.pid, path):
            return
        time.sleep(0.05)
    raise TimeoutError(path)


def test_orphans_of_a_killed_launcher_are_ended(tmp_path):
    session = tmp_path / "session_killed"
    (session / "logs").mkdir(parents=True)
    other = tmp_path / "session_other"
    (other / "logs").mkdir(parents=True)
    named = spawn("import time; time.sleep(120)", f"--session-dir={session}")
    agent = spawn(HOLDS_LOG, env={"LOG": str(session / "logs" / "agent.log")})
    bystander = spawn(HOLDS_LOG, env={"LOG": str(other / "logs" / "agent.log")})
    live = spawn("import time; time.sleep(120)", f"--session-dir={other}")
    try:
        wait_open(agent, str(session))
        wait_open(bystander, str(other))
        records = orphans.records_dir()
        records.mkdir(parents=True, exist_ok=True)
        killed = dead_pid()
        (records / f"{killed}.json").write_text(json.dumps(
            {"driver_pid": killed, "driver_start": 1, "session_dir": str(session)}))
        # a launcher still running (this test process) keeps its instance
        (records / f"{os.getpid()}.json").write_text(json.dumps(
            {"driver_pid": os.getpid(), "driver_start": orphans._start_time(os.getpid()),
             "session_dir": str(other)}))

        lines = orphans.end_orphans()

        assert lines == [f"ray: ended 2 leftover process(es) of the local Ray instance of a "
                         f"killed launcher (pid {killed}, {session})"]
        assert named.wait(timeout=10) is not None and agent.wait(timeout=10) is not None
        assert bystander.poll() is None and live.poll() is None
        assert sorted(p.name for p in records.glob("*.json")) == [f"{os.getpid()}.json"]
        assert orphans.end_orphans() == []
    finally:
        for proc in (named, agent, bystander, live):
            proc.kill()
            proc.wait()
        orphans.forget()


def test_record_and_forget(tmp_path):
    path = orphans.record(str(tmp_path / "session_x"))
    rec = json.loads(path.read_text())
    assert rec == {"driver_pid": os.getpid(), "driver_start": orphans._start_time(os.getpid()),
                   "session_dir": str(tmp_path / "session_x")}
    assert orphans.end_orphans() == [] and path.exists()  # its driver (this process) runs
    orphans.forget()
    assert not path.exists()
