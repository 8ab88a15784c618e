"""The built wheel works on its own: installed in a fresh venv, `migrator db upgrade` finds its migrations."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from migrator.store.db import migrations_dir

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str | Path], cwd: Path, env: dict[str, str],
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def test_installed_wheel_upgrades_a_store(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, REPO], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("migrator-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", wheel], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import migrator; print(migrator.__file__)"], cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"migrator imported from {where}, not the wheel"

    project = tmp_path / "project"
    project.mkdir()
    config = project / "migrator.toml"
    config.write_text("""\
[state]
url = "sqlite:///state/migrator.db"

[source]
kind = "imap"
host = "127.0.0.1"
port = 1143
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = 2143
security = "none"
""", encoding="utf-8")
    (project / "state").mkdir()
    migrator = venv / "bin" / "migrator"
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head

    first = run([migrator, "db", "upgrade", "--config", config], cwd=elsewhere, env=env)
    assert f"state store at {head}" in first.stdout and "was empty" in first.stdout
    database = project / "state" / "migrator.db"
    assert database.is_file(), "the SQLite path is relative to the config file, not the current directory"
    assert not (elsewhere / "state").exists()
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    assert {"ledger", "job", "mailbox", "alembic_version"} <= tables
    assert versions == [head]

    again = run([migrator, "db", "upgrade", "--config", config], cwd=elsewhere, env=env)
    assert "already current" in again.stdout
