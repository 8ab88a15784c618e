"""migrator.toml and mailboxes.csv -> frozen config objects, validated before anything runs.

Every problem is a UserError that names the file, the key or line, and what is wrong, so that an
engineer can fix the input without reading a traceback. Secrets are never read from the TOML itself:
only the name of an environment variable or a file that holds them.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from migrator.errors import UserError
from migrator.model import MailboxEntry, Secret

ENDPOINT_KINDS = ("imap", "graph", "ews")
SECURITY_MODES = ("tls", "starttls", "none")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_ADDRESS = re.compile(r"^[^@\s,;<>]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


def parse_size(text: str | int, where: str) -> int:
    """'40MB' -> 40_000_000; KB/MB/GB are decimal, KiB/MiB/GiB binary. Raises UserError naming `where`."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UserError(f"{where}: size must not be negative")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise UserError(f"{where}: {text!r} is not a size; write e.g. 40MB, 200GB or 512KiB")
    return int(Decimal(match.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file. Resolved only when a login needs it."""

    where: str
    env: str | None = None
    file: Path | None = None

    def resolve(self) -> Secret:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UserError(f"{self.where}: environment variable {self.env} is not set")
            return Secret(value)
        assert self.file is not None
        try:
            return Secret(self.file.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise UserError(f"{self.where}: cannot read secret file {self.file}: {exc.strerror}") from None


@dataclass(frozen=True)
class EndpointConfig:
    role: str
    kind: str
    host: str
    port: int
    security: str
    admin_user: str | None
    admin_password: SecretRef | None
    ca_file: Path | None
    allow_insecure: bool
    timeout: float
    options: Mapping[str, Any]

    def describe(self) -> str:
        return f"{self.role} {self.kind}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ThrottleConfig:
    max_connections: int = 4
    messages_per_second: float | None = None
    bytes_per_second: int | None = None


@dataclass(frozen=True)
class MappingConfig:
    domains: Mapping[str, str]
    folders: Mapping[str, str]

    def target_address(self, source: str) -> str | None:
        """The source address with its domain rewritten by `domains` (tenant to tenant), or None."""
        local, _, domain = source.rpartition("@")
        mapped = self.domains.get(domain.lower())
        return f"{local}@{mapped.lower()}" if mapped else None


@dataclass(frozen=True)
class FilterConfig:
    exclude_folders: tuple[str, ...] = ()
    before: date | None = None
    after: date | None = None


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: where preflight DNS checks ask, and what the target's MX and SPF look like."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0
    target_mx: tuple[str, ...] = ()
    target_spf: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    state_url: str
    source: EndpointConfig
    target: EndpointConfig
    source_throttle: ThrottleConfig
    target_throttle: ThrottleConfig
    mapping: MappingConfig
    filters: FilterConfig
    dns: DnsConfig | None = None
    state_busy_timeout_ms: int = 30_000

    @property
    def base_dir(self) -> Path:
        return self.path.parent


class _Table:
    """A TOML table that remembers its location and refuses keys nobody asked for."""

    def __init__(self, file: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise UserError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.data = file, name, dict(data)
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.file}: {self.name}.{key}" if self.name else f"{self.file}: {key}"

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise UserError(f"{self.file}: [{self.name}] is missing required key '{key}'")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise UserError(f"{self.where(key)}: expected {names}, got {type(value).__name__} {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise UserError(f"{self.where(unknown[0])}: unknown key (allowed: {', '.join(sorted(self.used))})")


# An app registration's client credentials (Microsoft identity platform, client credentials grant).
APP_CREDENTIAL_KEYS = ("tenant_id", "client_id", "client_secret_env", "client_secret_file", "client_certificate_file",
                       "authority")
_APP_SECRETS = ("client_secret_env", "client_secret_file", "client_certificate_file")
IMAP_AUTH_MODES = ("password", "xoauth2")
_ENDPOINT_OPTIONS = {
    "imap": ("auth", *APP_CREDENTIAL_KEYS),
    "graph": (*APP_CREDENTIAL_KEYS, "base_url", "max_message_size"),
    "ews": ("service_endpoint", "auth_type", "access_type"),
}


def _secret_ref(table: _Table, stem: str) -> SecretRef | None:
    env, file = table.get(f"{stem}_env", str), table.get(f"{stem}_file", str)
    if env and file:
        raise UserError(f"{table.where(stem + '_env')}: give {stem}_env or {stem}_file, not both")
    if file:
        return SecretRef(table.where(stem + "_file"), file=table.file.parent / file)
    return SecretRef(table.where(stem + "_env"), env=env) if env else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(file: Path, role: str, data: Any) -> EndpointConfig:
    table = _Table(file, role, data)
    kind = table.get("kind", str, required=True)
    if kind not in ENDPOINT_KINDS:
        raise UserError(f"{table.where('kind')}: {kind!r} is not one of {', '.join(ENDPOINT_KINDS)}")
    security = table.get("security", str, "tls")
    if security not in SECURITY_MODES:
        raise UserError(f"{table.where('security')}: {security!r} is not one of {', '.join(SECURITY_MODES)}")
    host = table.get("host", str, required=kind == "imap") or ""
    default_port = {"tls": 993, "starttls": 143, "none": 143}[security] if kind == "imap" else 443
    port = table.get("port", int, default_port)
    if not 0 < port < 65536:
        raise UserError(f"{table.where('port')}: {port} is not a TCP port")
    allow_insecure = table.get("allow_insecure", bool, False)
    if security == "none" and kind == "imap" and not (_is_loopback(host) or allow_insecure):
        raise UserError(f"{table.where('security')}: 'none' sends passwords in clear text; it is allowed only "
                        f"for loopback hosts unless allow_insecure = true")
    admin_user = table.get("admin_user", str)
    admin_password = _secret_ref(table, "admin_password")
    if admin_user and not admin_password:
        raise UserError(f"{table.where('admin_user')}: set admin_password_env or admin_password_file too")
    ca_file = table.get("ca_file", str)
    if ca_file and not (file.parent / ca_file).is_file():
        raise UserError(f"{table.where('ca_file')}: no such file {file.parent / ca_file}")
    timeout = float(table.get("timeout", (int, float), 60))
    options = {key: table.get(key, str) for key in _ENDPOINT_OPTIONS[kind] if key in table.data}
    if "max_message_size" in options:
        options["max_message_size"] = parse_size(options["max_message_size"], table.where("max_message_size"))
    _check_app_credentials(table, kind, options, admin_user)
    table.finish()
    return EndpointConfig(role, kind, host, port, security, admin_user, admin_password,
                          file.parent / ca_file if ca_file else None, allow_insecure, timeout, options)


def _check_app_credentials(table: _Table, kind: str, options: dict[str, Any], admin_user: str | None) -> None:
    """A graph endpoint, or an imap one with auth = "xoauth2", logs in as an app registration: tenant_id,
    client_id and exactly one of client_secret_env / client_secret_file / client_certificate_file. File
    options are made absolute (relative to the config file) in `options`."""
    if kind == "imap":
        auth = options.get("auth", "password")
        if auth not in IMAP_AUTH_MODES:
            raise UserError(f"{table.where('auth')}: {auth!r} is not one of {', '.join(IMAP_AUTH_MODES)}")
        if auth == "password":
            for key in APP_CREDENTIAL_KEYS:
                if key in options:
                    raise UserError(f'{table.where(key)}: only used with auth = "xoauth2"')
            return
        if admin_user:
            raise UserError(f'{table.where("admin_user")}: not used with auth = "xoauth2" (the app\'s token '
                            f"opens every mailbox)")
    elif kind != "graph":
        return
    for key in ("tenant_id", "client_id"):
        if not options.get(key):
            raise UserError(f"{table.file}: [{table.name}] is missing required key '{key}'")
    given = [key for key in _APP_SECRETS if options.get(key)]
    if not given:
        raise UserError(f"{table.file}: [{table.name}] needs one of {', '.join(_APP_SECRETS)}")
    if len(given) > 1:
        raise UserError(f"{table.where(given[1])}: give only one of {', '.join(_APP_SECRETS)}")
    for key in ("client_secret_file", "client_certificate_file"):
        if key in options:
            options[key] = str(table.file.parent / options[key])
    certificate = options.get("client_certificate_file")
    if certificate and not Path(certificate).is_file():
        raise UserError(f"{table.where('client_certificate_file')}: no such file {certificate}")
    authority = options.get("authority")
    if authority is not None and not authority.startswith("https://"):
        raise UserError(f"{table.where('authority')}: {authority!r} must be an https:// URL")


def _throttle(file: Path, role: str, data: Any) -> ThrottleConfig:
    table = _Table(file, f"throttle.{role}", data)
    max_connections = table.get("max_connections", int, 4)
    if max_connections < 1:
        raise UserError(f"{table.where('max_connections')}: must be at least 1")
    rate = table.get("messages_per_second", (int, float))
    if rate is not None and rate <= 0:
        raise UserError(f"{table.where('messages_per_second')}: must be positive")
    raw_bytes = table.get("bytes_per_second", (str, int))
    bytes_rate = parse_size(raw_bytes, table.where("bytes_per_second")) if raw_bytes is not None else None
    table.finish()
    return ThrottleConfig(max_connections, float(rate) if rate else None, bytes_rate or None)


def _string_map(table: _Table, key: str) -> dict[str, str]:
    value = table.get(key, dict, {})
    for name, target in value.items():
        if not isinstance(target, str) or not target:
            raise UserError(f"{table.where(key)}: value for {name!r} must be a non-empty string")
    return dict(value)


def _filters(file: Path, data: Any) -> FilterConfig:
    table = _Table(file, "filters", data)
    excluded = table.get("exclude_folders", list, [])
    if not all(isinstance(name, str) for name in excluded):
        raise UserError(f"{table.where('exclude_folders')}: must be a list of folder names")
    dates = {key: table.get(key, (str, date)) for key in ("before", "after")}
    parsed: dict[str, date | None] = {}
    for key, value in dates.items():
        if isinstance(value, datetime):
            raise UserError(f"{table.where(key)}: {value.isoformat()} is a date-time; give a day (YYYY-MM-DD)")
        try:
            parsed[key] = date.fromisoformat(value) if isinstance(value, str) else value
        except ValueError:
            raise UserError(f"{table.where(key)}: {value!r} is not a date (YYYY-MM-DD)") from None
    table.finish()
    return FilterConfig(tuple(excluded), parsed["before"], parsed["after"])


def _string_list(table: _Table, key: str) -> tuple[str, ...]:
    value = table.get(key, list, [])
    if not all(isinstance(item, str) and item for item in value):
        raise UserError(f"{table.where(key)}: must be a list of non-empty strings")
    return tuple(value)


def _dns(file: Path, data: Any) -> DnsConfig:
    table = _Table(file, "dns", data)
    port = table.get("port", int, 53)
    if not 0 < port < 65536:
        raise UserError(f"{table.where('port')}: {port} is not a port")
    config = DnsConfig(_string_list(table, "nameservers"), port, float(table.get("timeout", (int, float), 5.0)),
                       _string_list(table, "target_mx"), _string_list(table, "target_spf"))
    table.finish()
    return config


def load_config(path: Path) -> Config:
    """Read and validate migrator.toml. Raises UserError naming the file and key for any problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file (create one with `migrator init`)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    root = _Table(path, "", raw)
    state = _Table(path, "state", root.get("state", dict, {}))
    url = state.get("url", str, "sqlite:///migrator.db")
    busy_timeout = state.get("busy_timeout", (int, float), 30)
    if busy_timeout <= 0:
        raise UserError(f"{state.where('busy_timeout')}: must be a positive number of seconds")
    state.finish()
    source = _endpoint(path, "source", root.get("source", dict, required=True))
    target = _endpoint(path, "target", root.get("target", dict, required=True))
    throttle = _Table(path, "throttle", root.get("throttle", dict, {}))
    throttles = {role: _throttle(path, role, throttle.get(role, dict, {})) for role in ("source", "target")}
    throttle.finish()
    mapping_table = _Table(path, "mapping", root.get("mapping", dict, {}))
    mapping = MappingConfig(_string_map(mapping_table, "domains"), _string_map(mapping_table, "folders"))
    mapping_table.finish()
    filters = _filters(path, root.get("filters", dict, {}))
    dns = _dns(path, root.data["dns"]) if "dns" in root.data else None
    root.get("dns", dict)
    root.finish()
    return Config(path.resolve(), _resolve_state_url(url, path.parent), source, target,
                  throttles["source"], throttles["target"], mapping, filters, dns, int(busy_timeout * 1000))


def _resolve_state_url(url: str, base: Path) -> str:
    """SQLite paths in the config are relative to the config file, not to the current directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


CSV_REQUIRED = ("source",)
CSV_OPTIONAL = ("target", "source_login", "source_password", "target_login", "target_password", "group", "priority")


def _csv_secret(cell: str, where: str, base: Path) -> Secret | None:
    """A password cell holds the password, or `env:NAME` / `file:PATH` to keep it out of the CSV."""
    if not cell:
        return None
    if cell.startswith("env:"):
        return SecretRef(where, env=cell[4:]).resolve()
    if cell.startswith("file:"):
        return SecretRef(where, file=base / cell[5:]).resolve()
    return Secret(cell)


def load_mailboxes(path: Path, mapping: MappingConfig | None = None) -> list[MailboxEntry]:
    """Read mailboxes.csv; a row without a target gets the source address with its domain rewritten by
    [mapping].domains. Raises UserError naming the file, line and column of the first problem."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such mailbox list") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(text.splitlines(), strict=True)
    header = [name.strip() for name in (reader.fieldnames or [])]
    if not header:
        raise UserError(f"{path}: empty file; the first line must be a header with source,target")
    for name in header:
        if name not in CSV_REQUIRED + CSV_OPTIONAL:
            raise UserError(f"{path}:1: unknown column {name!r} (allowed: {', '.join(CSV_REQUIRED + CSV_OPTIONAL)})")
    if len(set(header)) != len(header):
        raise UserError(f"{path}:1: a column appears twice")
    for name in CSV_REQUIRED:
        if name not in header:
            raise UserError(f"{path}:1: missing required column {name!r}")
    reader.fieldnames = header
    entries: list[MailboxEntry] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            entries.append(_mailbox_row(path, line, row, seen, mapping))
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: {exc}") from None
    if not entries:
        raise UserError(f"{path}: no mailboxes listed below the header")
    return entries


def _mailbox_row(path: Path, line: int, row: dict[str, Any], seen: dict[str, int],
                 mapping: MappingConfig | None) -> MailboxEntry:
    if None in row:
        raise UserError(f"{path}:{line}: more cells than columns in the header")
    cells = {key: (value or "").strip() for key, value in row.items()}
    source = cells["source"].lower()
    if not cells.get("target"):
        cells["target"] = (mapping.target_address(source) if mapping else None) or ""
        if not cells["target"]:
            raise UserError(f"{path}:{line}: no target for {source}, and [mapping].domains has no rule for its "
                            f"domain")
    for column in ("source", "target"):
        if not _ADDRESS.match(cells[column]):
            raise UserError(f"{path}:{line}: column {column!r}: {cells[column]!r} is not an email address")
    if source in seen:
        raise UserError(f"{path}:{line}: mailbox {source} is listed twice (first on line {seen[source]})")
    seen[source] = line
    priority = cells.get("priority") or "0"
    if not re.fullmatch(r"-?\d+", priority):
        raise UserError(f"{path}:{line}: column 'priority': {priority!r} is not a whole number")
    return MailboxEntry(
        source=source,
        target=cells["target"].lower(),
        source_login=cells.get("source_login") or None,
        source_password=_csv_secret(cells.get("source_password", ""), f"{path}:{line}: source_password", path.parent),
        target_login=cells.get("target_login") or None,
        target_password=_csv_secret(cells.get("target_password", ""), f"{path}:{line}: target_password", path.parent),
        group=cells.get("group") or None,
        priority=int(priority),
    )


DEPENDENCY_KINDS = ("group", "delegate", "shared-mailbox", "forward")


@dataclass(frozen=True)
class Dependency:
    """`source` depends on `target`: a member of a group, a delegate of or to a mailbox, a forward."""

    kind: str
    source: str
    target: str


def load_dependencies(path: Path, mailboxes: Sequence[str]) -> list[Dependency]:
    """Read a dependency file exported from the source system: CSV with header kind,source,target, or JSON
    (a list of objects with those keys). `source` must be a listed mailbox; for delegate and
    shared-mailbox the `target` too. Raises UserError naming the file and the line or item."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such dependency file") from None
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise UserError(f"{path}: expected a JSON list of objects with kind, source and target")
        rows = [(f"item {n}", item) for n, item in enumerate(items, start=1)]
    else:
        reader = csv.DictReader(text.splitlines())
        if sorted(reader.fieldnames or []) != ["kind", "source", "target"]:
            header = ",".join(reader.fieldnames or [])
            raise UserError(f"{path}:1: the header must be kind,source,target (got {header})")
        rows = [(f"line {reader.line_num}", dict(row)) for row in reader]
    known = {m.lower() for m in mailboxes}
    found: list[Dependency] = []
    for where, row in rows:
        kind, source, target = (str(row.get(key) or "").strip() for key in ("kind", "source", "target"))
        here = f"{path}: {where}"
        if kind not in DEPENDENCY_KINDS:
            raise UserError(f"{here}: kind {kind!r} is not one of {', '.join(DEPENDENCY_KINDS)}")
        if source.lower() not in known:
            raise UserError(f"{here}: mailbox {source!r} is not in the mailbox list")
        if kind in ("delegate", "shared-mailbox") and target.lower() not in known:
            raise UserError(f"{here}: {kind} target {target!r} is not in the mailbox list")
        if not target:
            raise UserError(f"{here}: target is empty")
        dependency = Dependency(kind, source.lower(), target.lower() if "@" in target else target)
        if dependency in found:
            raise UserError(f"{here}: duplicate of an earlier row")
        found.append(dependency)
    return found
