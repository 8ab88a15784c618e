"""A simulated Microsoft identity platform (Microsoft Entra ID token endpoint) on 127.0.0.1, over HTTPS.

msal runs for real against it: msal refuses a non-https authority, then asks for
``{authority}/v2.0/.well-known/openid-configuration`` and posts the client credentials grant to the
``token_endpoint`` named there (TESTING.md, "Microsoft Graph and msal").

What is reproduced, and from where:

* The client credentials grant, as documented in "Microsoft identity platform and the OAuth 2.0 client
  credentials flow" (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
  ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, ``client_id``, ``scope`` (the
  resource's application ID URI plus ``/.default``; all scopes for a single resource) and either
  ``client_secret`` or ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` with
  ``client_assertion``. A success is ``{"token_type": "Bearer", "expires_in": 3599, "access_token": ...}``; no
  refresh token is ever granted by this flow. An error is a JSON object with ``error``, ``error_description``
  (which starts with the ``AADSTSnnnnn`` code), ``error_codes``, ``timestamp``, ``trace_id`` and
  ``correlation_id``; the page shows ``400 Bad Request`` with ``invalid_scope``/AADSTS70011.
* Failed client authentication is ``invalid_client`` with HTTP 401, as RFC 6749 section 5.2 allows and as
  Entra answers (AADSTS7000215 "Invalid client secret provided"; AADSTS700027 for a client assertion whose
  signature or key does not check out). An application id unknown in the tenant is ``unauthorized_client``
  AADSTS700016, an unknown tenant ``invalid_tenant`` AADSTS90002 (HTTP 400, also from the OpenID
  configuration document, which makes msal fail before any token request). The codes are Entra's; which
  HTTP status goes with the last three is our reading of observed behaviour, not a documented table.
* Certificate credentials, as documented in "Microsoft identity platform application authentication
  certificate credentials" (https://learn.microsoft.com/entra/identity-platform/certificate-credentials): the
  assertion is a JWT signed with the private key of a certificate registered on the app. Header ``alg``
  ``PS256`` with ``x5t#S256`` (base64url SHA-256 thumbprint of the certificate's DER encoding; the current
  page) or, in the earlier version of that page and for ADFS, ``RS256`` with ``x5t`` (base64url SHA-1
  thumbprint). Claims: ``aud`` = the tenant's token endpoint, ``iss`` = ``sub`` = the client id, ``exp``,
  ``nbf``, ``iat``, ``jti``. msal 1.39 sends PS256/x5t#S256 when given the certificate and RS256/x5t when given
  only a SHA-1 thumbprint; both are accepted here, and the signature is verified with the registered
  certificate's public key.
* Access tokens are JWTs with the claims an app-only Graph or Exchange token carries (``aud``, ``iss``,
  ``tid``, ``appid``, ``idtyp = app``, ``roles``, ``iat``, ``nbf``, ``exp``). Real ones are signed RS256 with
  Microsoft's keys and clients must treat them as opaque; these are HS256 with a key only the simulator knows,
  so only :meth:`IdentityPlatform.validate` (or the introspection endpoint) can accept them.
* ``scope=https://graph.microsoft.com/.default`` gives audience ``https://graph.microsoft.com``,
  ``scope=https://outlook.office365.com/.default`` gives ``https://outlook.office365.com`` (IMAP, POP and EWS
  with application permissions); any other scope is ``invalid_scope``.

Not Microsoft's, but needed to test IMAP XOAUTH2 against a real Dovecot: ``POST /introspect`` is an RFC 7662
token introspection endpoint for Dovecot's ``oauth2`` passdb (``introspection_mode = post``). It accepts only
tokens this platform issued for ``https://outlook.office365.com`` and answers ``{"active": true, ...}`` with
the token's claims, or ``{"active": false}``. Exchange Online's application access works the same way: the
app's token names no mailbox; the SASL user names the mailbox the app acts on.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.mssim.tls import TestCA

GRAPH = "https://graph.microsoft.com"
OUTLOOK = "https://outlook.office365.com"
RESOURCES = {GRAPH: ("Mail.ReadWrite", "User.Read.All"), OUTLOOK: ("IMAP.AccessAsApp", "full_access_as_app")}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300  # seconds of leeway on a client assertion's exp/nbf


class InvalidToken(Exception):
    """A token the platform did not issue, or that is expired, or meant for another audience or tenant."""


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class AppCertificate:
    """A self-signed RSA certificate for an app registration: `pem` holds the private key and the
    certificate (what migrator's ``client_certificate_file`` holds), `certificate_pem` only the certificate
    (what is uploaded to the app registration)."""

    pem: bytes
    certificate_pem: bytes

    @property
    def sha1_thumbprint(self) -> str:
        return x509.load_pem_x509_certificate(self.certificate_pem).fingerprint(hashes.SHA1()).hex().upper()

    @staticmethod
    def generate(common_name: str = "migrator test app") -> AppCertificate:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return AppCertificate(key_pem + cert_pem, cert_pem)


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secret: str | None
    certificate: x509.Certificate | None
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def thumbprints(self) -> dict[str, str]:
        if self.certificate is None:
            return {}
        return {"x5t": _b64url(self.certificate.fingerprint(hashes.SHA1())),
                "x5t#S256": _b64url(self.certificate.fingerprint(hashes.SHA256()))}


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description

    def body(self) -> dict[str, Any]:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        return {"error": self.error,
                "error_description": f"AADSTS{self.code}: {self.description} Trace ID: {trace} "
                                     f"Correlation ID: {correlation} Timestamp: {stamp}",
                "error_codes": [self.code], "timestamp": stamp, "trace_id": trace, "correlation_id": correlation}


class IdentityPlatform:
    """The token endpoint of a simulated Microsoft Entra ID, serving any number of tenants.

    Use as a context manager (or `start()`/`stop()`). `register_app` adds an app registration with a client
    secret and/or a certificate; the tenant exists once an app is registered in it. `token_lifetime` (seconds,
    settable at run time) is the `expires_in` of the next tokens. `advance_clock(s)` moves the platform's clock
    (not the client's) forward: tokens already issued expire on the server while the client still holds them,
    as with clock skew or a token revoked early. `tokens_issued` counts successful token responses.
    """

    def __init__(self, ca: TestCA, *, token_lifetime: int = 3599) -> None:
        self.ca = ca
        self.token_lifetime = token_lifetime
        self.tokens_issued = 0
        self.token_requests = 0
        self.introspections = 0
        self._apps: dict[tuple[str, str], _App] = {}
        self._key = secrets.token_bytes(32)
        self._offset = 0.0
        self._lock = threading.Lock()
        self._context = ca.server_context()
        platform = self

        class Handler(_Handler):
            owner = platform

        self._server: ThreadingHTTPServer | None = _Server(("127.0.0.1", 0), Handler)  # bound: the URL is known
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ set-up

    def start(self) -> IdentityPlatform:
        if self._server is None:
            raise RuntimeError("a stopped IdentityPlatform cannot be started again")
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="identity-platform", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=5)
            self._server.server_close()
            self._server = None

    def __enter__(self) -> IdentityPlatform:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def authority(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}"

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}/oauth2/v2.0/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def register_app(self, tenant_id: str, client_id: str, *, secret: str | None = None,
                     certificate_pem: bytes | None = None) -> None:
        """Register (or replace) an app in `tenant_id` with a client secret and/or a certificate (PEM; a
        private key in the same PEM is ignored, only the certificate is read)."""
        certificate = x509.load_pem_x509_certificate(certificate_pem) if certificate_pem else None
        with self._lock:
            self._apps[(tenant_id, client_id)] = _App(tenant_id, client_id, secret, certificate)

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        return time.time() + self._offset

    # ------------------------------------------------------------------------------------ tokens

    def validate(self, token: str, audience: str = GRAPH, tenant_id: str | None = None) -> dict[str, Any]:
        """The claims of a token this platform issued; raises InvalidToken if it is unknown, expired, or
        for another audience (or tenant, when `tenant_id` is given)."""
        try:
            claims: dict[str, Any] = jwt.decode(token, self._key, algorithms=["HS256"],
                                                options={"verify_exp": False, "verify_aud": False,
                                                         "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"not a token of this platform: {exc}") from None
        if claims.get("aud") != audience:
            raise InvalidToken(f"token is for {claims.get('aud')}, not {audience}")
        if tenant_id is not None and claims.get("tid") != tenant_id:
            raise InvalidToken(f"token is for tenant {claims.get('tid')}, not {tenant_id}")
        if claims["exp"] <= self.now():
            raise InvalidToken("token expired")
        with self._lock:
            if (claims["tid"], claims["appid"]) not in self._apps:
                raise InvalidToken("the app that got this token is no longer registered")
        return claims

    def _issue(self, app: _App, audience: str) -> dict[str, Any]:
        now = int(self.now())
        lifetime = self.token_lifetime
        claims = {"aud": audience, "iss": f"https://sts.windows.net/{app.tenant_id}/", "iat": now, "nbf": now,
                  "exp": now + lifetime, "tid": app.tenant_id, "appid": app.client_id, "azp": app.client_id,
                  "idtyp": "app", "oid": app.object_id, "sub": app.object_id, "roles": list(RESOURCES[audience]),
                  "uti": _b64url(secrets.token_bytes(16)), "ver": "1.0"}
        token = jwt.encode(claims, self._key, algorithm="HS256", headers={"typ": "JWT"})
        with self._lock:
            self.tokens_issued += 1
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    def _openid_configuration(self, tenant_id: str) -> dict[str, Any]:
        with self._lock:
            known = any(tenant == tenant_id for tenant, _ in self._apps)
        if not known:
            raise _OAuthError(400, "invalid_tenant", 90002,
                              f"Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID "
                              f"and are signing into the correct cloud.")
        base = f"{self.url}/{tenant_id}"
        return {"token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys", "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                          "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "EU", "cloud_instance_name": "microsoftonline.com"}

    def _token(self, tenant_id: str, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.token_requests += 1
            known_tenant = any(tenant == tenant_id for tenant, _ in self._apps)
            app = self._apps.get((tenant_id, form.get("client_id", "")))
        if not known_tenant:
            raise _OAuthError(400, "invalid_request", 90002, f"Tenant '{tenant_id}' not found.")
        if form.get("grant_type") != "client_credentials":
            raise _OAuthError(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type (this simulator knows "
                              "client_credentials only).")
        if app is None:
            raise _OAuthError(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form.get('client_id', '')}' was not found in the "
                              f"directory '{tenant_id}'.")
        scopes = form.get("scope", "").split()
        resource = scopes[0].removesuffix("/.default") if len(scopes) == 1 else ""
        if resource not in RESOURCES or not scopes[0].endswith("/.default"):
            raise _OAuthError(400, "invalid_scope", 70011,
                              f"The provided value for the input parameter 'scope' is not valid. "
                              f"The scope {form.get('scope', '')} is not valid.")
        if "client_assertion" in form:
            self._check_assertion(app, form)
        elif "client_secret" in form:
            if app.secret is None or not secrets.compare_digest(form["client_secret"], app.secret):
                raise _OAuthError(401, "invalid_client", 7000215,
                                  f"Invalid client secret provided. Ensure the secret being sent in the request is "
                                  f"the client secret value, not the client secret ID, for a secret added to app "
                                  f"'{app.client_id}'.")
        else:
            raise _OAuthError(401, "invalid_client", 7000218,
                              "The request body must contain the following parameter: 'client_assertion' or "
                              "'client_secret'.")
        return self._issue(app, resource)

    def _check_assertion(self, app: _App, form: dict[str, str]) -> None:
        def refuse(code: int, why: str) -> _OAuthError:
            return _OAuthError(401, "invalid_client", code, why)

        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise _OAuthError(400, "invalid_request", 50027, "Invalid client_assertion_type.")
        try:
            head_b64, claims_b64, signature_b64 = form["client_assertion"].split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            raise refuse(50027, "JWT token is invalid or malformed.") from None
        algorithm = header.get("alg")
        thumbprint_name = {"RS256": "x5t", "PS256": "x5t#S256"}.get(algorithm or "")
        if thumbprint_name is None or header.get("typ", "JWT") != "JWT":
            raise refuse(50027, f"JWT token is invalid or malformed: alg {algorithm!r} is not RS256 or PS256.")
        # msal keeps the base64 padding ("=") on the thumbprint, which Entra accepts: compare without it.
        presented = str(header.get(thumbprint_name) or "").rstrip("=")
        if app.certificate is None or presented != app.thumbprints()[thumbprint_name]:
            raise refuse(700027, f"The certificate with identifier used to sign the client assertion is not "
                                 f"registered on application. [Reason - The key was not found., Thumbprint of key "
                                 f"used by client: '{header.get(thumbprint_name)}']")
        public_key = app.certificate.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        pad: padding.AsymmetricPadding = padding.PKCS1v15() if algorithm == "RS256" else padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        try:
            public_key.verify(signature, f"{head_b64}.{claims_b64}".encode(), pad, hashes.SHA256())
        except InvalidSignature:
            raise refuse(700027, "Client assertion contains an invalid signature.") from None
        now = self.now()
        if claims.get("aud") != self.token_endpoint(app.tenant_id):
            raise refuse(700021, f"Client assertion audience claim does not match Realm issuer "
                                 f"(aud {claims.get('aud')!r}).")
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise refuse(700023, "Client assertion contains an invalid issuer or subject.")
        if not (isinstance(claims.get("exp"), int | float) and claims["exp"] + CLOCK_SKEW > now
                and claims.get("nbf", 0) - CLOCK_SKEW <= now):
            raise refuse(700024, "Client assertion is not within its valid time range.")

    def _introspect(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.introspections += 1
        try:
            claims = self.validate(form.get("token", ""), OUTLOOK)
        except InvalidToken:
            return {"active": False}
        scalars = {key: value for key, value in claims.items() if isinstance(value, str | int)}
        return {**scalars, "active": True, "client_id": claims["appid"], "username": claims["appid"],
                "token_type": "Bearer", "scope": " ".join(claims["roles"])}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that does not trust the test CA aborts the handshake: expected, not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    owner: IdentityPlatform
    server_version = "simulated-login.microsoftonline.com"

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request = self.owner._context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        parts = [p for p in path.split("/") if p]
        try:
            if method == "GET" and len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                self._send(200, self.owner._openid_configuration(parts[0]))
            elif method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                self._send(200, self.owner._token(parts[0], self._form()))
            elif method == "POST" and parts == ["introspect"]:
                self._send(200, self.owner._introspect(self._form()))
            else:
                self._send(404, {"error": "not_found", "error_description": f"{method} {path}"})
        except _OAuthError as exc:
            self._send(exc.status, exc.body())

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

