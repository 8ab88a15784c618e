"""Network faults between migrator and its servers: nothing lost, nothing duplicated, whatever the wire does.

A `FaultProxy` (tests/faultproxy.py) sits between the migrator and the TARGET (in one test the SOURCE); the
lab's servers stay real Dovecot. A bench measures a clean run once (bytes each way per session, where every
IMAP line, APPEND and tagged reply lies in each stream), then replays the copy from scratch under faults:

* connections cut after N bytes client->server and server->client, 20+ seeded random points per direction:
  a third uniform over a session's bytes, a third a few bytes after a line/literal boundary, a third at or
  just after an APPEND landmark (its first byte, just after its last CRLF, the server's reply to it). Each run
  cuts both mailboxes' first sessions, one each way. Points are placed per login and relative to protocol
  landmarks, so a seed replays them although the two mailboxes copy in parallel;
* the server's tagged reply to an APPEND swallowed, several times in one run: the message was stored, the
  client never learned it;
* stalls longer than the endpoint's `timeout`;
* lost replies during a delta pass (flag STORE, APPEND of new mail), a lost CREATE reply, cuts on the source.

After the faulty run (and one clean run if it exited non-zero) the target must hold every source message
exactly once (`assert_exact_copy`) and `migrator verify --deep` must pass. The seed is printed;
MIGRATOR_FAULT_SEED replays it; MIGRATOR_FAULT_CUTS sets the number of cut points per direction (20).
Between runs the lab is reset, not rebuilt: the target is stopped, its users' mail removed, started again,
and the state store put back to its copy taken right after discover + plan. The target-side tests share one
lab (module scope); the source-side test has its own.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped, unused-ignore]

from migrator.lab.corpus import CorpusSpec
from migrator.lab.dovecot import DovecotServer, LabUser
from tests.faultproxy import (
    C2S,
    S2C,
    ConnectionStats,
    Cut,
    Direction,
    FaultProxy,
    Landmark,
    ProxyStats,
    Stall,
    SwallowAppendReply,
)
from tests.imap_fixtures import Lab, running_lab

SPEC = CorpusSpec(messages_per_mailbox=15, large_attachments=1, include_cpython_samples=False)
CUTS_PER_DIRECTION = int(os.environ.get("MIGRATOR_FAULT_CUTS", "20"))
SOURCE_CUTS_PER_DIRECTION = 3
RUN_TIMEOUT = 120.0
PLAN = "plans/wave1.yaml"
STATE_FILES = ("migrator.db", "migrator.db-wal", "migrator.db-shm")
Side = Literal["source", "target"]


def fault_seed() -> int:
    seed = int(os.environ.get("MIGRATOR_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"network fault seed: {seed} (replay with MIGRATOR_FAULT_SEED={seed})")
    return seed


@dataclass
class FaultBench:
    """A lab with a FaultProxy in front of one of its servers, resettable to "planned, nothing copied"."""

    lab: Lab
    proxy: FaultProxy
    side: Side
    workers: int = 2
    config_extra: str = ""
    clean: ProxyStats | None = None
    saved: Path = Path()
    after_clean_run: Path = Path()

    def users(self) -> list[str]:
        """The logins of the proxied side, one per mailbox of the plan."""
        return [(s if self.side == "source" else t).name for s, t in self.lab.pairs]

    def write_config(self) -> None:
        # One session pair per mailbox (as many connections as workers): cut points are chosen in a clean
        # run's "first session of a user" and must find that session again when replayed, which folders
        # spread over several session pairs would not give (engine/parallel.py; the kill tests use two).
        extra = (f"{self.config_extra}[throttle.source]\nmax_connections = {self.workers}\n"
                 f"[throttle.target]\nmax_connections = {self.workers}\n")
        if self.side == "source":
            self.lab.write_config(extra, source_port=self.proxy.port)
        else:
            self.lab.write_config(extra, target_port=self.proxy.port)

    def prepare(self) -> None:
        """init + discover + plan (through the proxy), keep a copy of the state store, measure a clean run."""
        self.write_config()
        self.lab.write_mailboxes()
        self.lab.migrator("init", ".")
        self.lab.migrator("discover", "--mailboxes", "mailboxes.csv")
        self.lab.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1")
        self.saved = self._keep_state("state-after-plan")
        self.proxy.reset_counters()
        self.run(expect=0)
        self.proxy.wait_idle()
        self.clean = self.proxy.stats()
        self.after_clean_run = self._keep_state("state-after-clean-run")
        self.lab.assert_exact_copy()

    def _keep_state(self, name: str) -> Path:
        folder = self.lab.project / name
        folder.mkdir()
        for file in STATE_FILES:
            if (self.lab.project / file).exists():
                shutil.copy2(self.lab.project / file, folder / file)
        return folder

    def reset(self) -> None:
        """Empty the target's mailboxes and put the state store back to its copy taken after planning."""
        assert self.proxy.wait_idle(), "a proxied connection is still open"
        target = self.lab.target
        target.stop()
        for _source_user, target_user in self.lab.pairs:
            shutil.rmtree(target.user_home(target_user), ignore_errors=True)
        target.start()  # on another port if its own was taken meanwhile
        if self.side == "target":
            self.proxy.upstream = (target.host, target.port)
        else:
            self.write_config()
        for file in STATE_FILES:
            (self.lab.project / file).unlink(missing_ok=True)
            if (self.saved / file).exists():
                shutil.copy2(self.saved / file, self.lab.project / file)
        self.proxy.reset_counters()

    def run(self, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.lab.migrator("run", PLAN, "--stage", "prestage", "--workers", str(self.workers),
                                 expect=expect, timeout=RUN_TIMEOUT)

    def run_with(self, *faults: Cut | Stall | SwallowAppendReply) -> subprocess.CompletedProcess[str]:
        """One run under these faults, one clean run if it did not finish; then prove the copy exact."""
        self.proxy.set_faults(*faults)
        try:
            first = self.run(expect=None)
        finally:
            self.proxy.clear_faults()
        assert "internal error" not in first.stderr and "Traceback" not in first.stderr, first.stderr
        assert first.returncode in (0, 1, 3), f"exit {first.returncode}\n{first.stdout}\n{first.stderr}"
        self.proxy.wait_idle()
        if first.returncode != 0:
            self.lab.assert_no_duplicates()
            self.run(expect=0)
        self.lab.assert_exact_copy()
        self.lab.migrator("verify", PLAN, "--deep", timeout=RUN_TIMEOUT)
        return first


@contextmanager
def fault_bench(root: Path, side: Side = "target", workers: int = 2) -> Iterator[FaultBench]:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    with running_lab(root, SPEC) as lab:
        server = lab.source if side == "source" else lab.target
        with FaultProxy((server.host, server.port)) as proxy:
            bench = FaultBench(lab, proxy, side, workers)
            bench.prepare()
            yield bench


@pytest.fixture(scope="module")
def module_root() -> Iterator[Path]:
    """Like the lab_root fixture (outside pytest's 0700 tmp tree), shared by this module's tests."""
    root = Path(tempfile.mkdtemp(prefix="migrator-lab-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def target_bench(dovecot: None, module_root: Path) -> Iterator[FaultBench]:
    """One lab with the proxy in front of the target, shared by the target-side tests (each resets it)."""
    with fault_bench(module_root / "target-side") as bench:
        yield bench


CutPoint = tuple[int, Landmark | None]  # bytes after the landmark (or after the session's first byte)


def choose_cut_points(rng: random.Random, session: ConnectionStats, direction: Direction, count: int) -> list[CutPoint]:
    """Points of one session after its login: a third uniform over its bytes, a third a few bytes after any
    line/literal boundary, a third at or a few bytes after an APPEND landmark (c2s: its first byte or just
    after its last CRLF; s2c: its tagged reply)."""
    floor, total = session.identified_at[direction], session.bytes[direction]
    marks = session.marks
    boundaries = [(Landmark("segment", n), offset) for n, offset in enumerate(marks.segments[direction], 1)
                  if offset >= floor]
    if direction == C2S:
        appends = [(Landmark("command", n, "APPEND"), offset) for n, offset in enumerate(marks.append_starts, 1)]
        appends += [(Landmark("command-end", n, "APPEND"), offset) for n, offset in enumerate(marks.append_ends, 1)]
    else:
        appends = [(Landmark("reply", n, "APPEND"), offset) for n, offset in enumerate(marks.append_replies, 1)]
    points: list[CutPoint] = []
    while len(points) < count:
        kind = len(points) % 3
        if kind == 0:
            point: CutPoint = (rng.randrange(floor + 1, total - 64), None)
        else:
            landmark, offset = rng.choice(boundaries if kind == 1 or not appends else appends)
            jitter = rng.choice([0, 0, 1, 2, rng.randint(3, 200)])
            if offset + jitter >= total - 64:
                continue
            point = (jitter, landmark)
        if point not in points:
            points.append(point)
    return points


def exercise_cuts(bench: FaultBench, runs: int, points_per_user_direction: int, rng: random.Random,
                  seed: int) -> dict[str, list[str]]:
    """Each run cuts every mailbox's first session once, one mailbox each way (alternating); per direction,
    a line per cut point saying where it landed and how the run ended."""
    assert bench.clean is not None
    users = bench.users()
    points = {(user, direction): iter(choose_cut_points(rng, bench.clean.first_connection_of(user), direction,
                                                        points_per_user_direction))
              for user in users for direction in (C2S, S2C)}
    outcomes: dict[str, list[str]] = {C2S: [], S2C: []}
    for number in range(runs):
        directions = [(C2S, S2C), (S2C, C2S)][number % 2]
        cuts = []
        for user, direction in zip(users, directions, strict=False):
            after, landmark = next(points[(user, direction)])
            cuts.append(Cut(direction, after, user=user, landmark=landmark))
        bench.reset()
        started = time.monotonic()
        try:
            first = bench.run_with(*cuts)
            assert all(cut.fired for cut in cuts), f"not every cut happened: {cuts}"
        except AssertionError as exc:
            raise AssertionError(f"{bench.side} run {number + 1} with cuts {'; '.join(c.where() for c in cuts)} "
                                 f"(seed {seed}): {exc}") from exc
        for cut in cuts:
            outcomes[cut.direction].append(f"{bench.side} cut {cut.where()}: run exited {first.returncode} "
                                           f"({time.monotonic() - started:.1f}s)")
    return outcomes


def test_fault_proxy_cuts_stalls_and_counts_exactly() -> None:
    """The tool itself: exact byte counts, a cut at exactly N bytes of the chosen connection only, a stall."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(4):
            conn, _addr = listener.accept()
            with conn:
                conn.sendall(b"* OK hello\r\n")
                chunks = []
                while data := conn.recv(65536):
                    chunks.append(data)
                received.append(b"".join(chunks))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    login = b"a1 LOGIN carol secret\r\n"
    payload = login + bytes(range(256)) * 400
    with FaultProxy(listener.getsockname()) as proxy:
        proxy.set_faults(Cut(C2S, 1000, connection=2), Stall(S2C, 4, seconds=0.5, connection=3),
                         Cut(C2S, 2, connection=4, landmark=Landmark("command-end", 1, "LOGIN")))
        for index in (1, 2, 3, 4):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                started = time.monotonic()
                greeting = b""
                while len(greeting) < 12:
                    greeting += client.recv(100)
                assert greeting == b"* OK hello\r\n"
                if index == 3:
                    assert time.monotonic() - started >= 0.45, "the stall did not hold the greeting back"
                try:
                    client.sendall(payload)
                    client.shutdown(socket.SHUT_WR)
                    client.recv(10)
                except OSError:
                    assert index in (2, 4)
            assert proxy.wait_idle()
        server.join(5)
        stats = proxy.stats()
    listener.close()
    sizes = [len(payload), 1000, len(payload), len(login) + 2]
    assert [len(r) for r in received] == sizes
    assert received[1] == payload[:1000] and received[3] == payload[:len(login) + 2]
    assert [c.bytes[C2S] for c in stats.connections] == sizes
    assert stats.bytes == {C2S: sum(sizes), S2C: 48}
    assert [c.ended_by for c in stats.connections] == ["eof", "cut", "eof", "cut"]
    assert [c.user for c in stats.connections] == ["carol"] * 4
    assert stats.marks.commands["LOGIN"] == [0, len(payload), len(payload) + 1000, 2 * len(payload) + 1000]


def test_connection_cut_at_random_points_loses_and_duplicates_nothing(target_bench: FaultBench,
                                                                      module_root: Path) -> None:
    """20+ cut points per direction between migrator and the target, each run from an empty target. A second
    lab takes half of the runs in parallel: much of a run is the pass's back-off sleep, so two cores do twice
    the work."""
    seed = fault_seed()
    assert target_bench.clean is not None
    print(f"clean run: {target_bench.clean.bytes}, {len(target_bench.clean.connections)} connections, "
          f"{target_bench.clean.append_commands} APPEND commands")
    started = time.monotonic()
    runs = [CUTS_PER_DIRECTION // 2, CUTS_PER_DIRECTION - CUTS_PER_DIRECTION // 2]

    def half(index: int) -> dict[str, list[str]]:
        rng = random.Random(f"{seed}-target-cuts-{index}")
        if index == 0:
            return exercise_cuts(target_bench, runs[0], (runs[0] + 1) // 2, rng, seed)
        with fault_bench(module_root / "target-side-2") as bench:
            return exercise_cuts(bench, runs[1], (runs[1] + 1) // 2, rng, seed)

    with ThreadPoolExecutor(max_workers=2) as pool:
        halves = [future.result() for future in [pool.submit(half, index) for index in (0, 1)]]
    for direction in (C2S, S2C):
        lines = [line for outcome in halves for line in outcome[direction]]
        print(f"{len(lines)} {direction} cut points:")
        print("\n".join(f"  {line}" for line in lines))
        assert len(lines) >= CUTS_PER_DIRECTION
    print(f"cut points exercised in {time.monotonic() - started:.0f}s")


def settled_copies(project: Path) -> int:
    """Copies that a resumed pass found already on the target (APPENDs whose reply was lost)."""
    with sqlite3.connect(project / "migrator.db") as conn:
        messages = [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = 'settled'")]
    return sum(int(match.group(1)) for m in messages if (match := re.search(r"(\d+) open copies found", m)))


def test_swallowed_append_replies_leave_an_exact_copy(target_bench: FaultBench) -> None:
    """The server stored the APPEND, the client never heard: four times in one run, both mailboxes copying."""
    seed = fault_seed()
    rng = random.Random(f"{seed}-swallow")
    assert target_bench.clean is not None
    replies = target_bench.clean.append_replies
    ordinals = sorted(rng.sample(range(1, replies + 1), 4))
    target_bench.reset()
    swallow = SwallowAppendReply(ordinals)
    first = target_bench.run_with(swallow)
    print(f"swallowed APPEND replies {ordinals} of {replies}: {[line.strip() for line in swallow.swallowed]}")
    assert len(swallow.swallowed) == len(ordinals), (seed, swallow.swallowed)
    assert any(b" OK " in line for line in swallow.swallowed)
    assert first.returncode == 0, f"four lost replies are within a pass's retries (seed {seed})\n{first.stderr}"
    assert settled_copies(target_bench.lab.project) > 0, "no swallowed APPEND was settled from the target"


def test_stall_longer_than_the_timeout_recovers(target_bench: FaultBench) -> None:
    """With `timeout = 2`: one mailbox's server falls silent at an APPEND reply for good, the other's
    client->server bytes stop for 5 s in mid-copy."""
    seed = fault_seed()
    rng = random.Random(f"{seed}-stall")
    assert target_bench.clean is not None
    first_user, second_user = target_bench.users()
    replies = len(target_bench.clean.first_connection_of(first_user).marks.append_replies)
    held = target_bench.clean.first_connection_of(second_user)
    silent_at = Landmark("reply", rng.randint(1, replies), "APPEND")
    stalls = [Stall(S2C, 0, seconds=None, user=first_user, landmark=silent_at),
              Stall(C2S, rng.randrange(held.identified_at[C2S] + 1, held.bytes[C2S] - 64), seconds=5.0,
                    user=second_user)]
    target_bench.config_extra = "timeout = 2\n"  # lands in [target]
    target_bench.reset()
    target_bench.write_config()
    try:
        started = time.monotonic()
        first = target_bench.run_with(*stalls)
    finally:
        target_bench.config_extra = ""
        target_bench.write_config()
    print(f"stalls {'; '.join(stall.where() for stall in stalls)}: exit {first.returncode} "
          f"after {time.monotonic() - started:.1f}s")
    assert all(stall.fired for stall in stalls), stalls
    assert first.returncode == 0, f"a stall is a transient fault that the pass retries (seed {seed})\n{first.stderr}"


def target_folders_created_by_us(state_dir: Path) -> dict[tuple[int, str], int]:
    with sqlite3.connect(state_dir / "migrator.db") as conn:
        rows = conn.execute("SELECT mailbox_id, path, created_by_us FROM target_folder").fetchall()
    return {(mailbox, path): created for mailbox, path, created in rows}


def test_folder_whose_create_reply_was_lost_is_still_recorded_as_ours(target_bench: FaultBench) -> None:
    """The server created the folder, the reply never came; the retry finds the folder there already. Rollback
    removes only what migrator created, so the ledger must still say that migrator created it."""
    assert target_bench.clean is not None
    user = target_bench.users()[0]
    target_bench.reset()
    cut = Cut(S2C, 0, user=user, landmark=Landmark("reply", 1, "CREATE"))
    target_bench.run_with(cut)  # the copy itself is exact
    assert cut.fired
    clean = target_folders_created_by_us(target_bench.after_clean_run)
    assert sum(clean.values()) >= 6, "the clean run created the corpus folders"
    after_cut = target_folders_created_by_us(target_bench.lab.project)
    wrong = {key: created for key, created in after_cut.items() if created != clean.get(key)}
    assert not wrong, f"created_by_us differs from a clean run: {wrong}"


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ", re.MULTILINE)


def test_a_dropped_connection_adds_no_log_lines_without_verbose(target_bench: FaultBench) -> None:
    """README: errors are one line on stderr, `-v` adds protocol logging. A connection that drops while the
    preflight probe logs out harms nothing: `check` succeeds, and prints nothing on stderr."""
    assert target_bench.clean is not None
    probe = target_bench.clean.connections[0]
    assert probe.user is None and "LOGOUT" in probe.marks.commands, "connection 1 of a run is the target probe"
    target_bench.proxy.reset_counters()
    cut = Cut(C2S, 1, connection=1, landmark=Landmark("command", 1, "LOGOUT"))  # one byte of LOGOUT gets through
    target_bench.proxy.set_faults(cut)
    try:
        result = target_bench.lab.migrator("check", timeout=RUN_TIMEOUT)
    finally:
        target_bench.proxy.clear_faults()
    assert cut.fired
    assert not LOG_LINE.search(result.stderr), f"log lines on stderr without -v:\n{result.stderr}"


def test_copies_settled_after_a_lost_reply_are_counted_as_copied(target_bench: FaultBench) -> None:
    """One swallowed APPEND reply: every message is on the target once, so `status` must say all were copied."""
    target_bench.reset()
    swallow = SwallowAppendReply({1})
    target_bench.proxy.set_faults(swallow)
    try:
        target_bench.run(expect=0)
    finally:
        target_bench.proxy.clear_faults()
    assert swallow.swallowed
    target_bench.lab.assert_exact_copy()
    expected = sum(len(messages) for source, _target in target_bench.lab.snapshots() for messages in source.values())
    status = json.loads(target_bench.lab.migrator("status", "--json").stdout)
    copied = sum(job["copied"] for job in status["jobs"])
    assert copied == expected, f"status says {copied} messages copied; the target holds all {expected}"


@contextmanager
def logged_in(server: DovecotServer, user: LabUser) -> Iterator[IMAPClient]:
    client = IMAPClient(server.host, server.port, ssl=False, timeout=30)
    try:
        client.login(user.name, user.password)
        yield client
        client.logout()
    except BaseException:
        client.shutdown()
        raise


def test_delta_pass_with_lost_store_and_append_replies(target_bench: FaultBench) -> None:
    """After a full copy, flags change and mail arrives on the source; during the delta pass the server's reply
    to the flag STORE (one mailbox) and to the APPEND of the new mail (the other) never arrive.
    Changes the source: keep this the last test on the shared bench."""
    target_bench.reset()
    target_bench.run(expect=0)
    (alice, _), (bob, _) = target_bench.lab.pairs
    source = target_bench.lab.source
    with logged_in(source, alice) as client:
        client.select_folder("INBOX")
        uids = client.search("ALL")
        client.add_flags(uids[:3], [b"\\Flagged", b"$Delta"])
        client.remove_flags(uids[-2:], [b"\\Seen"])
    with logged_in(source, bob) as client:
        client.append("INBOX", b"Subject: arrived after the prestage\r\n\r\nnew mail\r\n", flags=[b"\\Seen"])
    first_user, second_user = target_bench.users()
    cuts = [Cut(S2C, 0, user=first_user, landmark=Landmark("reply", 1, "UID STORE")),
            Cut(S2C, 0, user=second_user, landmark=Landmark("reply", 1, "APPEND"))]
    target_bench.proxy.reset_counters()  # sessions count from here
    target_bench.proxy.set_faults(*cuts)
    try:
        first = target_bench.lab.migrator("run", PLAN, "--stage", "delta", expect=None, timeout=RUN_TIMEOUT)
    finally:
        target_bench.proxy.clear_faults()
    assert all(cut.fired for cut in cuts), cuts
    assert first.returncode in (0, 1), first.stderr
    if first.returncode:
        target_bench.lab.migrator("run", PLAN, "--stage", "delta", timeout=RUN_TIMEOUT)
    target_bench.lab.assert_exact_copy()
    target_bench.lab.migrator("verify", PLAN, "--deep", timeout=RUN_TIMEOUT)


def test_source_connection_cuts_lose_and_duplicate_nothing(dovecot: None, module_root: Path) -> None:
    """The same between migrator and the SOURCE: cuts while listing and while fetching bodies."""
    seed = fault_seed()
    rng = random.Random(f"{seed}-source-cuts")
    with fault_bench(module_root / "source-side", side="source") as bench:
        outcomes = exercise_cuts(bench, SOURCE_CUTS_PER_DIRECTION, (SOURCE_CUTS_PER_DIRECTION + 1) // 2, rng, seed)
    for lines in outcomes.values():
        print("\n".join(lines))
    assert all(len(lines) >= SOURCE_CUTS_PER_DIRECTION for lines in outcomes.values())
