"""migrator.toml and mailboxes.csv validation: good input loads, every bad input names file and key/line."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from migrator.config import MappingConfig, load_config, load_mailboxes, parse_size
from migrator.engine.diff import passes_filters
from migrator.errors import UserError
from migrator.model import MessageRef, Secret

BASE = """\
[state]
url = "sqlite:///state/migrator.db"

[source]
kind = "imap"
host = "imap.old.example"
port = 993
security = "tls"
{source_extra}

[target]
kind = "imap"
host = "imap.new.example"
security = "starttls"
{target_extra}

[throttle.target]
max_connections = 8
messages_per_second = 100
bytes_per_second = "40MB"
{throttle_extra}

[mapping]
domains = {{ "old.example" = "new.example" }}
folders = {{ "INBOX.Archives" = "Archive" }}

[filters]
exclude_folders = ["Junk", "Trash"]
before = "2026-01-01"
{top_extra}
"""


def write_config(tmp_path: Path, *, source_extra: str = "", target_extra: str = "", throttle_extra: str = "",
                 top_extra: str = "", text: str | None = None) -> Path:
    path = tmp_path / "migrator.toml"
    body = text if text is not None else BASE.format(source_extra=source_extra, target_extra=target_extra,
                                                     throttle_extra=throttle_extra, top_extra=top_extra)
    path.write_text(body, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message, f"error does not name the file: {message}"
    return message


# --- migrator.toml: good input ---------------------------------------------------------------------------


def test_good_config_loads_every_section(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.path == (tmp_path / "migrator.toml").resolve()
    assert config.source.kind == "imap" and config.source.host == "imap.old.example"
    assert config.source.port == 993 and config.source.security == "tls"
    assert config.target.port == 143, "starttls without a port defaults to 143"
    assert config.target_throttle.max_connections == 8
    assert config.target_throttle.messages_per_second == 100.0
    assert config.target_throttle.bytes_per_second == 40_000_000
    assert config.source_throttle.messages_per_second is None and config.source_throttle.bytes_per_second is None
    assert dict(config.mapping.domains) == {"old.example": "new.example"}
    assert dict(config.mapping.folders) == {"INBOX.Archives": "Archive"}
    assert config.filters.exclude_folders == ("Junk", "Trash")
    assert config.filters.before == date(2026, 1, 1) and config.filters.after is None


@pytest.mark.parametrize(("text", "expected"), [
    ("40MB", 40_000_000), ("40 mb", 40_000_000), ("200GB", 200 * 10**9), ("512KiB", 512 * 1024),
    ("1.5GB", 1_500_000_000), ("123", 123), (77, 77),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text, "where") == expected


@pytest.mark.parametrize("text", ["40XB", "forty", "", "-5MB", -1])
def test_parse_size_refuses_garbage_naming_where(text: str | int) -> None:
    with pytest.raises(UserError, match=r"throttle\.target\.bytes_per_second"):
        parse_size(text, "throttle.target.bytes_per_second")


def test_bytes_per_second_40mb_is_decimal(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.target_throttle.bytes_per_second == 40_000_000


def test_sqlite_url_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(write_config(project))
    assert config.state_url == f"sqlite:///{(project / 'state' / 'migrator.db').resolve()}"


def test_absolute_sqlite_and_postgres_urls_are_kept(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    absolute = text.replace('"sqlite:///state/migrator.db"', f'"sqlite:///{tmp_path}/abs.db"')
    assert load_config(write_config(tmp_path, text=absolute)).state_url == f"sqlite:///{tmp_path}/abs.db"
    pg = text.replace('"sqlite:///state/migrator.db"', '"postgresql+psycopg://user@db.example/migrator"')
    assert load_config(write_config(tmp_path, text=pg)).state_url == "postgresql+psycopg://user@db.example/migrator"


# --- migrator.toml: bad input names file and key -----------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, top_extra="\n[surprise]\nx = 1\n"))
    assert "surprise" in message and "unknown key" in message


def test_unknown_key_in_source(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, source_extra='hots = "typo"'))
    assert "source.hots" in message and "unknown key" in message


def test_unknown_key_in_throttle_target(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, throttle_extra="max_conections = 3"))
    assert "throttle.target.max_conections" in message and "unknown key" in message


def test_unknown_throttle_role(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, top_extra="\n[throttle.middle]\nmax_connections = 1\n"))
    assert "throttle.middle" in message


@pytest.mark.parametrize(("old", "new", "key"), [
    ("port = 993", 'port = "993"', "source.port"),
    ("max_connections = 8", 'max_connections = "8"', "throttle.target.max_connections"),
    ("messages_per_second = 100", "messages_per_second = true", "throttle.target.messages_per_second"),
    ('exclude_folders = ["Junk", "Trash"]', 'exclude_folders = "Junk"', "filters.exclude_folders"),
    ('exclude_folders = ["Junk", "Trash"]', "exclude_folders = [1, 2]", "filters.exclude_folders"),
    ('url = "sqlite:///state/migrator.db"', "url = 5", "state.url"),
    ('before = "2026-01-01"', 'before = "next tuesday"', "filters.before"),
    ("port = 993", "port = 70000", "source.port"),
    ("max_connections = 8", "max_connections = 0", "throttle.target.max_connections"),
    ('bytes_per_second = "40MB"', 'bytes_per_second = "40 furlongs"', "throttle.target.bytes_per_second"),
])
def test_wrong_type_or_value_names_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    assert old in text
    message = config_error(write_config(tmp_path, text=text.replace(old, new, 1)))
    assert key in message


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    message = config_error(write_config(tmp_path, text=text.replace("port = 993", 'port = "993"')))
    assert "expected int" in message and "str" in message


def test_missing_source_table(tmp_path: Path) -> None:
    text = '[target]\nkind = "imap"\nhost = "imap.new.example"\n'
    message = config_error(write_config(tmp_path, text=text))
    assert "missing" in message and "'source'" in message


def test_missing_required_host(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    message = config_error(write_config(tmp_path, text=text.replace('host = "imap.old.example"\n', "", 1)))
    assert "[source]" in message and "'host'" in message


def test_bad_kind(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    message = config_error(write_config(tmp_path, text=text.replace('kind = "imap"', 'kind = "pop3"', 1)))
    assert "source.kind" in message and "pop3" in message


def test_bad_security(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    message = config_error(write_config(tmp_path, text=text.replace('security = "starttls"', 'security = "ssl"')))
    assert "target.security" in message and "ssl" in message


def test_not_toml(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, text="[source\nkind = imap\n"))
    assert "not valid TOML" in message


def test_missing_file_names_it(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.toml")
    assert "migrator init" in message


def _insecure(host: str, extra: str = "") -> str:
    return f"""
[source]
kind = "imap"
host = "{host}"
security = "none"
{extra}

[target]
kind = "imap"
host = "127.0.0.1"
port = 1143
security = "none"
"""


def test_security_none_refused_on_a_remote_host(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, text=_insecure("imap.old.example")))
    assert "source.security" in message and "allow_insecure" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.53"])
def test_security_none_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    config = load_config(write_config(tmp_path, text=_insecure(host)))
    assert config.source.security == "none" and config.source.host == host
    assert config.source.port == 143 and config.target.port == 1143


def test_security_none_allowed_with_allow_insecure(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, text=_insecure("imap.old.example", "allow_insecure = true")))
    assert config.source.allow_insecure and config.source.security == "none"


def test_admin_user_without_password_ref(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, source_extra='admin_user = "migration-admin"'))
    assert "source.admin_user" in message and "admin_password_env" in message


def test_admin_password_env_and_file_together(tmp_path: Path) -> None:
    extra = 'admin_user = "a"\nadmin_password_env = "X"\nadmin_password_file = "pw.txt"'
    message = config_error(write_config(tmp_path, source_extra=extra))
    assert "source.admin_password_env" in message and "not both" in message


def test_secret_env_missing_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATOR_TEST_NO_SUCH_VAR", raising=False)
    path = write_config(tmp_path, source_extra='admin_user = "a"\nadmin_password_env = "MIGRATOR_TEST_NO_SUCH_VAR"')
    config = load_config(path)  # secrets are resolved only when a login needs them
    assert config.source.admin_password is not None
    with pytest.raises(UserError) as info:
        config.source.admin_password.resolve()
    message = str(info.value)
    assert "MIGRATOR_TEST_NO_SUCH_VAR" in message
    assert str(path) in message and "source.admin_password_env" in message


def test_secret_env_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATOR_TEST_ADMIN_PW", "s3cret-env")
    config = load_config(write_config(tmp_path, source_extra='admin_user = "a"\n'
                                                               'admin_password_env = "MIGRATOR_TEST_ADMIN_PW"'))
    assert config.source.admin_password is not None
    assert config.source.admin_password.resolve().reveal() == "s3cret-env"


def test_secret_file_is_read_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "admin.pw").write_text("s3cret-file\n", encoding="utf-8")
    monkeypatch.chdir("/")
    config = load_config(write_config(tmp_path, source_extra='admin_user = "a"\nadmin_password_file = "admin.pw"'))
    assert config.source.admin_user == "a"
    assert config.source.admin_password is not None
    secret = config.source.admin_password.resolve()
    assert secret.reveal() == "s3cret-file"
    assert "s3cret" not in repr(secret) and "s3cret" not in str(secret) and "s3cret" not in repr(config)


def test_secret_file_missing_names_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, source_extra='admin_user = "a"\nadmin_password_file = "missing.pw"')
    config = load_config(path)
    assert config.source.admin_password is not None
    with pytest.raises(UserError) as info:
        config.source.admin_password.resolve()
    assert "source.admin_password_file" in str(info.value) and "missing.pw" in str(info.value)


def test_graph_target_options(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="").replace(
        '[target]\nkind = "imap"\nhost = "imap.new.example"\nsecurity = "starttls"',
        '[target]\nkind = "graph"\ntenant_id = "t"\nclient_id = "c"\nclient_secret_env = "TARGET_SECRET"')
    config = load_config(write_config(tmp_path, text=text))
    assert config.target.kind == "graph" and config.target.port == 443
    assert dict(config.target.options) == {"tenant_id": "t", "client_id": "c", "client_secret_env": "TARGET_SECRET"}
    # a graph-only key on an imap endpoint is unknown there
    message = config_error(write_config(tmp_path, source_extra='tenant_id = "t"'))
    assert "source.tenant_id" in message


def test_ca_file_must_exist(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, source_extra='ca_file = "corp-ca.pem"'))
    assert "source.ca_file" in message and "corp-ca.pem" in message
    (tmp_path / "corp-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    assert load_config(write_config(tmp_path, source_extra='ca_file = "corp-ca.pem"')).source.ca_file == (
        tmp_path / "corp-ca.pem")


# --- mailboxes.csv -----------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailboxes.csv"
    path.write_text(text, encoding="utf-8")
    return path


def csv_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_mailboxes(path)
    message = str(info.value)
    assert str(path) in message, f"error does not name the file: {message}"
    return message


def test_good_mailboxes(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target,source_login,group,priority\n"
                               "Alice@Old.Example,alice@new.example,alice,sales,5\n"
                               "\n"
                               "bob@old.example,robert@new.example,,sales,\n"
                               "carol@old.example,carol@new.example,,,-2\n")
    entries = load_mailboxes(path)
    assert [e.source for e in entries] == ["alice@old.example", "bob@old.example", "carol@old.example"]
    assert entries[0].target == "alice@new.example" and entries[0].source_login == "alice"
    assert entries[0].group == "sales" and entries[0].priority == 5
    assert entries[1].source_login is None and entries[1].priority == 0 and entries[1].target == "robert@new.example"
    assert entries[2].group is None and entries[2].priority == -2
    assert entries[0].source_access().user == "alice" and entries[1].source_access().user == "bob@old.example"


def test_bom_and_spaces_in_header_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.csv"
    path.write_bytes("\ufeffsource , target\r\na@old.example,a@new.example\r\n".encode())
    assert [(e.source, e.target) for e in load_mailboxes(path)] == [("a@old.example", "a@new.example")]


def test_missing_required_column(tmp_path: Path) -> None:
    message = csv_error(write_csv(tmp_path, "target,group\na@new.example,g\n"))
    assert f"{tmp_path / 'mailboxes.csv'}:1:" in message and "'source'" in message and "missing" in message


def test_target_comes_from_the_domain_rewrite_where_the_csv_gives_none(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target\na@old.example,\nb@old.example,bee@elsewhere.example\nc@other.example,\n")
    mapping = MappingConfig({"old.example": "new.example"}, {})
    with pytest.raises(UserError, match=r"mailboxes.csv:4: no target for c@other.example"):
        load_mailboxes(path, mapping)
    path.write_text("source\na@old.example\nb@Old.Example\n", encoding="utf-8")
    assert [e.target for e in load_mailboxes(path, mapping)] == ["a@new.example", "b@new.example"]


def test_unknown_column_is_named(tmp_path: Path) -> None:
    message = csv_error(write_csv(tmp_path, "source,target,department\na@old.example,a@new.example,x\n"))
    assert ":1:" in message and "'department'" in message and "unknown column" in message


@pytest.mark.parametrize(("row", "column", "bad"), [
    ("not-an-address,a@new.example", "source", "not-an-address"),
    ("a@old.example,a@@new", "target", "a@@new"),
])
def test_bad_address_names_line_and_column(tmp_path: Path, row: str, column: str, bad: str) -> None:
    path = write_csv(tmp_path, f"source,target\nok@old.example,ok@new.example\n{row}\n")
    message = csv_error(path)
    assert f"{path}:3:" in message and f"column {column!r}" in message and repr(bad) in message


def test_duplicate_source_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target\na@old.example,a@new.example\nb@old.example,b@new.example\n"
                               "A@OLD.example,other@new.example\n")
    message = csv_error(path)
    assert f"{path}:4:" in message and "a@old.example" in message and "listed twice" in message
    assert "line 2" in message


def test_priority_not_a_number(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target,priority\na@old.example,a@new.example,high\n")
    message = csv_error(path)
    assert f"{path}:2:" in message and "'priority'" in message and "'high'" in message


def test_too_many_cells(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target\na@old.example,a@new.example,extra\n")
    assert f"{path}:2:" in csv_error(path)


def test_header_only_and_empty_files(tmp_path: Path) -> None:
    assert "no mailboxes" in csv_error(write_csv(tmp_path, "source,target\n"))
    assert "header" in csv_error(write_csv(tmp_path, ""))
    assert "no such mailbox list" in csv_error(tmp_path / "absent.csv")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.csv"
    path.write_bytes(b"source,target\nj\xf6rg@old.example,j@new.example\n")
    assert "UTF-8" in csv_error(path)


def test_password_cells_plain_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATOR_TEST_BOB_PW", "bob-env-pw")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "carol.pw").write_text("carol-file-pw\n", encoding="utf-8")
    path = write_csv(tmp_path, "source,target,source_password,target_password\n"
                               "alice@old.example,alice@new.example,alice-plain-pw,\n"
                               "bob@old.example,bob@new.example,env:MIGRATOR_TEST_BOB_PW,file:secrets/carol.pw\n")
    monkeypatch.chdir("/")
    alice, bob = load_mailboxes(path)
    assert alice.source_password == Secret("alice-plain-pw") and alice.target_password is None
    assert bob.source_password is not None and bob.source_password.reveal() == "bob-env-pw"
    assert bob.target_password is not None and bob.target_password.reveal() == "carol-file-pw"
    for entry in (alice, bob):
        shown = repr(entry) + str(entry) + repr(entry.source_access()) + repr(entry.target_access())
        for password in ("alice-plain-pw", "bob-env-pw", "carol-file-pw"):
            assert password not in shown
    assert repr(alice.source_password) == "Secret('***')" and str(alice.source_password) == "Secret('***')"


def test_password_env_cell_missing_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATOR_TEST_MISSING_PW", raising=False)
    path = write_csv(tmp_path, "source,target,target_password\n"
                               "a@old.example,a@new.example,env:MIGRATOR_TEST_MISSING_PW\n")
    message = csv_error(path)
    assert f"{path}:2:" in message and "target_password" in message and "MIGRATOR_TEST_MISSING_PW" in message


def test_password_file_cell_missing_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "source,target,source_password\na@old.example,a@new.example,file:nope.pw\n")
    message = csv_error(path)
    assert f"{path}:2:" in message and "source_password" in message and "nope.pw" in message


def test_toml_datetime_filter_is_a_date_or_refused(tmp_path: Path) -> None:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="")
    path = write_config(tmp_path, text=text.replace('before = "2026-01-01"', "before = 2026-01-01T00:00:00"))
    try:
        config = load_config(path)
    except UserError as exc:  # refusing it, naming the key, is a fix too
        assert "filters.before" in str(exc)
        return
    assert passes_filters(MessageRef("1", 10, frozenset(), datetime(2025, 6, 1, 12, 0)), config.filters)
    assert not passes_filters(MessageRef("2", 10, frozenset(), datetime(2026, 6, 1, 12, 0)), config.filters)


def test_parse_size_decimal_fractions_are_exact() -> None:
    assert parse_size("1.005KB", "where") == 1005


# --- app credentials (graph, imap with auth = "xoauth2") -------------------------------------------------


def _graph_target(tmp_path: Path, keys: str) -> Path:
    text = BASE.format(source_extra="", target_extra="", throttle_extra="", top_extra="").replace(
        '[target]\nkind = "imap"\nhost = "imap.new.example"\nsecurity = "starttls"',
        f'[target]\nkind = "graph"\n{keys}')
    return write_config(tmp_path, text=text)


@pytest.mark.parametrize(("keys", "expected"), [
    ('client_id = "c"\nclient_secret_env = "S"', "[target] is missing required key 'tenant_id'"),
    ('tenant_id = "t"\nclient_secret_env = "S"', "[target] is missing required key 'client_id'"),
    ('tenant_id = "t"\nclient_id = "c"',
     "[target] needs one of client_secret_env, client_secret_file, client_certificate_file"),
    ('tenant_id = "t"\nclient_id = "c"\nclient_secret_env = "S"\nclient_certificate_file = "app.pem"',
     "target.client_certificate_file: give only one of"),
    ('tenant_id = "t"\nclient_id = "c"\nclient_certificate_file = "missing.pem"',
     "target.client_certificate_file: no such file"),
    ('tenant_id = "t"\nclient_id = "c"\nclient_secret_env = "S"\nauthority = "http://login.example/t"',
     "target.authority: 'http://login.example/t' must be an https:// URL"),
])
def test_graph_app_credentials_are_checked_at_load(tmp_path: Path, keys: str, expected: str) -> None:
    (tmp_path / "app.pem").write_text("pem")
    message = config_error(_graph_target(tmp_path, keys))
    assert expected in message and "\n" not in message


def test_graph_credential_files_are_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "app.pem").write_text("pem")
    keys = 'tenant_id = "t"\nclient_id = "c"\n'
    config = load_config(_graph_target(tmp_path, keys + 'client_certificate_file = "app.pem"'))
    assert config.target.options["client_certificate_file"] == str(tmp_path / "app.pem")
    config = load_config(_graph_target(tmp_path, keys + 'client_secret_file = "s/secret"'))
    assert config.target.options["client_secret_file"] == str(tmp_path / "s" / "secret")


def test_imap_xoauth2_takes_app_credentials(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, source_extra='auth = "xoauth2"\ntenant_id = "t"\nclient_id = "c"\n'
                                                             'client_secret_env = "S"\nauthority = "https://l.example/t"'))
    assert dict(config.source.options) == {"auth": "xoauth2", "tenant_id": "t", "client_id": "c",
                                           "client_secret_env": "S", "authority": "https://l.example/t"}
    assert load_config(write_config(tmp_path)).source.options.get("auth", "password") == "password"


@pytest.mark.parametrize(("extra", "expected"), [
    ('auth = "oauth"', "source.auth: 'oauth' is not one of password, xoauth2"),
    ('auth = "xoauth2"\nclient_id = "c"\nclient_secret_env = "S"', "[source] is missing required key 'tenant_id'"),
    ('auth = "xoauth2"\ntenant_id = "t"\nclient_id = "c"', "[source] needs one of client_secret_env"),
    ('auth = "password"\nclient_id = "c"', 'source.client_id: only used with auth = "xoauth2"'),
    ('auth = "xoauth2"\ntenant_id = "t"\nclient_id = "c"\nclient_secret_env = "S"\nadmin_user = "a"\n'
     'admin_password_env = "P"', 'source.admin_user: not used with auth = "xoauth2"'),
])
def test_imap_auth_mode_is_checked_at_load(tmp_path: Path, extra: str, expected: str) -> None:
    message = config_error(write_config(tmp_path, source_extra=extra))
    assert expected in message and "\n" not in message
