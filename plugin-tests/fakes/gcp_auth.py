"""Fake Google authentication for service-account credentials.

Two ways of presenting a service account exist and both must be verified,
because the two official clients use different ones (test-stack.md addendum):

* The Rust `google-cloud-auth` crate, and the Python GAPIC clients
  (`always_use_jwt_access=True`), sign their own RS256 JWT and send it as the
  bearer token. Nothing is exchanged; the API checks the signature against the
  account's public key, `kid` = `private_key_id`, `iss` = `sub` =
  `client_email`, the lifetime, and `aud` or `scope`.
* Other clients (Python `google-auth` without jwt access) POST a JWT to the
  key file's `token_uri` with grant type `jwt-bearer` and receive an opaque
  access token.

Verification is done with `cryptography` against keys generated here, never
with the client libraries' own code. Nothing secret is logged: tokens and
assertions appear neither in request records nor in failure messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .httpserver import Request, Response

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CLOUDKMS_SCOPE = "https://www.googleapis.com/auth/cloudkms"
# Self-signed JWTs name the API, with or without the trailing slash (AIP-4111).
KMS_AUDIENCES = ("https://cloudkms.googleapis.com/", "https://cloudkms.googleapis.com")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs jwt-bearer assertions for this audience whatever the key
# file's token_uri says; on Google the two are the same URL. The fake also
# accepts its own token_uri, its stand-in for that URL.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
TOKEN_PATH = "/token"
# Google requires a short-lived assertion (one hour). The Rust crate signs
# iat = now - 10 s and exp = now + 3610 s, and real Google accepts it, so the
# limit carries the same allowance as the clock skew below.
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 300
_FORM = "application/x-www-form-urlencoded"
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)

MisuseReporter = Callable[[str, Request, str], None]


def _b64url_decode(part: str) -> bytes:
    """JWS segments are unpadded base64url (RFC 7515 §2); anything else is malformed."""
    if "=" in part or "+" in part or "/" in part:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError(str(error)) from None


@dataclass(frozen=True)
class ServiceAccountKey:
    """One service account with one RSA key, as in a downloaded key file."""

    client_email: str
    private_key_id: str
    project_id: str
    client_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    def private_key_pem(self) -> str:
        """PKCS#8 PEM: `google-cloud-auth` rejects any other private key encoding."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def info(self, token_uri: str) -> dict[str, str]:
        """The JSON of a key file, every member a real one has (the Rust crate needs project_id)."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem(),
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(self.client_email)}"
            ),
            "universe_domain": "googleapis.com",
        }

    def write_key_file(self, path: Path, token_uri: str) -> Path:
        path.write_text(json.dumps(self.info(token_uri), indent=2))
        path.chmod(0o600)
        return path


def new_service_account(project_id: str = "keymgmt-test", name: str = "keymgmt-plugin") -> ServiceAccountKey:
    """A fresh account with a 2048-bit key (what Google issues for user-managed keys)."""
    return ServiceAccountKey(
        client_email=f"{name}@{project_id}.iam.gserviceaccount.com",
        private_key_id=secrets.token_hex(20),
        project_id=project_id,
        client_id=str(10**20 + secrets.randbelow(9 * 10**20)),
        private_key=rsa.generate_private_key(65537, 2048),
    )


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as, and how (no token material)."""

    client_email: str
    mode: str  # "self-signed-jwt" or "access-token"


@dataclass(frozen=True)
class AuthRejection:
    """Why a credential was refused; the credential itself is never kept."""

    where: str  # "api" or "token"
    reason: str


class AuthFailure(Exception):
    """A rejected API credential: 401 UNAUTHENTICATED with an ErrorInfo reason."""

    def __init__(self, reason: str, diagnosis: str) -> None:
        super().__init__(diagnosis)
        self.reason = reason
        self.diagnosis = diagnosis

    def response(self, service: str, method: str | None) -> Response:
        message = _MISSING if self.reason == "CREDENTIALS_MISSING" else _UNAUTHENTICATED
        challenge = 'Bearer realm="https://accounts.google.com/"'
        if self.reason != "CREDENTIALS_MISSING":
            challenge += ', error="invalid_token"'
        metadata = {"service": service}
        if method is not None:
            metadata["method"] = method
        return Response(401, {"error": {
            "code": 401, "message": message, "status": "UNAUTHENTICATED",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason,
                         "domain": "googleapis.com", "metadata": metadata}],
        }}, headers={"WWW-Authenticate": challenge})


class _AssertionError(Exception):
    """An assertion failed verification; `description` is what Google's token endpoint says."""

    def __init__(self, description: str, diagnosis: str, error: str = "invalid_grant") -> None:
        super().__init__(diagnosis)
        self.error, self.description, self.diagnosis = error, description, diagnosis


_BAD_SIGNATURE = "Invalid JWT Signature."
_BAD_TIMES = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
              "timeframe. Check your iat and exp values in the JWT claim.")


class GoogleAuth:
    """Verifies service-account credentials and runs the token endpoint.

    `accounts` may be changed while running (add a key, remove one) to model
    key rotation and deletion. `token_uri` is set by the fake once its
    listener has a port.
    """

    def __init__(
        self,
        accounts: list[ServiceAccountKey],
        *,
        token_lifetime: int,
        audiences: tuple[str, ...] = KMS_AUDIENCES,
        on_misuse: MisuseReporter,
    ) -> None:
        self.accounts = list(accounts)
        self.token_lifetime = token_lifetime
        self.audiences = audiences
        self.token_uri = ""
        self._on_misuse = on_misuse
        self._tokens: dict[str, tuple[str, frozenset[str], float]] = {}
        self._lock = threading.Lock()
        self.rejections: list[AuthRejection] = []

    # -- shared verification ----------------------------------------------

    def _keys_for(self, email: str) -> dict[str, rsa.RSAPublicKey]:
        return {a.private_key_id: a.private_key.public_key() for a in self.accounts if a.client_email == email}

    def _verify(self, token: str, *, audiences: tuple[str, ...], scopes: tuple[str, ...],
                token_endpoint: bool) -> tuple[str, frozenset[str]]:
        """(client_email, granted scopes) of a valid RS256 assertion, else _AssertionError."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _AssertionError(_BAD_SIGNATURE, "not a JWS compact serialisation")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise _AssertionError(_BAD_SIGNATURE, "JWS segments are not base64url JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _AssertionError(_BAD_SIGNATURE, "JWS header and claims must be JSON objects")
        if header.get("alg") != "RS256":
            raise _AssertionError(_BAD_SIGNATURE, f"alg {header.get('alg')!r} is not RS256")
        iss = claims.get("iss")
        keys = self._keys_for(iss) if isinstance(iss, str) else {}
        if not keys:
            raise _AssertionError("Invalid grant: account not found", f"iss {iss!r} is not a known service account")
        kid = header.get("kid")
        public = keys.get(kid) if isinstance(kid, str) else None
        if public is None:
            raise _AssertionError(_BAD_SIGNATURE, "kid is not one of the account's private_key_id values")
        try:
            public.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _AssertionError(_BAD_SIGNATURE, "signature does not verify with the account's key") from None
        sub = claims.get("sub")
        if token_endpoint:
            if sub is not None and sub != iss:
                raise _AssertionError(
                    "Client is unauthorized to retrieve access tokens using this method, or client not "
                    "authorized for any of the scopes requested.",
                    "sub differs from iss (domain-wide delegation is not modelled)", "unauthorized_client")
        elif sub != iss:
            raise _AssertionError(_BAD_SIGNATURE, "a self-signed JWT needs sub == iss == client_email")
        self._check_times(claims)
        aud = claims.get("aud")
        if (aud is not None or token_endpoint) and aud not in audiences:
            expected = audiences[0] if audiences else ""
            raise _AssertionError(f"Invalid JWT: Failed audience check. The right audience is {expected}",
                                  f"aud {aud!r} is not one of {list(audiences)}")
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise _AssertionError("Invalid OAuth scope or ID token audience provided.", "scope must be a string",
                                  "invalid_scope")
        granted = frozenset((scope or "").split())
        if token_endpoint:
            if not granted:
                raise _AssertionError("Invalid OAuth scope or ID token audience provided.",
                                      "a jwt-bearer grant needs a scope claim", "invalid_scope")
        elif aud is None and not granted & set(scopes):
            raise _AssertionError(_BAD_SIGNATURE, f"neither aud nor a scope in {list(scopes)} is claimed")
        assert isinstance(iss, str)
        return iss, granted if scope is not None else frozenset(scopes)

    @staticmethod
    def _check_times(claims: dict[str, Any]) -> None:
        iat, exp = claims.get("iat"), claims.get("exp")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
            raise _AssertionError(_BAD_TIMES, "iat and exp must be integer seconds")
        assert isinstance(iat, int) and isinstance(exp, int)
        now = time.time()
        if exp <= now:
            raise _AssertionError(_BAD_TIMES, "the JWT has expired")
        if iat > now + CLOCK_SKEW:
            raise _AssertionError(_BAD_TIMES, "iat is in the future")
        if exp - iat > MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise _AssertionError(_BAD_TIMES, f"lifetime {exp - iat}s exceeds one hour")

    def _reject(self, where: str, reason: str) -> None:
        with self._lock:
            self.rejections.append(AuthRejection(where, reason))

    # -- the API side -----------------------------------------------------

    def authenticate(self, authorization: str | None, scopes: tuple[str, ...]) -> Principal:
        """The principal behind an Authorization header, or AuthFailure (401)."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if not authorization:
            raise AuthFailure("CREDENTIALS_MISSING", "no Authorization header")
        if scheme.lower() != "bearer" or not credential:
            self._reject("api", "Authorization is not a Bearer credential")
            raise AuthFailure("ACCESS_TOKEN_TYPE_UNSUPPORTED", "not a Bearer credential")
        if credential.count(".") == 2:
            try:
                email, _ = self._verify(credential, audiences=self.audiences, scopes=scopes, token_endpoint=False)
            except _AssertionError as error:
                self._reject("api", error.diagnosis)
                reason = "ACCESS_TOKEN_EXPIRED" if "expired" in error.diagnosis else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
                raise AuthFailure(reason, error.diagnosis) from None
            return Principal(email, "self-signed-jwt")
        with self._lock:
            entry = self._tokens.get(credential)
        if entry is None:
            self._reject("api", "unknown access token")
            raise AuthFailure("ACCESS_TOKEN_TYPE_UNSUPPORTED", "unknown access token")
        email, granted, expires_at = entry
        if expires_at <= time.time():
            self._reject("api", "expired access token")
            raise AuthFailure("ACCESS_TOKEN_EXPIRED", "expired access token")
        if not granted & set(scopes):
            self._reject("api", f"token scopes {sorted(granted)} do not include any of {list(scopes)}")
            raise AuthFailure("ACCESS_TOKEN_SCOPE_INSUFFICIENT", "insufficient scopes")
        if not self._keys_for(email):
            self._reject("api", "the token's service account no longer exists")
            raise AuthFailure("ACCOUNT_STATE_INVALID", "account deleted")
        return Principal(email, "access-token")

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = {t: (e, s, 0.0) for t, (e, s, _) in self._tokens.items()}

    # -- the token endpoint -----------------------------------------------

    def token_endpoint(self, request: Request) -> Response:
        """POST token_uri with grant_type=jwt-bearer, as google-auth's `jwt_grant` sends it."""
        if request.path != TOKEN_PATH:
            self._on_misuse("oauth2", request, f"{request.path} is not the token endpoint {TOKEN_PATH}")
            return Response(404, {"error": "not_found", "error_description": "Unknown endpoint."})
        if request.method != "POST":
            self._on_misuse("oauth2", request, "the token endpoint only accepts POST")
            return Response(405, {"error": "invalid_request", "error_description": "Use POST."})
        media_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != _FORM:
            self._on_misuse("oauth2", request, f"token request Content-Type must be {_FORM}")
            return Response(400, {"error": "invalid_request", "error_description": "Invalid Content-Type."})
        form = parse_qs(request.body.decode("latin-1"), keep_blank_values=True)
        if any(len(values) > 1 for values in form.values()):
            self._on_misuse("oauth2", request, "repeated form fields")
            return Response(400, {"error": "invalid_request", "error_description": "Repeated parameter."})
        fields = {name: values[0] for name, values in form.items()}
        grant_type = fields.get("grant_type")
        if grant_type != JWT_BEARER:
            self._on_misuse("oauth2", request, f"grant_type {grant_type!r} is not {JWT_BEARER}")
            return Response(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "
                                  + (grant_type or "")})
        assertion = fields.get("assertion")
        if not assertion:
            self._on_misuse("oauth2", request, "form field assertion is missing")
            return Response(400, {"error": "invalid_request",
                                  "error_description": "Missing required parameter: assertion"})
        try:
            email, granted = self._verify(assertion, audiences=(GOOGLE_TOKEN_URI, self.token_uri), scopes=(),
                                          token_endpoint=True)
        except _AssertionError as error:
            self._reject("token", error.diagnosis)
            return Response(400, {"error": error.error, "error_description": error.description})
        token = "ya29.fake-" + secrets.token_urlsafe(40)
        with self._lock:
            self._tokens[token] = (email, granted, time.time() + self.token_lifetime)
        return Response(200, {"access_token": token, "expires_in": self.token_lifetime - 1, "token_type": "Bearer"},
                        headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})
