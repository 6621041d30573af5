"""Starting a training attempt as a detached process on this machine, and checking on it later.

The process runs `ganflow train --flow ... --request-id ID` (as `python -m flows.cli`, so no PATH lookup)
in its own session (so it outlives the manager and a Ctrl-C in the manager's terminal), with its output in
RUN/attempt-N.log. Every setting the request carries becomes the option of the same name. The train flow
tags its Prefect flow run `request:ID`; that tag, not the process, is how the manager follows it. The
pid only answers one extra question when the manager runs on the same machine: is that process gone?
A SIGKILLed process cannot report Crashed, so the API would show it Running until its heartbeats go stale.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from tasks.manager.run_view import local_run
from tasks.common.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[2]


def train_command(params: dict[str, Any], request_id: str, python: str = sys.executable) -> list[str]:
    """The command a user would type, `ganflow train --flow` with the request's settings (the train flow's
    parameters, which the CLI's options are named after: run_dir → --run-dir=...; True → the bare flag; a
    setting's False → --flag=false, a flow parameter's → nothing).
    OPTION=VALUE, so that a value starting with '-' (a negative number, an odd path) stays a value."""
    cmd = [python, "-m", "flows.cli", "train", "--flow"]
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False and key in TrainSettings.model_fields:  # said, since params.yaml's may be true
            cmd.append(f"{flag}=false")
        elif value is not None and value is not False:
            cmd.append(f"{flag}={value}")
    return cmd + ["--request-id", request_id]


def launch_local(params: dict[str, Any], request_id: str, attempt: int,
                 env: dict[str, str] | None = None) -> tuple[int, Path]:
    """Start attempt `attempt` detached; returns (pid, log path)."""
    log = local_run(params["run_dir"]).attempt_log(attempt)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(train_command(params, request_id), cwd=ROOT, env={**os.environ, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid, log


def process_state(pid: int | None, host: str, request_id: str) -> Literal["alive", "dead", "unknown"]:
    """A locally launched attempt's process: alive, dead, or unknown (launched elsewhere, or no pid)."""
    if pid is None or host != socket.gethostname():
        return "unknown"
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (a looping manager), so it is not a zombie
    except ChildProcessError:
        pass
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs: signal 0 says whether the pid exists at all
        try:
            os.kill(pid, 0)
            return "alive"
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            return "alive"
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "dead"
    if state in ("Z", "X") or request_id.encode() not in cmdline:  # a zombie, or the pid now belongs to another
        return "dead"
    return "alive"


def kill_local(pid: int | None, host: str, request_id: str) -> bool:
    """SIGKILL a frozen or orphaned attempt's process group before a restart writes to the same run dir."""
    if process_state(pid, host, request_id) != "alive":
        return False
    try:
        # mypy: 'alive' implies a pid
        os.killpg(pid, signal.SIGKILL)  # type: ignore[arg-type]  # its own session: the group is the train process and its workers
    except ProcessLookupError:
        return False
    return True
