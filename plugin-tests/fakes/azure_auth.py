"""Fake Entra ID (client credentials, v2.0) and IMDS managed-identity endpoints.

Tokens are opaque random strings the fake remembers with an expiry, so the
Key Vault side can tell a token it issued from a made-up or expired one.
Requests a correct client would never send are reported through `on_misuse`;
wrong credentials are ordinary behaviour and are not.
"""

from __future__ import annotations

import datetime
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qs

from .httpserver import Request, Response

KEYVAULT_RESOURCE = "https://vault.azure.net"
KEYVAULT_SCOPE = f"{KEYVAULT_RESOURCE}/.default"
IMDS_PATH = "/metadata/identity/oauth2/token"
IMDS_API_VERSIONS = frozenset({"2018-02-01"})
_TOKEN_PATH = re.compile(r"^/([^/]+)/oauth2/v2\.0/token$")
_FORM = "application/x-www-form-urlencoded"

MisuseReporter = Callable[[str, Request, str], None]


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    """The JSON shape Entra ID returns, with an AADSTS code in the description."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return Response(status, {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    })


def _imds_error(error: str, description: str) -> Response:
    return Response(400, {"error": error, "error_description": description})


class TokenIssuer:
    """Issues Key Vault access tokens to one app registration and one managed identity."""

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        msi_client_id: str,
        managed_identity: bool,
        lifetime: int,
        on_misuse: MisuseReporter,
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.msi_client_id = msi_client_id
        self.managed_identity = managed_identity
        self.lifetime = lifetime
        self._on_misuse = on_misuse
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def _issue(self) -> tuple[str, int]:
        token = secrets.token_urlsafe(32)
        expires_on = int(time.time()) + self.lifetime
        with self._lock:
            self._tokens[token] = expires_on
        return token, expires_on

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def bearer_problem(self, authorization: str | None) -> str | None:
        """Why an Authorization header is not acceptable to Key Vault, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "AKV10000: Request is missing a Bearer or PoP token."
        with self._lock:
            expires_on = self._tokens.get(token.strip())
        if expires_on is None:
            return "The access token was not issued for this vault's tenant."
        if expires_on <= time.time():
            return "The access token has expired."
        return None

    # -- Entra ID ---------------------------------------------------------

    def login(self, request: Request) -> Response:
        """POST /{tenant}/oauth2/v2.0/token, client-credentials grant only."""
        match = _TOKEN_PATH.match(request.path)
        if match is None:
            self._on_misuse("login", request, f"{request.path} is not a v2.0 token endpoint")
            return Response(404, {"error": "not_found", "error_description": "Unknown endpoint."})
        if request.method != "POST":
            self._on_misuse("login", request, "the token endpoint only accepts POST")
            return Response(405, {"error": "invalid_request", "error_description": "Use POST."})
        media_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != _FORM:
            self._on_misuse("login", request, f"token request Content-Type must be {_FORM}")
            return _aad_error(400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
        form = parse_qs(request.body.decode("latin-1"), keep_blank_values=True)
        repeated = [name for name, values in form.items() if len(values) > 1]
        if repeated:
            self._on_misuse("login", request, f"repeated form fields {repeated}")
            return _aad_error(400, "invalid_request", 90015, f"Requested query string is invalid: {repeated[0]} is repeated.")
        fields = {name: values[0] for name, values in form.items()}
        if match.group(1) != self.tenant_id:
            return _aad_error(400, "invalid_request", 90002, f"Tenant '{match.group(1)}' not found.")
        return self._client_credentials(request, fields)

    def _client_credentials(self, request: Request, fields: dict[str, str]) -> Response:
        for name in ("grant_type", "client_id", "scope"):
            if not fields.get(name):
                self._on_misuse("login", request, f"form field {name} is missing")
                return _aad_error(400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'.")
        if fields["grant_type"] != "client_credentials":
            self._on_misuse("login", request, f"grant_type {fields['grant_type']!r} is not client_credentials")
            return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if fields["scope"] != KEYVAULT_SCOPE:
            self._on_misuse("login", request, f"scope {fields['scope']!r} is not {KEYVAULT_SCOPE}")
            return _aad_error(400, "invalid_scope", 70011, f"The provided value for the input parameter 'scope' is not valid. The scope {fields['scope']} is not valid.")
        if "client_secret" not in fields:
            self._on_misuse("login", request, "form field client_secret is missing")
            return _aad_error(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        if fields["client_id"] != self.client_id:
            return _aad_error(400, "unauthorized_client", 700016, f"Application with identifier '{fields['client_id']}' was not found in the directory '{self.tenant_id}'.")
        if not secrets.compare_digest(fields["client_secret"], self.client_secret):
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        token, _ = self._issue()
        return Response(200, {
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "access_token": token,
        }, headers={"Cache-Control": "no-store, no-cache"})

    # -- IMDS -------------------------------------------------------------

    def imds(self, request: Request) -> Response:
        """GET /metadata/identity/oauth2/token as on an Azure VM."""
        if request.path != IMDS_PATH or request.method != "GET":
            self._on_misuse("imds", request, f"{request.method} {request.path} is not the IMDS token endpoint")
            return Response(404, {"error": "Not found"})
        if request.headers.get("Metadata") != "true":
            self._on_misuse("imds", request, "header Metadata: true is missing")
            return _imds_error("invalid_request", "Required metadata header not specified")
        query = {name: values[0] for name, values in request.query.items()}
        if query.get("api-version") not in IMDS_API_VERSIONS:
            self._on_misuse("imds", request, f"api-version must be one of {sorted(IMDS_API_VERSIONS)}")
            return _imds_error("invalid_request", "Bad request. api-version is invalid or was not specified in the request.")
        resource = query.get("resource", "")
        if resource.rstrip("/") != KEYVAULT_RESOURCE:
            self._on_misuse("imds", request, f"resource {resource!r} is not {KEYVAULT_RESOURCE}")
            return _imds_error("invalid_resource", f"AADSTS500011: The resource principal named {resource} was not found in the tenant.")
        if not self.managed_identity or query.get("client_id", self.msi_client_id) != self.msi_client_id:
            return _imds_error("invalid_request", "Identity not found")
        token, expires_on = self._issue()
        return Response(200, {
            "access_token": token,
            "client_id": self.msi_client_id,
            "expires_in": str(self.lifetime),
            "expires_on": str(expires_on),
            "ext_expires_in": str(self.lifetime),
            "not_before": str(expires_on - self.lifetime),
            "resource": resource,
            "token_type": "Bearer",
        })
