"""migrator/memory.py: the malloc arena cap takes effect (glibc reports its arenas; no server involved)."""

from __future__ import annotations

import subprocess
import sys

# Eight threads allocating at once, then glibc's own count of its arenas (malloc_stats, on stderr).
_THREADS = """
import ctypes, sys, threading
from migrator.memory import limit_malloc_arenas
if sys.argv[1] == "limit":
    limit_malloc_arenas()
together = threading.Barrier(8)
def work():
    together.wait()
    for _ in range(200):
        del bytearray(100_000)[:]
    together.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str, env: dict[str, str] | None = None) -> int:
    result = subprocess.run([sys.executable, "-c", _THREADS, mode], capture_output=True, text=True, check=True,
                            env=env)
    return sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))


def test_threads_share_two_malloc_arenas_unless_the_environment_says_otherwise() -> None:
    assert arenas("free", {}) > 2, "the threads got arenas of their own: the check below means something"
    assert arenas("limit", {}) <= 2
    assert arenas("limit", {"MALLOC_ARENA_MAX": "8"}) > 2


# A verb's modules loaded as `migrator run` loads them, with the garbage collector's own count of what it ran.
_VERB = """
import gc, sys
runs = []
gc.callbacks.append(lambda phase, info: runs.append(info["generation"]) if phase == "stop" else None)
from migrator.cli import cli
ctx = cli.make_context("migrator", ["run", "--help"], resilient_parsing=True)
before = len(runs)
cli.get_command(ctx, "run")
print(len(runs) - before, gc.isenabled(), gc.get_freeze_count())
"""


def test_a_verbs_imports_run_no_collection_and_are_frozen_after() -> None:
    """memory.imports_frozen: importing `run` set off 135 collections (one full one of 19 ms); none now, and
    the collector is on again with what the imports made out of its way (gc.freeze)."""
    result = subprocess.run([sys.executable, "-c", _VERB], capture_output=True, text=True, check=True)
    collections, enabled, frozen = result.stdout.split()
    assert (int(collections), enabled) == (0, "True")
    assert int(frozen) > 50_000, "SQLAlchemy's classes and the package's are frozen, not walked again"
