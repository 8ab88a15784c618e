"""Demo: migrate three generated mailboxes between two private Dovecot servers, then prove the copy.

The source logs users in with their own passwords (from mailboxes.csv); the target uses an admin
(a Dovecot master user) logging in on behalf of every user, with its password in an environment
variable, as a migration engineer would set it up. Everything lives under demo-run/ and the servers
are stopped (by pid) when the demo ends, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from migrator.lab.corpus import CorpusSpec, load_corpus
from migrator.lab.dovecot import DovecotServer, LabUser, ensure_dovecot_installed

ROOT = Path(__file__).resolve().parent.parent / "demo-run"
NAMES = ("alice", "bob", "carol")


def migrator(project: Path, *args: str, env: dict[str, str]) -> None:
    print(f"\n$ migrator {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=project, env=env)
    print(f"  (exit {result.returncode}, {time.monotonic() - started:.1f}s)", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo failed at `migrator {' '.join(args)}` (exit {result.returncode})")


def main() -> None:
    started = time.monotonic()
    ensure_dovecot_installed()
    shutil.rmtree(ROOT, ignore_errors=True)
    source_users = [LabUser(name, f"{name}-source-secret") for name in NAMES]
    target_users = [LabUser(name, f"{name}-target-secret") for name in NAMES]
    admin = LabUser("migration-admin", "admin-target-secret")
    source = DovecotServer(root=ROOT / "source", name="demo-source", layout="source", users=source_users)
    target = DovecotServer(root=ROOT / "target", name="demo-target", layout="target", users=target_users,
                           master=admin)
    with source, target:
        print(f"source: Dovecot on 127.0.0.1:{source.port} (Maildir, '.' separator)")
        print(f"target: Dovecot on 127.0.0.1:{target.port} (sdbox, '/' separator, Exchange-style folder names)")
        for index, user in enumerate(source_users):
            summary = load_corpus(source.host, source.port, user, CorpusSpec(messages_per_mailbox=80, seed=index + 1))
            print(f"corpus: {user.name}: {summary.messages} messages, {summary.bytes / 1e6:.1f} MB "
                  f"in {len(summary.folders)} folders")
        project = ROOT / "project"
        project.mkdir(parents=True)
        (project / "migrator.toml").write_text(f"""\
[state]
url = "sqlite:///migrator.db"

[source]
kind = "imap"
host = "127.0.0.1"
port = {source.port}
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = {target.port}
security = "none"
admin_user = "{admin.name}"
admin_password_env = "DEMO_TARGET_ADMIN_PASSWORD"

[throttle.target]
max_connections = 2
""", encoding="utf-8")
        rows = [f"{u.name}@old.example,{u.name}@new.example,{u.name},{u.password},{u.name}" for u in source_users]
        (project / "mailboxes.csv").write_text("source,target,source_login,source_password,target_login\n"
                                               + "\n".join(rows) + "\n", encoding="utf-8")
        env = {**os.environ, "DEMO_TARGET_ADMIN_PASSWORD": admin.password}
        for args in (["init", "."], ["check"], ["discover", "--mailboxes", "mailboxes.csv"],
                     ["plan", "create", "--name", "wave1", "--max-mailboxes", "2"],
                     ["plan", "show", "plans/wave1.yaml"],
                     ["run", "plans/wave1.yaml", "--stage", "prestage"], ["verify", "plans/wave1.yaml", "--deep"],
                     ["run", "plans/wave1.yaml", "--stage", "delta"], ["status"]):
            migrator(project, *args, env=env)
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; project left in {project} "
          f"(servers stopped)")


if __name__ == "__main__":
    main()
