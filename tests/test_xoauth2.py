"""IMAP with SASL XOAUTH2 and an app-only token, against a real Dovecot 2.3 whose oauth2 passdb asks the
simulated Microsoft identity platform (tests/mssim/identity.py) about every token.

The real parts: msal fetching the token over HTTPS from the simulator, imapclient's AUTHENTICATE XOAUTH2
exchange (including the server's JSON error challenge and our empty answer to it), and Dovecot's oauth2
passdb posting the token to the simulator's RFC 7662 introspection endpoint (``introspection_mode = post``)
over HTTPS with ``tls_ca_cert_file``. Dovecot accepts only tokens the platform issued for
https://outlook.office365.com that have not expired; like Exchange Online's application access, a valid app
token opens any mailbox, the SASL user says which (see ``DovecotServer._oauth2_passdb``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.config import EndpointConfig
from migrator.connectors.imap import ImapEndpoint
from migrator.connectors.msauth import GRAPH_SCOPE, TokenSource
from migrator.errors import AuthFailed
from migrator.lab.dovecot import DovecotServer, LabUser
from migrator.model import Login
from tests.mssim.identity import OUTLOOK, IdentityPlatform, InvalidToken
from tests.mssim.tls import TestCA

TENANT = "0d5e8c1a-2b3f-4a6d-8e9c-1f2a3b4c5d6e"
CLIENT = "7c2e4a6b-8d0f-4e1a-9b3c-5d7e9f1a2b3c"
SECRET = "xo~Secret.value-kept_out-of-every-message"
SECRET_ENV = "MIGRATOR_TEST_XOAUTH2_SECRET"
USERS = [LabUser("alice", "alice-pw"), LabUser("bob", "bob-pw")]


@pytest.fixture
def ca(lab_root: Path) -> TestCA:
    return TestCA(lab_root / "ca")  # under lab_root: Dovecot's auth process reads it as the dovecot user


@pytest.fixture
def platform(ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityPlatform]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with IdentityPlatform(ca) as running:
        running.register_app(TENANT, CLIENT, secret=SECRET)
        yield running


@pytest.fixture
def server(dovecot: None, lab_root: Path, platform: IdentityPlatform, ca: TestCA) -> Iterator[DovecotServer]:
    with DovecotServer(root=lab_root / "imap", name="xoauth2", layout="target", users=USERS,
                       oauth2_introspection_url=platform.introspection_url, oauth2_ca_file=ca.ca_path) as running:
        yield running


def xoauth2_endpoint(server: DovecotServer, platform: IdentityPlatform, ca: TestCA) -> ImapEndpoint:
    options = {"auth": "xoauth2", "tenant_id": TENANT, "client_id": CLIENT, "client_secret_env": SECRET_ENV,
               "authority": platform.authority(TENANT)}
    return ImapEndpoint(EndpointConfig("target", "imap", server.host, server.port, "none", None, None, ca.ca_path,
                                       False, 10, options))


def folders_of(endpoint: ImapEndpoint, user: str) -> set[str]:
    with endpoint.session(Login(f"{user}@new.example", user), write=False) as mailbox:
        return {folder.path for folder in mailbox.list_folders(sizes=False)}


def test_app_token_opens_every_mailbox(server: DovecotServer, platform: IdentityPlatform, ca: TestCA) -> None:
    endpoint = xoauth2_endpoint(server, platform, ca)
    assert {"INBOX", "Sent Items", "Deleted Items"} <= folders_of(endpoint, "alice")
    assert "INBOX" in folders_of(endpoint, "bob")
    assert platform.tokens_issued == 1 and platform.introspections == 2  # one token, checked at each login
    probe = endpoint.probe(on_behalf_of="alice")
    assert probe.admin_login and "AUTH=XOAUTH2" not in probe.capabilities  # post-login capabilities


def test_token_for_another_audience_is_refused(server: DovecotServer, platform: IdentityPlatform,
                                               ca: TestCA) -> None:
    """A Graph token at the IMAP server: refused, retried once with a fresh (Graph) token, then AuthFailed."""
    endpoint = xoauth2_endpoint(server, platform, ca)
    endpoint.tokens = TokenSource(endpoint.config, GRAPH_SCOPE)
    with pytest.raises(AuthFailed) as caught:
        folders_of(endpoint, "alice")
    message = str(caught.value)
    assert message == (f"target imap://127.0.0.1:{server.port} as alice: login refused: "
                       f"[AUTHENTICATIONFAILED] Authentication failed.")
    assert platform.tokens_issued == 2 and platform.introspections == 2


def test_expired_token_is_replaced(server: DovecotServer, platform: IdentityPlatform, ca: TestCA) -> None:
    """A 3-second token: msal fetches a new one for the next login by itself (less than 5 minutes left).
    Three seconds, not one: on a loaded machine a login can take longer than a second, and a token that
    expires between issue and use would be refused and replaced once more."""
    platform.token_lifetime = 3
    endpoint = xoauth2_endpoint(server, platform, ca)
    assert "INBOX" in folders_of(endpoint, "alice")
    first = endpoint.tokens.token() if endpoint.tokens else ""
    time.sleep(3.2)
    with pytest.raises(InvalidToken, match="expired"):
        platform.validate(first, OUTLOOK)
    assert "INBOX" in folders_of(endpoint, "alice")
    assert platform.tokens_issued == 3 and platform.introspections == 2  # no login was refused


def test_token_expired_on_the_server_is_retried_with_a_fresh_one(server: DovecotServer, platform: IdentityPlatform,
                                                                  ca: TestCA) -> None:
    """The server's clock says the cached token has expired (skew, early revocation) while msal still trusts
    it: the first AUTHENTICATE is refused, the token is invalidated and the second attempt succeeds."""
    endpoint = xoauth2_endpoint(server, platform, ca)
    assert "INBOX" in folders_of(endpoint, "alice")
    platform.advance_clock(3600)
    assert "INBOX" in folders_of(endpoint, "alice")
    assert platform.tokens_issued == 2 and platform.introspections == 3


def write_project(project: Path, server: DovecotServer, platform: IdentityPlatform, ca: TestCA) -> None:
    project.mkdir()
    (project / "migrator.toml").write_text(f"""
[source]
kind = "imap"
host = "127.0.0.1"
port = {server.port}
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = {server.port}
security = "none"
auth = "xoauth2"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret_env = "{SECRET_ENV}"
authority = "{platform.authority(TENANT)}"
ca_file = "{ca.ca_path}"
""", encoding="utf-8")
    (project / "mailboxes.csv").write_text("source,target,source_login,source_password,target_login\n"
                                           "alice@old.example,alice@new.example,alice,alice-pw,alice\n"
                                           "bob@old.example,bob@new.example,bob,bob-pw,bob\n", encoding="utf-8")


def migrator(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=project, capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


def test_check_logs_in_with_xoauth2(server: DovecotServer, platform: IdentityPlatform, ca: TestCA,
                                    lab_root: Path) -> None:
    project = lab_root / "project"
    write_project(project, server, platform, ca)
    result = migrator(project, "check", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"target: 127.0.0.1:{server.port} reachable (none), admin login on behalf of alice ok" in result.stdout
    assert [line.split(" (")[0] for line in lines if line.startswith("target: login as")] == [
        "target: login as alice ok", "target: login as bob ok"]
    assert platform.tokens_issued == 1  # one process, one token for every login


def test_check_with_a_wrong_secret_is_exit_3_without_the_secret(server: DovecotServer, platform: IdentityPlatform,
                                                                ca: TestCA, lab_root: Path) -> None:
    platform.register_app(TENANT, CLIENT, secret="rotated-" + SECRET)
    project = lab_root / "project"
    write_project(project, server, platform, ca)
    result = migrator(project, "check")
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("migrator: error: target endpoint: token for https://outlook.office365.com")
    assert "invalid_client (AADSTS7000215" in errors[0]
    assert SECRET not in result.stdout + result.stderr
