"""TokenSource: msal, for real, against the simulated Microsoft identity platform over HTTPS (tests/mssim).

Covers both credentials of the client credentials grant (secret, certificate), msal's cache and its 5-minute
rule, invalidation after a refused token, the translation of every failure into migrator's error classes, and
that the secret never shows in a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]
import pytest
import requests

from migrator.config import EndpointConfig
from migrator.connectors.msauth import GRAPH_SCOPE, IMAP_SCOPE, TokenSource
from migrator.errors import AuthFailed, Unreachable, UserError
from migrator.lab.dovecot import free_port
from tests.mssim.identity import GRAPH, OUTLOOK, AppCertificate, IdentityPlatform, InvalidToken
from tests.mssim.tls import TestCA

TENANT = "8f3c5a4e-1d2b-4c6a-9e7f-0a1b2c3d4e5f"
CLIENT = "3a1f9b2c-7d4e-4f5a-8b6c-9d0e1f2a3b4c"
SECRET = "Zq8~s3cr3t-Value_that.must-never.leak"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def platform(ca: TestCA) -> Iterator[IdentityPlatform]:
    with IdentityPlatform(ca) as running:
        running.register_app(TENANT, CLIENT, secret=SECRET)
        yield running


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MIGRATOR_TEST_CLIENT_SECRET", SECRET)
    return "MIGRATOR_TEST_CLIENT_SECRET"


def endpoint(ca_file: Path | None, role: str = "target", kind: str = "graph", timeout: float = 10,
             **options: Any) -> EndpointConfig:
    return EndpointConfig(role, kind, "", 443, "tls", None, None, ca_file, False, timeout, options)


def secret_source(platform: IdentityPlatform, ca: TestCA, env: str, scope: str = GRAPH_SCOPE,
                  **overrides: Any) -> TokenSource:
    options = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_env": env,
               "authority": platform.authority(TENANT), **overrides}
    return TokenSource(endpoint(ca.ca_path, **options), scope)


def test_secret_credential_gets_a_graph_token_and_caches_it(platform: IdentityPlatform, ca: TestCA,
                                                             secret_env: str) -> None:
    source = secret_source(platform, ca, secret_env)
    token = source.token()
    claims = platform.validate(token, GRAPH)
    assert (claims["aud"], claims["tid"], claims["appid"], claims["idtyp"]) == (GRAPH, TENANT, CLIENT, "app")
    assert platform.tokens_issued == 1
    assert source.token() == token and platform.tokens_issued == 1  # msal's cache, no second request
    with pytest.raises(InvalidToken):
        platform.validate(token, OUTLOOK)


def test_imap_scope_gives_an_exchange_audience(platform: IdentityPlatform, ca: TestCA, secret_env: str) -> None:
    token = secret_source(platform, ca, secret_env, IMAP_SCOPE).token()
    assert platform.validate(token, OUTLOOK)["roles"] == ["IMAP.AccessAsApp", "full_access_as_app"]


def test_secret_from_a_file(platform: IdentityPlatform, ca: TestCA, tmp_path: Path) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")
    options = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_file": str(secret_file),
               "authority": platform.authority(TENANT)}
    assert platform.validate(TokenSource(endpoint(ca.ca_path, **options), GRAPH_SCOPE).token())


def test_certificate_credential(platform: IdentityPlatform, ca: TestCA, tmp_path: Path) -> None:
    """msal signs the client assertion (PS256, x5t#S256) with the key; the platform checks it with the
    registered certificate."""
    certificate = AppCertificate.generate()
    platform.register_app(TENANT, "cert-app", certificate_pem=certificate.certificate_pem)
    pem = tmp_path / "app.pem"
    pem.write_bytes(certificate.pem)
    options = {"tenant_id": TENANT, "client_id": "cert-app", "client_certificate_file": str(pem),
               "authority": platform.authority(TENANT)}
    source = TokenSource(endpoint(ca.ca_path, **options), IMAP_SCOPE)
    assert platform.validate(source.token(), OUTLOOK)["appid"] == "cert-app"
    # another certificate than the registered one is refused as Entra refuses it
    other = tmp_path / "other.pem"
    other.write_bytes(AppCertificate.generate().pem)
    wrong = TokenSource(endpoint(ca.ca_path, **{**options, "client_certificate_file": str(other)}), IMAP_SCOPE)
    with pytest.raises(AuthFailed, match=r"invalid_client \(AADSTS700027"):
        wrong.token()


def test_platform_accepts_the_legacy_rs256_sha1_assertion(platform: IdentityPlatform, ca: TestCA) -> None:
    """The earlier certificate-credentials page (and ADFS): RS256 with x5t, the SHA-1 thumbprint."""
    certificate = AppCertificate.generate()
    platform.register_app(TENANT, "legacy-app", certificate_pem=certificate.certificate_pem)
    session = requests.Session()
    session.trust_env, session.verify = False, str(ca.ca_path)
    app = msal.ConfidentialClientApplication(
        "legacy-app", authority=platform.authority(TENANT), instance_discovery=False, http_client=session,
        client_credential={"private_key": certificate.pem.decode(), "thumbprint": certificate.sha1_thumbprint})
    result = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert platform.validate(result["access_token"])["appid"] == "legacy-app"


def test_a_token_with_less_than_five_minutes_left_is_replaced(platform: IdentityPlatform, ca: TestCA,
                                                              secret_env: str) -> None:
    platform.token_lifetime = 240
    source = secret_source(platform, ca, secret_env)
    first, second = source.token(), source.token()
    assert first != second and platform.tokens_issued == 2
    platform.token_lifetime = 3599
    third = source.token()
    assert source.token() == third and platform.tokens_issued == 3


def test_invalidate_gets_a_fresh_token(platform: IdentityPlatform, ca: TestCA, secret_env: str) -> None:
    source = secret_source(platform, ca, secret_env)
    source.invalidate("a token it never had")  # before any token: nothing to forget, no error
    first = source.token()
    source.invalidate("another token")
    assert source.token() == first and platform.tokens_issued == 1
    source.invalidate(first)
    second = source.token()
    assert second != first and platform.tokens_issued == 2
    assert source.token() == second


def test_threads_share_one_token(platform: IdentityPlatform, ca: TestCA, secret_env: str) -> None:
    source = secret_source(platform, ca, secret_env)
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(source.token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 8 and len(set(tokens)) == 1 and platform.tokens_issued == 1


def test_wrong_secret_is_a_one_line_auth_failure_without_the_secret(
        platform: IdentityPlatform, ca: TestCA, secret_env: str, caplog: pytest.LogCaptureFixture) -> None:
    platform.register_app(TENANT, CLIENT, secret="the-new-secret-after-rotation")
    source = secret_source(platform, ca, secret_env)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthFailed) as caught:
        source.token()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("target endpoint: token for https://graph.microsoft.com")
    assert "invalid_client (AADSTS7000215: Invalid client secret provided.)" in message
    shown = [message, repr(caught.value), repr(source), str(source), repr(source.config), caplog.text]
    assert not any(SECRET in text for text in shown)


@pytest.mark.parametrize(("tenant", "client", "scope", "expected"), [
    ("unknown-tenant", CLIENT, GRAPH_SCOPE, "does not know tenant unknown-tenant"),
    (TENANT, "unknown-app", GRAPH_SCOPE, r"unauthorized_client \(AADSTS700016"),
    (TENANT, CLIENT, "https://example.com/.default", r"invalid_scope \(AADSTS70011"),
])
def test_unknown_tenant_app_or_scope_is_auth_failed(platform: IdentityPlatform, ca: TestCA, secret_env: str,
                                                    tenant: str, client: str, scope: str, expected: str) -> None:
    options = {"tenant_id": tenant, "client_id": client, "client_secret_env": secret_env,
               "authority": platform.authority(tenant)}
    with pytest.raises(AuthFailed, match=expected) as caught:
        TokenSource(endpoint(ca.ca_path, role="source", **options), scope).token()
    assert "\n" not in str(caught.value) and str(caught.value).startswith("source endpoint")
    assert SECRET not in str(caught.value)


def test_unreachable_authority(ca: TestCA, secret_env: str) -> None:
    options = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_env": secret_env,
               "authority": f"https://127.0.0.1:{free_port()}/{TENANT}"}
    with pytest.raises(Unreachable, match="cannot connect: Connection refused"):
        TokenSource(endpoint(ca.ca_path, **options), GRAPH_SCOPE).token()


def test_identity_platform_with_an_untrusted_ca_is_unreachable(platform: IdentityPlatform, secret_env: str) -> None:
    """Without ca_file the test CA is not trusted, even though REQUESTS_CA_BUNDLE may be set."""
    options = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_env": secret_env,
               "authority": platform.authority(TENANT)}
    with pytest.raises(Unreachable, match=r"TLS handshake failed .*set ca_file in \[target\]") as caught:
        TokenSource(endpoint(None, **options), GRAPH_SCOPE).token()
    assert "\n" not in str(caught.value)
    assert platform.token_requests == 0


def test_missing_secret_variable_is_a_user_error(platform: IdentityPlatform, ca: TestCA,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATOR_TEST_NO_SUCH_SECRET", raising=False)
    source = secret_source(platform, ca, "MIGRATOR_TEST_NO_SUCH_SECRET")
    with pytest.raises(UserError, match="client_secret_env: environment variable MIGRATOR_TEST_NO_SUCH_SECRET"):
        source.token()


def test_certificate_file_without_a_key_is_a_user_error(platform: IdentityPlatform, ca: TestCA,
                                                        tmp_path: Path) -> None:
    pem = tmp_path / "cert-only.pem"
    pem.write_bytes(AppCertificate.generate().certificate_pem)
    options = {"tenant_id": TENANT, "client_id": CLIENT, "client_certificate_file": str(pem)}
    with pytest.raises(UserError, match=r"client_certificate_file: .*cert-only\.pem holds no unencrypted PEM private"):
        TokenSource(endpoint(ca.ca_path, **options), GRAPH_SCOPE).token()


def test_default_authority_is_microsoft_entra(secret_env: str) -> None:
    source = TokenSource(endpoint(None, tenant_id=TENANT, client_id=CLIENT, client_secret_env=secret_env),
                         GRAPH_SCOPE)
    assert source.authority == f"https://login.microsoftonline.com/{TENANT}"
    with pytest.raises(UserError, match="tenant_id and client_id"):
        TokenSource(endpoint(None, client_id=CLIENT, client_secret_env=secret_env), GRAPH_SCOPE)
