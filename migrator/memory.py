"""How much memory the process keeps of what it has freed, and how much of it the garbage collector walks."""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameter for the most malloc arenas a process may have (malloc.h).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX does, unless that variable says otherwise. glibc gives
    each thread that allocates at once with others an arena of its own, up to eight per core, and keeps
    what is freed there for reuse: a pass's threads (per session pair a worker, a prefetcher and an APPEND
    thread) handing megabyte batches to each other kept 40 MB of freed batches that way (8 pairs of large
    mail: 196 MB peak RSS, 158 MB with two arenas). Without glibc's mallopt, nothing is done."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, arenas)


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Around the import of a verb's modules: the cyclic garbage collector is off while they load, and what
    they created (classes, functions, SQLAlchemy's registries: most of the process's objects, alive until
    it exits) is frozen after (gc.freeze), so that no later collection walks them again. Their loading set
    off 135 collections, one of them a full one of 19 ms, 36-38 ms of a no-op delta's 0.4 s; a delta's
    start-up is part of what it costs."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
