"""What every lab server shares: installing Debian packages once at a time, and stopping at exit.

Parallel test workers all install at start-up and apt-get does not tolerate concurrent runs, hence one
file lock for every lab; servers still running when the interpreter exits are stopped, so a crashed
test run leaves no daemons behind.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

INSTALL_LOCK = Path(tempfile.gettempdir()) / "migrator-lab-install.lock"


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)


@contextlib.contextmanager
def install_lock() -> Iterator[None]:
    with open(INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_steps(steps: Sequence[Sequence[str]]) -> str:
    """Run commands in order (apt-get non-interactive); the first failure as text, or "" when all succeeded."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in steps:
        try:
            res = run(cmd, env=env)
        except FileNotFoundError as exc:
            return f"{cmd[0]} not found ({exc})"
        if res.returncode != 0:
            return f"{' '.join(cmd)} exited {res.returncode}:\n{(res.stderr or res.stdout).strip()[-2000:]}"
    return ""


def start_retrying_ports(start_once: Callable[[], None], pick_new_ports: Callable[[], None], retry: bool) -> None:
    """Start a server; a port taken between picking and binding (another test was faster) is picked anew
    twice when the ports were chosen automatically."""
    for attempt in range(3 if retry else 1):
        try:
            start_once()
            return
        except RuntimeError as exc:
            if attempt == (2 if retry else 0) or "Address already in use" not in str(exc):
                raise
            pick_new_ports()


def spawn(cmd: Sequence[str], output: Path) -> subprocess.Popen[bytes]:
    """A daemon in the foreground of its own session (so its whole process group can be stopped), with
    stdout and stderr going to `output`."""
    with open(output, "wb") as out:
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, name: str,
                     poll: float = 0.01) -> str | None:
    """None once `ready()` holds; otherwise why not (the process exited, or `timeout` seconds passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"{name} exited with status {proc.returncode}"
        if ready():
            return None
        time.sleep(poll)
    return "timed out"


class Stoppable(Protocol):
    def stop(self) -> None: ...


_RUNNING: set[Stoppable] = set()
_RUNNING_LOCK = threading.Lock()


def track(server: Stoppable) -> None:
    with _RUNNING_LOCK:
        _RUNNING.add(server)


def untrack(server: Stoppable) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(server)


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
