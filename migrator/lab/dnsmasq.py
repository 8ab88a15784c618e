"""Private, throwaway DNS servers (dnsmasq) on 127.0.0.1 that serve MX, TXT, CNAME and SRV test records.

Used by the DNS preflight tests (``migrator.discovery.dns``) and demos; never by the core.

Why these settings (checked with dnsmasq 2.90 from Debian 12):

* The server is standalone: its own ``--conf-file`` (so /etc/dnsmasq.conf is never read), ``--no-resolv`` (no upstream
  servers from /etc/resolv.conf), ``--no-hosts`` (no /etc/hosts), ``--listen-address=127.0.0.1`` with
  ``--bind-interfaces`` on a free high port, ``--keep-in-foreground`` (the Popen pid *is* the server, stopped by
  that pid) and its own ``--pid-file`` in a private directory.  It never touches port 53 nor a system dnsmasq.
* ``ensure_dnsmasq_installed`` installs ``dnsmasq-base`` (the binary and its ``dnsmasq`` system user only), not
  ``dnsmasq``, whose package also enables a system service on port 53 that the lab does not want.
* TTL: ``--local-ttl`` sets the TTL of every answer built from ``--mx-host``, ``--txt-record``, ``--cname``
  and ``--srv-host`` records; ``--auth-ttl`` does not: with only ``--auth-ttl=99`` they are answered with TTL 0
  (the man page ties it to authoritative ``--auth-zone``/``--auth-server`` answers, which the lab does not use).
  Without ``ttl`` the answers carry dnsmasq's default, TTL 0.  There is one TTL per server: a test that needs
  two MX TTLs runs two servers.
* Names that are not configured: without ``--local`` dnsmasq would try to forward them and, having no upstream,
  answer REFUSED.  Every domain in ``local`` (by default every owner name of a record, which covers its
  sub-names) is answered from local data only, like an authoritative server: a missing name is NXDOMAIN and a
  missing type NODATA (NOERROR, empty answer).  Names outside them still get REFUSED, which tests can use as
  a "broken resolver" answer.
* The records go into that private config file, not onto the command line: only the config file parser honours
  quotes and backslash escapes; on the command line every comma splits a TXT record into strings and quotes are
  kept literally.
* TXT strings longer than 255 bytes are split into several character-strings, as SPF publishers do; readers
  concatenate them (RFC 7208 section 3.3).
* ``start()`` returns once the server answers a query; dnsmasq binds UDP and TCP on the port, so the free port
  is checked on both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query

from migrator.lab.common import (
    install_lock,
    run_steps,
    spawn,
    start_retrying_ports,
    track,
    untrack,
    wait_until_ready,
)

__all__ = ["DNSMASQ", "DnsServer", "ensure_dnsmasq_installed", "free_dns_port"]

DNSMASQ = Path("/usr/sbin/dnsmasq")
START_TIMEOUT = 10.0
# The same lock file as the Dovecot lab: apt-get must never run twice at once, whichever lab calls it.
_TXT_CHUNK = 255


# --------------------------------------------------------------------------------------------------
# installation


def ensure_dnsmasq_installed() -> None:
    """Install dnsmasq (package ``dnsmasq-base``) when ``/usr/sbin/dnsmasq`` is missing.

    Serialised with a file lock shared with the other labs (apt-get does not tolerate concurrent runs).
    Raises RuntimeError, with apt-get's output, when it cannot be installed.
    """
    if DNSMASQ.exists():
        return
    with install_lock():
        if not DNSMASQ.exists():
            _install()


def _install() -> None:
    if os.geteuid() != 0:
        raise RuntimeError(f"the DNS lab needs {DNSMASQ}; install the dnsmasq-base package (run as root to install it)")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "dnsmasq-base"]
    # Try without refreshing the package lists first: that is the slow step and often not needed.
    failure = run_steps([install]) and run_steps([["apt-get", "update"], install])
    if failure:
        raise RuntimeError(f"cannot install dnsmasq: {failure}")
    if not DNSMASQ.exists():
        raise RuntimeError(f"apt-get install dnsmasq-base succeeded but {DNSMASQ} is still missing")


def free_dns_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago for both UDP and TCP (a DNS server needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port on 127.0.0.1 is free for both UDP and TCP")


# --------------------------------------------------------------------------------------------------
# server

class DnsServer:
    """One private dnsmasq on 127.0.0.1 serving the given records; ``start()``/``stop()`` or a context manager.

    ``mx``: (domain, host, preference); ``txt``: (name, text) — one record each, several per name allowed;
    ``cname``: (alias, target); ``srv``: (name, target, port, priority, weight), e.g.
    ``("_autodiscover._tcp.example.test", "mail.example.test", 443, 0, 0)``.  ``ttl`` is the TTL of every
    answer (``--local-ttl``; default 0).  ``local`` lists the domains answered from these records only
    (NXDOMAIN / NODATA for anything else under them); by default every owner name of a record.  Names outside
    them are answered REFUSED.  ``port`` is free by default (and re-picked if it is taken at start).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        mx: Sequence[tuple[str, str, int]] = (),
        txt: Sequence[tuple[str, str]] = (),
        cname: Sequence[tuple[str, str]] = (),
        srv: Sequence[tuple[str, str, int, int, int]] = (),
        ttl: int | None = None,
        local: Sequence[str] | None = None,
        port: int | None = None,
        log_queries: bool = False,
    ) -> None:
        names = [d for d, _, _ in mx] + [n for n, _ in txt] + [a for a, _ in cname] + [n for n, *_ in srv]
        targets = [h for _, h, _ in mx] + [t for _, t in cname] + [t for _, t, *_ in srv]
        for name in [*names, *(t for t in targets if t != "."), *(local or ())]:  # "." = null MX / no service
            _check_name(name)
        for _, _, pref in mx:
            _check_int("MX preference", pref, 0, 65535)
        for _, _, srv_port, priority, weight in srv:
            for what, value in (("SRV port", srv_port), ("SRV priority", priority), ("SRV weight", weight)):
                _check_int(what, value, 0, 65535)
        if ttl is not None:
            _check_int("ttl", ttl, 0, 2**31 - 1)
        for _, text in txt:
            _txt_strings(text)  # raises ValueError now rather than at start()
        self.mx = tuple(mx)
        self.txt = tuple(txt)
        self.cname = tuple(cname)
        self.srv = tuple(srv)
        self.ttl = ttl
        self.local = tuple(dict.fromkeys(n.rstrip(".").lower() for n in (names if local is None else local)))
        self.log_queries = log_queries
        self._auto_port = port is None
        self._port = port if port is not None else free_dns_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        ensure_dnsmasq_installed()

    # ---------------------------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The dnsmasq command line this server runs (the records are in ``config_text()``)."""
        workdir = self._dir or Path(tempfile.gettempdir()) / "dnslab-unstarted"
        return [
            str(DNSMASQ),
            "--keep-in-foreground",
            f"--conf-file={workdir / 'dnsmasq.conf'}",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={self.host}",
            f"--port={self._port}",
            f"--pid-file={workdir / 'dnsmasq.pid'}",
            "--log-facility=-",  # stderr, which goes to our log file
        ]

    def config_text(self) -> str:
        """The private dnsmasq config file: TTL, local domains and the records."""
        lines = ["log-queries"] if self.log_queries else []
        if self.ttl is not None:
            lines.append(f"local-ttl={self.ttl}")
        lines += [f"local=/{d}/" for d in self.local]
        lines += [f"mx-host={d},{h},{p}" for d, h, p in self.mx]
        lines += [f"txt-record={n},{_txt_strings(t)}" for n, t in self.txt]
        lines += [f"cname={a},{t}" for a, t in self.cname]
        lines += [f"srv-host={n},{t},{p},{prio},{w}" for n, t, p, prio, w in self.srv]
        return "".join(f"{line}\n" for line in lines)

    @property
    def log_path(self) -> Path | None:
        return self._dir / "dnsmasq.log" if self._dir is not None else None

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> DnsServer:
        """Start dnsmasq and wait until it answers a query; RuntimeError (with its log) if it does not."""
        if self.running:
            return self
        start_retrying_ports(self._start_once, self._pick_port, self._auto_port)
        return self

    def _pick_port(self) -> None:
        self._port = free_dns_port()

    def _start_once(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="dnslab-"))
        os.chmod(self._dir, 0o755)
        log_path = self._dir / "dnsmasq.log"
        (self._dir / "dnsmasq.conf").write_text(self.config_text(), encoding="utf-8")
        self._proc = spawn(self.command(), log_path)
        track(self)
        problem = wait_until_ready(self._proc, lambda: _answers(self.host, self._port), START_TIMEOUT, "dnsmasq")
        if problem is None:
            return
        details = _tail(log_path)
        self.stop()
        raise RuntimeError(f"lab dnsmasq did not start on {self.host}:{self._port} ({problem})\n{details}")

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, SIGKILL after 5 s) and its TCP children, remove its directory; safe to call twice."""
        proc, self._proc = self._proc, None
        untrack(self)
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            # dnsmasq forks a child per TCP connection; they share the group, which start_new_session made.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DnsServer {self.host}:{self._port} ttl={self.ttl} {state}>"


# --------------------------------------------------------------------------------------------------
# helpers


def _check_name(name: str) -> None:
    """Reject what would break dnsmasq's comma- and slash-separated option syntax."""
    stripped = name.rstrip(".")
    if not stripped or any(c in stripped for c in ',/"\\ \t\n') or ".." in stripped:
        raise ValueError(f"unsupported DNS name for the lab: {name!r}")


def _check_int(what: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer from {low} to {high}, not {value!r}")


def _txt_strings(text: str) -> str:
    """``text`` as quoted, comma-separated character-strings for dnsmasq's config file, each at most 255 bytes."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"TXT text must be one line: {text!r}")
    chunks = [""]
    for ch in text:  # split between characters, never inside a UTF-8 sequence
        if len((chunks[-1] + ch).encode()) > _TXT_CHUNK:
            chunks.append("")
        chunks[-1] += ch
    quoted = ['"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks]
    return ",".join(quoted)


def _answers(host: str, port: int) -> bool:
    """True when a DNS server at host:port answers a query (any rcode counts: it is up)."""
    try:
        dns.query.udp(dns.message.make_query(".", "SOA"), host, port=port, timeout=0.2)
        return True
    except (dns.exception.DNSException, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip()
        if text:
            return f"--- {path.name}:\n" + "\n".join(text.splitlines()[-lines:])
    return "(no log output)"
