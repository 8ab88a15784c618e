"""Private, throwaway Dovecot IMAP servers on 127.0.0.1 for tests and demos.

Why real servers: the hard parts of a migration (modified UTF-7 names, separators, special-use
folders, INTERNALDATE and keyword round trips, quota refusals, UIDVALIDITY changes, connection
limits, TLS) only show up against a real IMAP implementation; mocks would encode our own guesses.

Why these settings (the facts behind them are collected in the design notes, TESTING.md):

* Every server is standalone (no /etc/dovecot include) with its own ``base_dir``, ``state_dir``,
  ``instance_name`` and log, so several pairs can run side by side (parallel tests) and never touch a
  system Dovecot.  ``base_dir`` holds UNIX sockets, whose paths are limited to ~107 bytes, so a short
  directory under the system temp dir is used when ``root`` is deep (pytest's ``tmp_path`` often is).
* Dovecot refuses to store mail as root, hence the ``vmail`` system user; its auth process runs as
  ``dovecot`` and must traverse every directory up to the passwd file, hence the 0755 walk.
* ``mail_fsync = never``: these servers hold disposable data and fsync dominates APPEND latency.
  Benchmarks made with this lab measure a server that does not fsync.
* ``ssl = no`` requires ``disable_plaintext_auth = no``; the ``imaps`` listener gets port 0 unless
  ``tls=True`` because 993 is privileged and shared.
* The *source* layout is Maildir++ with "." as separator; the *target* layout is sdbox with "/" and
  Exchange-style special folders, so folder mapping (separators, dots inside names, renamed
  special-use folders) is always exercised.  Special-use folders are ``auto = subscribe``, as
  Exchange always has them.
* Dovecot 2.3 sends special-use attributes (``\\Sent`` ...) in the answer to a plain
  ``LIST "" "*"`` too, not only with ``RETURN (SPECIAL-USE)``; the lab tests rely on that.
* Dovecot 2.3 has no UTF8=ACCEPT: folder names are modified UTF-7 on the wire.
* Failed logins: Dovecot delays them 2 s, growing to 15 s per client IP, and every lab client is
  127.0.0.1, so one wrong-password test would slow down all later ones.  Unless ``auth_penalty=True``
  the delay and the per-IP penalty are switched off (a failure then takes ~0.5 s).
* Stopping: on SIGTERM the master closes its listeners and ends the mail processes at once, then
  sleeps a hard-coded second for its log process; ``stop()`` waits for the mail processes only.
* ``doveadm mailbox update --uid-validity`` is seen by new sessions; a session that already had the
  folder open can keep reporting the old UIDVALIDITY, even after a fresh SELECT.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from migrator.lab.common import (
    install_lock,
    run,
    run_steps,
    spawn,
    start_retrying_ports,
    track,
    untrack,
    wait_until_ready,
)

__all__ = [
    "DoveadmError",
    "DovecotServer",
    "LabUser",
    "ensure_dovecot_installed",
    "free_port",
]

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
VMAIL_USER = "vmail"
START_TIMEOUT = 20.0
# Dovecot's own CAPABILITY list (``capabilities=``) without QRESYNC: CONDSTORE alone, as Gmail offers it. A
# client can ask what changed since a cursor, but is not told what was expunged (no VANISHED).
CONDSTORE_ONLY_CAPABILITIES = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE MULTIAPPEND UNSELECT CHILDREN "
                               "NAMESPACE UIDPLUS LIST-EXTENDED CONDSTORE ESEARCH LIST-STATUS MOVE LITERAL+ "
                               "SPECIAL-USE")
# Longest socket path Dovecot creates below base_dir is ~30 bytes ("token-login/tokenlogin", ...);
# sun_path holds 107 bytes plus NUL.
_MAX_BASE_DIR_LEN = 70

Layout = Literal["source", "target"]
# Process titles (suffixes) of Dovecot services that hold no mail data; see _await_shutdown.
_HARMLESS_PROCESSES = ("/log", "/imap-login", "/anvil", "/config", "/stats", "/auth")


@dataclass(frozen=True)
class LabUser:
    name: str
    password: str


class DoveadmError(subprocess.CalledProcessError):
    """A failed doveadm call whose message includes what doveadm printed."""

    def __str__(self) -> str:
        out = (self.stderr or "").strip() or (self.stdout or "").strip()
        return f"{super().__str__()}: {out}" if out else super().__str__()


# --------------------------------------------------------------------------------------------------
# installation


def ensure_dovecot_installed() -> None:
    """Install Dovecot from the distribution (CI machines lack it) and create the ``vmail`` user.

    Serialised with a file lock, because parallel test workers all call this at start-up and apt and
    useradd do not tolerate concurrent runs.
    """
    with install_lock():
        _install_packages()
        _ensure_vmail_user()


def _install_packages() -> None:
    packages = []
    if not DOVECOT.exists() or not DOVEADM.exists():
        packages += ["dovecot-imapd", "dovecot-core"]
    if shutil.which("openssl") is None:
        packages.append("openssl")
    if not packages:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"Dovecot lab needs {', '.join(packages)} installed; run as root to install them")
    failure = run_steps([["apt-get", "update"], ["apt-get", "install", "-y", *packages]])
    if failure:
        raise RuntimeError(f"cannot install Dovecot: {failure}")
    if not DOVECOT.exists():
        raise RuntimeError(f"apt-get install dovecot-imapd succeeded but {DOVECOT} is still missing")


def _ensure_vmail_user() -> None:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(VMAIL_USER)
        return
    res = run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            VMAIL_USER,
        ]
    )
    try:
        pwd.getpwnam(VMAIL_USER)
    except KeyError:
        raise RuntimeError(
            f"cannot create system user {VMAIL_USER!r}: useradd exited {res.returncode}: {res.stderr.strip()}"
        ) from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------------
# layouts

_SPECIAL: dict[Layout, list[tuple[str, str]]] = {
    "source": [("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk")],
    "target": [
        ("Sent Items", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Deleted Items", "\\Trash"),
        ("Junk Email", "\\Junk"),
        ("Archive", "\\Archive"),
    ],
}
_SEPARATOR: dict[Layout, str] = {"source": ".", "target": "/"}
_MAIL_LOCATION: dict[Layout, tuple[str, str]] = {
    # (driver, directory under the user's home)
    "source": ("maildir", "Maildir"),
    "target": ("sdbox", "sdbox"),
}


class DovecotServer:
    """One private Dovecot instance; ``start()``/``stop()`` or use it as a context manager.

    ``root`` is a directory the server owns (config, passwd files, logs, mail under ``home/``).
    ``layout`` picks the mail storage, separator and special-use folders (see the module notes).
    ``master`` adds a master user: ``plain_login(master, pw, authorization_identity=user)`` or LOGIN
    as ``user*master``.  ``tls=True`` makes a throwaway CA (``ca_file``) and serves STARTTLS on
    ``port`` and implicit TLS on ``tls_port``.  ``capabilities`` replaces the advertised
    CAPABILITY list (the commands keep working).  ``quota`` ("200K") and ``max_mail_size`` ("1M")
    enable the quota plugin; APPENDs are then refused with ``[OVERQUOTA]`` or ``[LIMIT]``.
    ``extra_config`` is appended to the generated config (a later setting overrides an earlier one).
    ``oauth2_introspection_url`` adds SASL XOAUTH2 and OAUTHBEARER with an ``oauth2`` passdb that asks that
    RFC 7662 endpoint about each token (``introspection_mode = post``; ``oauth2_ca_file`` is the CA for its
    https); see ``_oauth2_passdb``.
    Construction writes the files (installing Dovecot if needed); ``start()`` launches the server.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        layout: Layout,
        users: Sequence[LabUser],
        master: LabUser | None = None,
        port: int | None = None,
        tls: bool = False,
        capabilities: str | None = None,
        max_userip_connections: int = 100,
        quota: str | None = None,
        max_mail_size: str | None = None,
        extra_config: str = "",
        auth_penalty: bool = False,
        oauth2_introspection_url: str | None = None,
        oauth2_ca_file: Path | None = None,
    ) -> None:
        if layout not in _SEPARATOR:
            raise ValueError(f"layout must be 'source' or 'target', not {layout!r}")
        if not users:
            raise ValueError("a lab server needs at least one user")
        for u in [*users, *([master] if master else [])]:
            if not u.name or any(c in u.name for c in ":*\n/ ") or "\n" in u.password or ":" in u.password:
                raise ValueError(f"unsupported lab user name/password: {u!r}")
        self.root = Path(root).absolute()
        self.name = name
        self.layout: Layout = layout
        self.users = tuple(users)
        self.master = master
        self._auto_ports = port is None
        self._port = port if port is not None else free_port()
        self.tls = tls
        self._tls_port: int | None = free_port() if tls else None
        self.capabilities = capabilities
        self.max_userip_connections = max_userip_connections
        self.quota = quota
        self.max_mail_size = max_mail_size
        self.extra_config = extra_config
        self.auth_penalty = auth_penalty
        self.oauth2_introspection_url = oauth2_introspection_url
        self.oauth2_ca_file = oauth2_ca_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_base_dir: Path | None = None
        self._prepare()

    # ---------------------------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls_port(self) -> int | None:
        """Implicit-TLS (imaps) port, or None when the server was made with ``tls=False``."""
        return self._tls_port

    @property
    def ca_file(self) -> Path:
        """PEM file of the throwaway CA that signed the server certificate (``tls=True`` only)."""
        if not self.tls:
            raise RuntimeError(f"lab server {self.name!r} was created without tls=True")
        return self.root / "tls" / "ca.pem"

    @property
    def conf_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def separator(self) -> str:
        return _SEPARATOR[self.layout]

    @property
    def special_folders(self) -> dict[str, str]:
        """Special-use folder name -> attribute (e.g. ``{"Sent Items": "\\\\Sent"}``)."""
        return dict(_SPECIAL[self.layout])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far: its live processes' own, and that of the processes they
        reaped (the master reaps every imap process when its session ends). scripts/bench reads it around
        each step to show how the machine's CPUs were shared."""
        if self._proc is None:
            return 0.0
        ticks = 0
        for pid in _group_pids(self._proc.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ... (see _group_members)
                ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def user_home(self, user: str | LabUser) -> Path:
        return self.root / "home" / _user_name(user)

    def user_mail_dir(self, user: str | LabUser) -> Path:
        """Root of the user's mail storage (Maildir++ for source, sdbox for target)."""
        return self.user_home(user) / _MAIL_LOCATION[self.layout][1]

    # ---------------------------------------------------------------------------------- set-up

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the Dovecot lab must run as root (Dovecot stores mail as the vmail user)")
        ensure_dovecot_installed()
        vmail = pwd.getpwnam(VMAIL_USER)
        self._uid, self._gid = vmail.pw_uid, vmail.pw_gid
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        _make_traversable(self.root)
        for sub in ("state",):
            (self.root / sub).mkdir(exist_ok=True)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        os.chmod(home, 0o755)
        os.chown(home, self._uid, self._gid)
        self._base_dir = self.root / "run"
        if len(str(self._base_dir)) > _MAX_BASE_DIR_LEN:
            self._own_base_dir = Path(tempfile.mkdtemp(prefix="dovelab-"))
            os.chmod(self._own_base_dir, 0o755)
            self._base_dir = self._own_base_dir / "run"
        self._write_passwd()
        if self.tls:
            self._make_certificates()
        self._write_config()

    def _write_passwd(self) -> None:
        lines = [
            f"{u.name}:{{PLAIN}}{u.password}:{self._uid}:{self._gid}::{self.user_home(u)}::\n"
            for u in self.users
        ]
        _write(self.root / "passwd", "".join(lines), 0o644)
        if self.master is not None:
            _write(
                self.root / "master-passwd", f"{self.master.name}:{{PLAIN}}{self.master.password}\n", 0o644
            )

    def _make_certificates(self) -> None:
        if shutil.which("openssl") is None:
            raise RuntimeError("tls=True needs the openssl command line tool")
        d = self.root / "tls"
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
        if (d / "server.pem").exists() and (d / "ca.pem").exists():
            return
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _write(
            d / "server.ext",
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid, issuer\n",
            0o644,
        )
        cmds = [
            [
                "openssl",
                "req",
                "-x509",
                *ec,
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                f"/CN=migrator lab CA {self.name}",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-addext",
                "subjectKeyIdentifier=hash",
            ],
            ["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                str(int.from_bytes(os.urandom(8), "big")),
                "-days",
                "30",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        ]
        for cmd in cmds:
            res = subprocess.run(cmd, cwd=d, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
        os.chmod(d / "server.key", 0o600)
        os.chmod(d / "ca.key", 0o600)

    def _write_config(self) -> None:
        driver, mail_sub = _MAIL_LOCATION[self.layout]
        sep = self.separator
        mailboxes = "".join(
            f'  mailbox "{name}" {{\n    special_use = {attr}\n    auto = subscribe\n  }}\n'
            for name, attr in _SPECIAL[self.layout]
        )
        tls_dir = self.root / "tls"
        if self.tls:
            ssl = (
                "ssl = yes\n"
                f"ssl_cert = <{tls_dir / 'server.pem'}\n"
                f"ssl_key = <{tls_dir / 'server.key'}\n"
                "ssl_min_protocol = TLSv1.2\n"
            )
        else:
            ssl = "ssl = no\n"
        master_passdb = ""
        if self.master is not None:
            master_passdb = (
                "passdb {\n"
                "  driver = passwd-file\n"
                "  master = yes\n"
                f"  args = {self.root / 'master-passwd'}\n"
                "}\n"
            )
        plugins = ""
        plugin_block = ""
        imap_plugins = ""
        if self.quota is not None or self.max_mail_size is not None:
            plugins = "mail_plugins = $mail_plugins quota\n"
            imap_plugins = "  mail_plugins = $mail_plugins imap_quota\n"  # GETQUOTAROOT for preflight checks
            rules = ["  quota = count:User quota\n", "  quota_vsizes = yes\n"]
            if self.quota is not None:
                rules.append(f"  quota_rule = *:storage={self.quota}\n")
            if self.max_mail_size is not None:
                rules.append(f"  quota_max_mail_size = {self.max_mail_size}\n")
            plugin_block = "plugin {\n" + "".join(rules) + "}\n"
        auth_delay = ""
        if not self.auth_penalty:
            # A failed login costs ~0.5 s instead of 2 s growing to 15 s per client IP (everything here
            # comes from 127.0.0.1, so one wrong-password test would slow every later login).
            auth_delay = (
                "auth_failure_delay = 0\n"
                "service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n"
            )
        capability = f"  imap_capability = {self.capabilities}\n" if self.capabilities is not None else ""
        oauth2_passdb, mechanisms = self._oauth2_passdb()
        conf = f"""# Generated by migrator.lab.dovecot for lab server {self.name!r} ({self.layout} layout).
# Standalone on purpose: nothing from /etc/dovecot is included.
instance_name = lab-{self.name}-{self._port}
base_dir = {self._base_dir}
state_dir = {self.root / "state"}
log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login{mechanisms}
auth_master_user_separator = *
{auth_delay}first_valid_uid = {self._uid}
first_valid_gid = {self._gid}
# Throwaway data: no fsync (much faster APPEND).
mail_fsync = never
mail_location = {driver}:~/{mail_sub}
{plugins}
{master_passdb}{oauth2_passdb}passdb {{
  driver = passwd-file
  args = {self.root / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = {self.root / "passwd"}
}}

namespace inbox {{
  inbox = yes
  prefix =
  separator = {sep}
{mailboxes}}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self._port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self._tls_port or 0}
  }}
}}

protocol imap {{
  mail_max_userip_connections = {self.max_userip_connections}
{imap_plugins}{capability}}}
{plugin_block}
{self.extra_config}
"""
        _write(self.conf_path, conf, 0o644)

    def _oauth2_passdb(self) -> tuple[str, str]:
        """(passdb block, extra auth mechanisms) for ``oauth2_introspection_url``, or empty strings.

        Dovecot 2.3's oauth2 passdb posts ``token=...`` to the introspection URL and requires the answer to
        carry ``username_attribute``, which it compares with the SASL user after expanding
        ``username_format`` on both.  An app-only token (Exchange Online application access) names no
        mailbox, so ``username_format`` is empty: the comparison is "" == "", and the SASL user alone picks
        the mailbox, as with Exchange.  ``active_attribute``/``active_value`` make ``{"active": false}`` (an
        expired, foreign or wrong-audience token) a refusal.
        """
        if self.oauth2_introspection_url is None:
            return "", ""
        lines = ["introspection_mode = post", f"introspection_url = {self.oauth2_introspection_url}",
                 "username_attribute = username", "username_format =", "active_attribute = active",
                 "active_value = true", "timeout_msecs = 10000"]
        if self.oauth2_ca_file is not None:
            lines.append(f"tls_ca_cert_file = {self.oauth2_ca_file}")
        _write(self.root / "dovecot-oauth2.conf.ext", "\n".join(lines) + "\n", 0o644)
        passdb = ("passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                  f"  args = {self.root / 'dovecot-oauth2.conf.ext'}\n}}\n")
        return passdb, " xoauth2 oauthbearer"

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> DovecotServer:
        if self.running:
            return self
        start_retrying_ports(self._start_once, self._pick_ports, self._auto_ports)
        return self

    def _pick_ports(self) -> None:
        self._port = free_port()
        if self.tls:
            self._tls_port = free_port()
        self._write_config()

    def _start_once(self) -> None:
        if self._own_base_dir is not None and not self._own_base_dir.exists():
            self._own_base_dir.mkdir(mode=0o755)
        self._proc = spawn([str(DOVECOT), "-c", str(self.conf_path), "-F"], self.root / "dovecot.out")
        track(self)
        problem = wait_until_ready(self._proc, self._ready, START_TIMEOUT, "dovecot", poll=0.02)
        if problem is None:
            return
        details = self._log_tail()
        self.stop()
        raise RuntimeError(
            f"lab Dovecot {self.name!r} did not start on {self.host}:{self._port} ({problem}); "
            f"config {self.conf_path}\n{details}"
        )

    def _ready(self) -> bool:
        return _greets(self.host, self._port) and (self._tls_port is None or _accepts(self.host, self._tls_port))

    def _log_tail(self, lines: int = 30) -> str:
        parts = []
        for p in (self.root / "dovecot.out", self.log_path):
            with contextlib.suppress(OSError):
                text = p.read_text(errors="replace").strip()
                if text:
                    parts.append(f"--- {p.name}:\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "(no log output)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        untrack(self)
        if proc is not None:
            pgid = proc.pid  # start_new_session made the master a group leader
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                self._await_shutdown(proc)
            # Children (imap, auth, ...) share the group; do not leave any behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            _wait_group_gone(pgid)
        if self._own_base_dir is not None:  # recreated by the next start()
            shutil.rmtree(self._own_base_dir, ignore_errors=True)

    @staticmethod
    def _await_shutdown(proc: subprocess.Popen[bytes]) -> None:
        """Wait for a SIGTERMed master; cut short its fixed one-second pause for the log process.

        On SIGTERM the master closes its listeners at once, tells the mail processes to go, then sleeps
        a hard-coded second so the log process can flush before exiting.  Only the mail processes
        (imap, and doveadm/indexer workers) write mail and indexes; once they have gone there is
        nothing left to protect, so the group is killed instead of waited for: stop() takes ~50 ms
        instead of ~1 s.  Login processes are not waited for either: with TLS, an imap-login process
        whose client went away mid-handshake lingers for seconds.
        """
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            writers = [
                pid
                for pid, title in _group_members(proc.pid)
                if pid != proc.pid and not title.endswith(_HARMLESS_PROCESSES)
            ]
            if not writers:
                time.sleep(0.02)  # let the log process write what it was sent
                break
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_group_gone(proc.pid)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotServer {self.name} {self.layout} {self.host}:{self._port} {state}>"

    # ---------------------------------------------------------------------------------- admin

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(DOVEADM), "-c", str(self.conf_path), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise DoveadmError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def set_uidvalidity(self, user: str | LabUser, folder: str, value: int) -> None:
        """Change a folder's UIDVALIDITY (a migrator must notice and stop).

        Seen by new sessions; a session that already opened the folder may keep reporting the old
        value even after re-SELECTing it.
        """
        self.doveadm("mailbox", "update", "--uid-validity", str(value), "-u", _user_name(user), folder)

    def kick(self, user: str | LabUser, timeout: float = 10.0) -> None:
        """Drop every IMAP connection of ``user`` (no error when there is none), and return once they are
        gone: doveadm kick only signals the sessions' processes, and a busy one answered another command
        before it acted on the signal (seen with the test suite on both cores)."""
        name = _user_name(user)
        try:
            self.doveadm("kick", name)
        except DoveadmError as exc:
            # doveadm kick exits 68 with "no users kicked" when the user has no connections.
            if "no users kicked" not in f"{exc.stdout}{exc.stderr}":
                raise
        deadline = time.monotonic() + timeout
        while any(line.split()[:1] == [name] for line in self.doveadm("who", "-1", name).stdout.splitlines()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab Dovecot {self.name!r}: {name}'s sessions outlived doveadm kick by {timeout} s")
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------------
# helpers


def _user_name(user: str | LabUser) -> str:
    return user.name if isinstance(user, LabUser) else user


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    os.chmod(path, mode)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged auth process reach files below ``path`` (mkdtemp/pytest dirs are 0700)."""
    for d in [path, *path.parents]:
        mode = d.stat().st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(d, mode | 0o055)


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, process title) of the live processes in a process group (Linux /proc)."""
    members = []
    for pid in _group_pids(pgid, zombies=False):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            members.append((pid, title.strip()))
    return members


def _group_pids(pgid: int, *, zombies: bool = True) -> list[int]:
    """The processes of a process group (Linux /proc); a zombie's CPU time is not yet its parent's."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
            fields = stat[stat.rindex(")") + 2 :].split()
            if (fields[0] == "Z" and not zombies) or int(fields[2]) != pgid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        pids.append(int(entry.name))
    return pids


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until SIGKILLed group members have died (they may stay zombies until init reaps them)."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _greets(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(200).startswith(b"* OK")
    except OSError:
        return False
