"""Interrupt at every step (mbsync's method), on a fresh lab each time, and resume.

A step is a ledger commit or a target write that returned (the checkpoint module's crash hook). For each
scenario the steps are counted on a clean run, then for each chosen k: fresh servers and state, crash
right after step k (SIGKILL from inside), resume, and check that each source message is on the target
exactly once, byte-identical, with its flags and internal date; a further run must change nothing.

CI runs a spread of k values per scenario; `MIGRATOR_FULL_SWEEP=1 scripts/test -k crash_sweep` runs every k.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

from migrator.lab.corpus import CorpusSpec
from migrator.lab.dovecot import CONDSTORE_ONLY_CAPABILITIES
from tests.imap_fixtures import Lab, expected_target_folder, running_lab
from tests.test_contract_imap import PLAIN_CAPABILITIES

TINY = CorpusSpec(messages_per_mailbox=6, large_attachments=0, include_cpython_samples=False)
SPREAD = 8


def source_client(lab: Lab) -> IMAPClient:
    user = lab.pairs[0][0]
    client = IMAPClient(lab.source.host, lab.source.port, ssl=False)
    client.login(user.name, user.password)
    return client


def change_flags_and_add(lab: Lab) -> None:
    with source_client(lab) as client:
        for folder in ("INBOX", "Projects.2026", "Références"):
            client.select_folder(folder)
            uids = sorted(client.search("ALL"))
            client.set_flags(uids[:2], [b"\\Seen", b"$Forwarded"])
            client.append(folder, f"From: x@old.example\r\nSubject: new in {folder}\r\n\r\nnew\r\n".encode(),
                          (b"\\Flagged",))


def refile(client: IMAPClient, source: str, destination: str, count: int | None = None) -> None:
    """Append to `destination` the first `count` messages of `source` (all by default): same bytes, flags
    (but \\Recent, which no client may set) and date."""
    client.select_folder(source, readonly=True)
    fetched = client.fetch(sorted(client.search("ALL"))[:count], [b"BODY.PEEK[]", b"FLAGS", b"INTERNALDATE"])
    for data in list(fetched.values()):
        flags = [flag for flag in data[b"FLAGS"] if flag != b"\\Recent"]
        client.append(destination, data[b"BODY[]"], flags, data[b"INTERNALDATE"])


MERGED = {"Projects.2026": "INBOX"}  # [mapping] folders of the merge scenarios


def duplicate_into_merged(lab: Lab) -> None:
    """Two INBOX messages also in Projects.2026: the merged target folder gets two identical copies."""
    with source_client(lab) as client:
        refile(client, "INBOX", "Projects.2026", 2)


def cross_deliver_merged(lab: Lab) -> None:
    """New mail arrives during the outage: each of the two merged folders gets a copy of every message of
    the other (a message delivered twice and filed twice is common), so that on resume a folder whose
    open intents are settled meets the other folder's new, identical copies made by the same pass."""
    with source_client(lab) as client:
        client.select_folder("INBOX", readonly=True)
        inbox = len(client.search("ALL"))
        refile(client, "Projects.2026", "INBOX")
        refile(client, "INBOX", "Projects.2026", inbox)


def delete_some(lab: Lab) -> None:
    with source_client(lab) as client:
        for folder in ("INBOX", "Sent", "Привет мир"):
            client.select_folder(folder)
            client.delete_messages(sorted(client.search("ALL"))[:2])
            client.expunge()


def change_and_delete(lab: Lab) -> None:
    change_flags_and_add(lab)
    delete_some(lab)


@dataclass(frozen=True)
class Scenario:
    name: str
    stage_args: tuple[str, ...]
    before: Callable[[Lab], None] | None = None
    target_options: tuple[tuple[str, object], ...] = ()
    source_options: tuple[tuple[str, object], ...] = ()
    keeps_deleted: bool = False
    setup: Callable[[Lab], None] | None = None  # on the source, before discovery
    folders: dict[str, str] | None = None  # [mapping] folders
    outage: Callable[[Lab], None] | None = None  # on the source, between the crash and the resume


SCENARIOS = [
    Scenario("prestage", ("--stage", "prestage")),
    Scenario("prestage-no-uidplus", ("--stage", "prestage"), target_options=(("capabilities", PLAIN_CAPABILITIES),)),
    Scenario("delta-flags-and-new", ("--stage", "delta"), before=change_flags_and_add),
    Scenario("delta-sync-deletes", ("--stage", "delta", "--sync-deletes"), before=delete_some),
    Scenario("delta-keep-deletes", ("--stage", "delta"), before=delete_some, keeps_deleted=True),
    # A source of CONDSTORE alone: what changed comes from CHANGEDSINCE, what was deleted from the UIDs left.
    Scenario("delta-condstore-source", ("--stage", "delta", "--sync-deletes"), before=change_and_delete,
             source_options=(("capabilities", CONDSTORE_ONLY_CAPABILITIES),)),
    Scenario("prestage-merged-folders", ("--stage", "prestage"), setup=duplicate_into_merged, folders=MERGED),
    Scenario("prestage-merged-mail-arrives", ("--stage", "prestage"), folders=MERGED, outage=cross_deliver_merged),
]


@contextmanager
def prepared(root: Path, scenario: Scenario) -> Iterator[Lab]:
    """Fresh servers and state, one mailbox, planned, and (for delta scenarios) copied once and changed."""
    mapping = "".join(f'"{source}" = "{target}"\n' for source, target in (scenario.folders or {}).items())
    with running_lab(root, TINY, config_extra=f"[mapping.folders]\n{mapping}" if mapping else "",
                     source_options=dict(scenario.source_options), **dict(scenario.target_options)) as lab:
        lab.pairs = lab.pairs[:1]
        if scenario.setup is not None:
            scenario.setup(lab)
        lab.prepare()
        if scenario.before is not None:
            lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
            scenario.before(lab)
        yield lab


def run_counting_steps(lab: Lab, scenario: Scenario, steps_file: Path) -> int:
    lab.env.update({"MIGRATOR_TEST_MODE": "1", "MIGRATOR_TEST_STEPS_FILE": str(steps_file)})
    lab.migrator("run", "plans/wave1.yaml", *scenario.stage_args, "--workers", "1")
    return int(steps_file.read_text())


def mapped_folder(folder: str, folders: dict[str, str]) -> str:
    """Where [mapping] folders puts a source folder: a mapped folder's subfolders move with it."""
    for source, target in folders.items():
        if folder == source or folder.startswith(source + "."):
            return "/".join([target, *folder[len(source):].split(".")[1:]])
    return expected_target_folder(folder)


def check(lab: Lab, scenario: Scenario) -> tuple[int, int]:
    """(lost, duplicated) messages, comparing each target folder with the source folders mapped to it."""
    lost = duplicated = 0
    for source, target in lab.snapshots():
        wanted: dict[str, Counter[object]] = {}
        for folder, messages in source.items():
            mapped = mapped_folder(folder, scenario.folders or {})
            wanted.setdefault(mapped, Counter()).update(messages)
        for mapped, want in wanted.items():
            have = Counter(target.get(mapped, []))
            lost += sum((want - have).values())
            extra = have - want
            duplicated += sum(extra.values()) if not scenario.keeps_deleted else sum(
                count - 1 for count in extra.values() if count > 1)
    return lost, duplicated


def settled_copies(project: Path) -> int:
    with sqlite3.connect(project / "migrator.db") as conn:
        messages = [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = 'settled'")]
    return sum(int(m.group(1)) for m in (re.search(r": (\d+) open copies found", x) for x in messages) if m)


def chosen_steps(total: int, seed: int) -> list[int]:
    if os.environ.get("MIGRATOR_FULL_SWEEP") == "1" or total <= SPREAD:
        return list(range(1, total + 1))
    rng = random.Random(seed)
    fixed = {1, 2, 3, total // 2, total - 1, total}
    return sorted(fixed | set(rng.sample(range(1, total + 1), max(0, SPREAD - len(fixed)))))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_crash_at_step_k_then_resume(scenario: Scenario, dovecot: None, lab_root: Path) -> None:
    with prepared(lab_root / "count", scenario) as counting:
        total = run_counting_steps(counting, scenario, lab_root / "steps")
    seed = int(os.environ.get("MIGRATOR_KILL_SEED", "7"))
    found_on_resume = 0
    crashed_at = []
    for k in chosen_steps(total, seed):
        with prepared(lab_root / f"k{k}", scenario) as lab:
            lab.env.update({"MIGRATOR_TEST_MODE": "1", "MIGRATOR_TEST_CRASH_AT": str(k)})
            crashed = lab.migrator("run", "plans/wave1.yaml", *scenario.stage_args, "--workers", "1", expect=None)
            assert crashed.returncode == -9, f"step {k} of {total} did not crash: {crashed.stderr}"
            del lab.env["MIGRATOR_TEST_CRASH_AT"]
            if scenario.outage is not None:
                scenario.outage(lab)
            lab.migrator("run", "plans/wave1.yaml", *scenario.stage_args)
            lost, duplicated = check(lab, scenario)
            assert (lost, duplicated) == (0, 0), f"{scenario.name}: crash at step {k}/{total}: lost {lost}, " \
                                                 f"duplicated {duplicated}"
            again = lab.migrator("run", "plans/wave1.yaml", *scenario.stage_args)
            assert "copied 0 messages" in again.stdout and ", 0 flag updates, 0 deletions" in again.stdout
            found_on_resume += settled_copies(lab.project)
            crashed_at.append(k)
    if scenario.before is None:
        assert found_on_resume > 0, "no chosen step fell between an APPEND and its done row"
    print(f"\n{scenario.name}: {total} steps, crashed at {crashed_at}: lost 0, duplicated 0, "
          f"{found_on_resume} copies found by settling after a crash")
