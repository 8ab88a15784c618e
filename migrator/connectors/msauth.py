"""App-only access tokens from the Microsoft identity platform, through msal (client credentials grant).

One TokenSource per endpoint and scope, shared by every worker thread of that endpoint. msal keeps the token
in its cache and treats a token with less than 5 minutes left as expired, so `token()` is cheap and hands out
a fresh token well before the old one runs out. After the resource refuses a token (HTTP 401, an IMAP
AUTHENTICATE failure), `invalidate(token)` drops it from msal's cache and the next `token()` asks for a new
one (msal's acquire_token_for_client has no force_refresh).

Credentials: a client secret (from an environment variable or a file, never from the TOML) or a certificate
(`client_certificate_file`, a PEM file with the private key and the certificate; msal signs the client
assertion with the key and computes the certificate's thumbprints). The secret never appears in a message,
a repr or a log line of ours.

TLS: msal's HTTP client is `requests`, and `requests` lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a
`verify=` argument. msal gets its own session with `trust_env = False`, verifying against the endpoint's
`ca_file` when one is set and requests' default CA bundle otherwise (TESTING.md, "Microsoft Graph and msal").
Proxy variables are therefore not honoured for the token requests either.
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from migrator.config import EndpointConfig, SecretRef
from migrator.errors import AuthFailed, MigratorError, Transient, Unreachable, UserError
from migrator.model import Secret

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
IMAP_SCOPE = "https://outlook.office365.com/.default"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com/{tenant_id}"
# Token endpoint errors worth retrying (RFC 6749 section 5.2 and Entra's 5xx answers); anything else means the
# app registration, its credentials or its consent are wrong, which no retry fixes.
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_AADSTS = re.compile(r"AADSTS\d+:[^\r\n]*?\.(?=\s|$)|AADSTS\d+:[^\r\n]*")


class TokenSource:
    """App-only (client credentials) token for one endpoint and one scope, through msal.

    Thread-safe: one lock serialises msal calls, so when a token runs out exactly one thread fetches the next
    one and the others wait for it. Nothing touches the network until the first `token()`.
    """

    def __init__(self, config: EndpointConfig, scope: str) -> None:
        self.config = config
        self.scope = scope
        options = config.options
        self.tenant_id = str(options.get("tenant_id") or "")
        self.client_id = str(options.get("client_id") or "")
        if not self.tenant_id or not self.client_id:
            raise UserError(f"{config.describe()}: app-only tokens need tenant_id and client_id in [{config.role}]")
        self.authority = str(options.get("authority") or DEFAULT_AUTHORITY.format(tenant_id=self.tenant_id))
        self.authority = self.authority.rstrip("/")
        self._context = f"{config.role} endpoint: token for {scope} from {self.authority}"
        self._lock = threading.Lock()
        self._app: Any = None
        self._secret: Secret | None = None

    def __repr__(self) -> str:
        return f"<TokenSource {self.config.role} app {self.client_id} tenant {self.tenant_id} scope {self.scope}>"

    __str__ = __repr__

    def token(self) -> str:
        """A valid access token (from msal's cache while it has 5 minutes or more left).

        Raises AuthFailed (unknown tenant or app, wrong secret or certificate, missing consent), Unreachable
        (connection refused, TLS failure, timeout), Transient (the identity platform failed or throttled) or
        UserError (the secret's environment variable or file, or the certificate file, is unusable).
        """
        with self._lock:
            app = self._application()
            try:
                result = app.acquire_token_for_client(scopes=[self.scope])
            except (requests.RequestException, msal.exceptions.MsalServiceError, ValueError) as exc:
                raise self._failure(exc) from None
            if isinstance(result, dict) and result.get("access_token"):
                return str(result["access_token"])
            raise self._refused(result if isinstance(result, dict) else {})

    def invalidate(self, token: str) -> None:
        """Forget `token` (the resource refused it): the next `token()` fetches a new one."""
        with self._lock:
            if self._app is None:
                return
            cache = self._app.token_cache
            for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if item.get("secret") == token:
                    cache.remove_at(item)

    # ---------------------------------------------------------------------------------------- internals

    def _credential(self) -> str | dict[str, str]:
        options = self.config.options
        certificate = options.get("client_certificate_file")
        if certificate:
            return _certificate_credential(Path(certificate), f"[{self.config.role}] client_certificate_file")
        if options.get("client_secret_env"):
            ref = SecretRef(f"[{self.config.role}] client_secret_env", env=str(options["client_secret_env"]))
        elif options.get("client_secret_file"):
            ref = SecretRef(f"[{self.config.role}] client_secret_file", file=Path(options["client_secret_file"]))
        else:
            raise UserError(f"{self.config.describe()}: set client_secret_env, client_secret_file or "
                            f"client_certificate_file in [{self.config.role}]")
        self._secret = ref.resolve()
        return self._secret.reveal()

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        credential = self._credential()
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override verify= (TESTING.md)
        session.verify = str(self.config.ca_file) if self.config.ca_file else True
        # msal applies its own timeout only to the session it creates itself.
        session.request = functools.partial(session.request, timeout=self.config.timeout)  # type: ignore[method-assign]
        try:
            self._app = msal.ConfidentialClientApplication(
                self.client_id, client_credential=credential, authority=self.authority, instance_discovery=False,
                http_client=session, token_cache=msal.TokenCache())
        except (requests.RequestException, msal.exceptions.MsalServiceError, RuntimeError) as exc:
            raise self._failure(exc) from None
        except ValueError as exc:  # msal's wording for an OpenID configuration it could not get (4xx)
            if "authority configuration" in str(exc) or "OIDC" in str(exc):
                raise AuthFailed(f"{self._context}: the identity platform does not know tenant {self.tenant_id} "
                                 f"(no OpenID configuration at {self.authority}/v2.0)") from None
            raise UserError(f"{self._context}: {self._scrub(_first_line(str(exc)))}") from None
        return self._app

    def _failure(self, exc: BaseException) -> MigratorError:
        if isinstance(exc, requests.exceptions.SSLError):
            return Unreachable(f"{self._context}: TLS handshake failed ({_network_reason(exc)}); set ca_file in "
                               f"[{self.config.role}] if the identity platform's certificate comes from a private CA")
        if isinstance(exc, requests.exceptions.Timeout):
            return Unreachable(f"{self._context}: timed out after {self.config.timeout:g} s")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return Unreachable(f"{self._context}: cannot connect: {_network_reason(exc)}")
        return Transient(f"{self._context}: the identity platform failed: "
                         f"{self._scrub(_first_line(str(exc))) or type(exc).__name__}")

    def _refused(self, result: dict[str, Any]) -> MigratorError:
        error = str(result.get("error") or "no access_token in the response")
        description = str(result.get("error_description") or "")
        found = _AADSTS.search(description)
        detail = found.group(0).strip() if found else _first_line(description)
        message = self._scrub(f"{self._context}: refused: {error}" + (f" ({detail})" if detail else ""))
        if error in _TRANSIENT_ERRORS:
            return Transient(message)
        return AuthFailed(message)

    def _scrub(self, text: str) -> str:
        """Belt and braces: whatever msal or the server put in a message, our messages never show the secret."""
        if self._secret is not None and self._secret.reveal():
            text = text.replace(self._secret.reveal(), "***")
        return text


def _certificate_credential(path: Path, where: str) -> dict[str, str]:
    """msal's certificate credential from a PEM file holding the private key and the certificate: msal signs
    the client assertion with the key and derives the thumbprint headers from the certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UserError(f"{where}: {path} holds no unencrypted PEM private key") from None
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise UserError(f"{where}: {path} holds no PEM certificate") from None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"private_key": key_pem.decode(), "public_certificate":
            certificate.public_bytes(serialization.Encoding.PEM).decode()}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _network_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 connection error (they nest three exceptions deep)."""
    text = str(exc)
    for pattern in (r"certificate verify failed: ([^(')\"]+)", r"\[SSL: ([A-Z_]+)\]", r"\[Errno -?\d+\] ([^'\")]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return type(exc).__name__
