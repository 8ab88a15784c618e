"""`run --processes N` spreads its workers over forked processes. They must die with the run
(kill -9 of `migrator run` leaves nothing copying behind it), stop with it (SIGTERM), and a worker process that
dies alone must lose and duplicate nothing. Real processes, real Dovecot, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec
from migrator.lab.dovecot import DovecotServer
from tests.graph_fixtures import Cloud
from tests.imap_fixtures import Lab, running_lab
from tests.imap_to_graph import assert_graph_holds_source, to_graph_project


@pytest.fixture
def slow_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    """Two mailboxes, a target throttled to stretch the copy over several seconds."""
    with running_lab(lab_root, CorpusSpec(messages_per_mailbox=40, large_attachments=0),
                     config_extra="[throttle.target]\nmessages_per_second = 60\n") as lab:
        lab.prepare()
        yield lab


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet has stopped running)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _start_run(lab: Lab) -> tuple[subprocess.Popen[str], list[int]]:
    """`migrator run --workers 2 --processes 2` copying, and its worker processes."""
    process = subprocess.Popen(lab.command("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2",
                                           "--processes", "2"),
                               cwd=lab.project, env={**os.environ, **lab.env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [pid for pid in _children(process.pid) if _alive(pid)]
        if len(workers) == 2:
            time.sleep(1.0)  # both are copying by now (the throttle keeps them at it for seconds)
            return process, workers
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"migrator run did not start two worker processes: {_children(process.pid)}")


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _resume_and_check(lab: Lab) -> None:
    lab.assert_no_duplicates()
    lab.write_config()  # the throttle only had to keep the first run busy
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2", "--processes", "2")
    lab.assert_exact_copy()
    again = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2", "--processes", "2")
    assert "copied 0 messages" in again.stdout


def test_kill_9_of_the_run_kills_its_worker_processes(slow_lab: Lab) -> None:
    process, workers = _start_run(slow_lab)
    process.send_signal(signal.SIGKILL)
    process.wait()  # not communicate(): that waits until every holder of the output pipes, workers too, is gone
    # at once: a worker must not go on until it happens to write to its dead parent
    assert _gone(workers, timeout=1), f"worker processes {workers} outlived the run they belonged to"
    process.communicate()
    _resume_and_check(slow_lab)


def test_sigterm_stops_every_worker_process_at_a_clean_point(slow_lab: Lab) -> None:
    process, workers = _start_run(slow_lab)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "interrupted: re-run the same command to resume" in err
    assert _gone(workers, timeout=1)
    _resume_and_check(slow_lab)


def test_a_worker_process_killed_alone_loses_nothing(slow_lab: Lab) -> None:
    process, workers = _start_run(slow_lab)
    os.kill(workers[0], signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, out + err
    assert "a worker process killed by SIGKILL" in err
    _resume_and_check(slow_lab)


def test_worker_processes_copy_into_graph_each_with_its_own_connections(
        imap_source: DovecotServer, cloud: Cloud, lab_root: Path) -> None:
    """A forked worker must not share the parent's HTTP connection pool (two processes writing one socket):
    each makes its endpoints anew and gets its own token."""
    tenant = cloud.tenant("target")
    project = to_graph_project(lab_root, imap_source, tenant)
    project.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2", "--processes", "2")
    assert_graph_holds_source(imap_source, tenant)
    again = project.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2", "--processes", "2")
    assert "copied 0 messages" in again.stdout
