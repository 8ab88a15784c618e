"""Real Dovecot pairs for tests: a source (Maildir, "." separator) and an Exchange-like target (sdbox, "/").

`Lab` drives the real `migrator` command in a subprocess, exactly as an engineer would, and compares
what the servers hold, message by message (SHA-256 of the bytes, flags, INTERNALDATE).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec, load_corpus, mailbox_snapshot
from migrator.lab.dovecot import DovecotServer, LabUser, ensure_dovecot_installed

Snapshot = dict[str, list[tuple[str, frozenset[str], object]]]

# The target's names for the source's special folders (TESTING.md: an Exchange-style target).
ROLE_NAMES = {"Sent": "Sent Items", "Trash": "Deleted Items", "Junk": "Junk Email"}


def expected_target_folder(source_folder: str) -> str:
    parts = source_folder.split(".")
    parts[0] = ROLE_NAMES.get(parts[0], parts[0])
    return "/".join(parts)


def store_dump(project: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(project / "migrator.db") as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for table in tables}


@dataclass
class Project:
    """A project folder and the real `migrator` command run in it, as an engineer would."""

    project: Path
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "migrator", *args]

    def migrator(self, *args: str, expect: int | None = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), cwd=self.project, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **self.env})
        if expect is not None:
            assert result.returncode == expect, (
                f"migrator {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result


@dataclass
class Lab(Project):
    source: DovecotServer = field(kw_only=True)
    target: DovecotServer = field(kw_only=True)
    pairs: list[tuple[LabUser, LabUser]] = field(kw_only=True)
    config_extra: str = ""
    busy_timeout: float | None = None

    def write_config(self, extra: str = "", source_port: int | None = None, target_port: int | None = None) -> None:
        (self.project / "migrator.toml").write_text(f"""
[state]
url = "sqlite:///migrator.db"
{f"busy_timeout = {self.busy_timeout}" if self.busy_timeout else ""}

[source]
kind = "imap"
host = "127.0.0.1"
port = {source_port or self.source.port}
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = {target_port or self.target.port}
security = "none"
{extra}
""", encoding="utf-8")

    def write_mailboxes(self, *, wrong_password_for: str | None = None) -> None:
        lines = ["source,target,source_login,source_password,target_login,target_password"]
        for src, dst in self.pairs:
            password = "wrong" if src.name == wrong_password_for else src.password
            lines.append(f"{src.name}@old.example,{dst.name}@new.example,{src.name},{password},{dst.name},{dst.password}")
        (self.project / "mailboxes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def prepare(self) -> None:
        """init, discover and a plan with one mailbox per batch: the state every run test starts from."""
        self.write_config(self.config_extra)
        self.write_mailboxes()
        self.migrator("init", ".")
        self.migrator("discover", "--mailboxes", "mailboxes.csv")
        self.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1")

    def snapshots(self) -> list[tuple[Snapshot, Snapshot]]:
        return [(mailbox_snapshot(self.source.host, self.source.port, s.name, s.password),
                 mailbox_snapshot(self.target.host, self.target.port, t.name, t.password)) for s, t in self.pairs]

    def assert_exact_copy(self) -> None:
        """Every source message exactly once in its mapped folder: same bytes, flags, date; nothing else."""
        for source, target in self.snapshots():
            for folder, messages in source.items():
                mapped = expected_target_folder(folder)
                assert Counter(target.get(mapped, [])) == Counter(messages), f"{folder} -> {mapped} differs"
            expected = {expected_target_folder(f) for f in source}
            strays = {f: len(m) for f, m in target.items() if f not in expected and m}
            assert not strays, f"messages in unexpected target folders: {strays}"

    def assert_no_duplicates(self) -> None:
        """Mid-migration invariant: the target never holds a message more often than the source does."""
        for source, target in self.snapshots():
            for folder, messages in source.items():
                have = Counter(target.get(expected_target_folder(folder), []))
                extra = have - Counter(messages)
                assert not extra, f"{folder}: {sum(extra.values())} duplicated or foreign messages on the target"


SOURCE_USERS = [LabUser("alice", "alice-source-pw"), LabUser("bob", "bob-source-pw")]
TARGET_USERS = [LabUser("alice2", "alice-target-pw"), LabUser("bob2", "bob-target-pw")]


@pytest.fixture(scope="session")
def dovecot() -> None:
    ensure_dovecot_installed()


def start_lab(root: Path, spec: CorpusSpec, source_options: Mapping[str, object] | None = None,
              **target_options: object) -> tuple[DovecotServer, DovecotServer]:
    source = DovecotServer(root=root / "source", name="source", layout="source", users=SOURCE_USERS,
                           **(source_options or {}))  # type: ignore[arg-type]
    target = DovecotServer(root=root / "target", name="target", layout="target", users=TARGET_USERS,
                           **target_options)  # type: ignore[arg-type]
    source.start()
    try:
        target.start()
        for index, user in enumerate(SOURCE_USERS):
            load_corpus(source.host, source.port, user, CorpusSpec(spec.messages_per_mailbox, spec.large_attachments,
                                                                   spec.include_cpython_samples, spec.seed + index))
    except BaseException:
        source.stop()
        target.stop()
        raise
    return source, target


@pytest.fixture
def lab_root() -> Iterator[Path]:
    """Server files live outside pytest's tmp tree: pytest keeps /tmp/pytest-of-<user> at mode 0700 (and
    resets it when another session starts), which Dovecot's unprivileged processes cannot traverse."""
    root = Path(tempfile.mkdtemp(prefix="migrator-lab-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_lab(root: Path, spec: CorpusSpec, config_extra: str = "",
                source_options: Mapping[str, object] | None = None, **target_options: object) -> Iterator[Lab]:
    """Both servers started with the corpus loaded, a project folder, everything stopped afterwards."""
    source, target = start_lab(root, spec, source_options, **target_options)
    project = root / "project"
    project.mkdir()
    try:
        yield Lab(project, source=source, target=target, pairs=list(zip(SOURCE_USERS, TARGET_USERS, strict=True)),
                  config_extra=config_extra)
    finally:
        source.stop()
        target.stop()


@pytest.fixture
def lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    """A source with a generated corpus (two users), an empty Exchange-like target, a project folder."""
    with running_lab(lab_root, CorpusSpec(messages_per_mailbox=40, large_attachments=1)) as running:
        yield running
