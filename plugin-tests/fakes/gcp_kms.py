"""A faithful, strict HTTPS fake of Google Cloud KMS (REST v1) and Google OAuth.

No emulator implements import jobs or ImportCryptoKeyVersion (test-stack.md
§5), so the plugin's GCP provider is tested against this fake. It is only
worth something because it is strict:

* every request is checked against Google's discovery document
  (`specs/cloudkms.v1.json`, through `discovery.py`), with enums accepted as
  names or as their *proto* numbers, which is what both official clients send
  (`$alt=json;enum-encoding=int`), and answered in the encoding asked for;
* authentication is verified with the service account's public key, both as a
  self-signed JWT bearer (the Rust crate) and through the token endpoint;
* every import is unwrapped independently with `cryptography` (RSA-OAEP with
  the import method's hash, then AES-KWP, key-transfer.md §1 and §5.3) and the
  material is checked against the algorithm, the CryptoKey's purpose and its
  protection level;
* every request that a correct client would not send is recorded as a
  `ValidationFailure`, so a test can assert that the plugin sent none.

What is asynchronous on Google is asynchronous here: import jobs start in
PENDING_GENERATION (their RSA keys really are generated in the background),
imported versions start in PENDING_IMPORT and end ENABLED or IMPORT_FAILED
with `importFailureReason`, and destruction happens `destroyScheduledDuration`
after `:destroy`. The fake's clock can be moved forward (`advance`) so that
tests need not wait days. Choices that Google does not document are marked
[INFER] in the code.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from .azure_crypto import CURVES, KeyMaterialError, load_pkcs8
from .azure_keyvault import ValidationFailure
from .discovery import SPEC_PATH, DiscoveryDocument, DiscoveryViolation, Method, ValidatedRequest, decode_bytes
from .gcp_auth import (
    TOKEN_PATH,
    AuthFailure,
    AuthRejection,
    GoogleAuth,
    Principal,
    ServiceAccountKey,
    new_service_account,
)
from .httpserver import FaultPlan, Listener, Request, RequestRecord, Response
from .tls import FakeCA

SERVICE = "cloudkms.googleapis.com"
DEFAULT_PROJECT = "keymgmt-test"
DEFAULT_KEY_RING = f"projects/{DEFAULT_PROJECT}/locations/global/keyRings/keymgmt"
DAY = 86400
IMPORT_JOB_LIFETIME = 3 * DAY  # key-transfer.md §5.1
DEFAULT_DESTROY_SCHEDULED = 30 * DAY
MIN_DESTROY_SCHEDULED, MAX_DESTROY_SCHEDULED = DAY, 120 * DAY
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 2  # small on purpose: clients must follow nextPageToken
_ID = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_KEY_RING = re.compile(r"^projects/([^/]+)/locations/([^/]+)/keyRings/([^/]+)$")
_IMPORT_JOB = re.compile(r"^(projects/[^/]+/locations/[^/]+)/keyRings/[^/]+/importJobs/[^/]+$")
_FILTER_TERM = re.compile(r'^(NOT\s+|-)?([A-Za-z_][A-Za-z0-9_.]*)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.*/-]+)$')
_REDACTED_QUERY = frozenset({"access_token", "oauth_token", "key"})

_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}

# The IAM permission each modelled method checks (Cloud KMS REST reference,
# "Authorization requires the following IAM permission"). Import also needs
# cloudkms.importJobs.useToImport on the job, and re-import
# cloudkms.cryptoKeyVersions.update on the target version instead of .create.
PERMISSIONS: dict[str, str] = {
    "keyRings.create": "cloudkms.keyRings.create",
    "keyRings.get": "cloudkms.keyRings.get",
    "keyRings.list": "cloudkms.keyRings.list",
    "keyRings.cryptoKeys.create": "cloudkms.cryptoKeys.create",
    "keyRings.cryptoKeys.get": "cloudkms.cryptoKeys.get",
    "keyRings.cryptoKeys.list": "cloudkms.cryptoKeys.list",
    "keyRings.cryptoKeys.patch": "cloudkms.cryptoKeys.update",
    "keyRings.cryptoKeys.updatePrimaryVersion": "cloudkms.cryptoKeys.update",
    "keyRings.cryptoKeys.cryptoKeyVersions.create": "cloudkms.cryptoKeyVersions.create",
    "keyRings.cryptoKeys.cryptoKeyVersions.import": "cloudkms.cryptoKeyVersions.create",
    "keyRings.cryptoKeys.cryptoKeyVersions.get": "cloudkms.cryptoKeyVersions.get",
    "keyRings.cryptoKeys.cryptoKeyVersions.list": "cloudkms.cryptoKeyVersions.list",
    "keyRings.cryptoKeys.cryptoKeyVersions.patch": "cloudkms.cryptoKeyVersions.update",
    "keyRings.cryptoKeys.cryptoKeyVersions.destroy": "cloudkms.cryptoKeyVersions.destroy",
    "keyRings.cryptoKeys.cryptoKeyVersions.restore": "cloudkms.cryptoKeyVersions.restore",
    "keyRings.cryptoKeys.cryptoKeyVersions.getPublicKey": "cloudkms.cryptoKeyVersions.viewPublicKey",
    "keyRings.importJobs.create": "cloudkms.importJobs.create",
    "keyRings.importJobs.get": "cloudkms.importJobs.get",
    "keyRings.importJobs.list": "cloudkms.importJobs.list",
}
KNOWN_PERMISSIONS = frozenset(PERMISSIONS.values()) | {"cloudkms.importJobs.useToImport"}


# -- algorithms and import methods ---------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """What key material an algorithm takes: raw bytes, or PKCS#8 RSA / EC."""

    purpose: str
    kind: str  # "raw", "rsa" or "ec"
    size: int  # raw: bytes; rsa: modulus bits; ec: curve bits
    curve: str | None = None  # azure_crypto.CURVES name
    hsm_only: bool = False


def _algorithms() -> dict[str, Algorithm]:
    table = {"GOOGLE_SYMMETRIC_ENCRYPTION": Algorithm("ENCRYPT_DECRYPT", "raw", 32)}
    for bits in (2048, 3072, 4096):
        for name in (f"RSA_SIGN_PSS_{bits}_SHA256", f"RSA_SIGN_PKCS1_{bits}_SHA256", f"RSA_SIGN_RAW_PKCS1_{bits}"):
            table[name] = Algorithm("ASYMMETRIC_SIGN", "rsa", bits)
        for name in (f"RSA_DECRYPT_OAEP_{bits}_SHA256", f"RSA_DECRYPT_OAEP_{bits}_SHA1"):
            table[name] = Algorithm("ASYMMETRIC_DECRYPT", "rsa", bits)
    table["RSA_SIGN_PSS_4096_SHA512"] = Algorithm("ASYMMETRIC_SIGN", "rsa", 4096)
    table["RSA_SIGN_PKCS1_4096_SHA512"] = Algorithm("ASYMMETRIC_SIGN", "rsa", 4096)
    table["RSA_DECRYPT_OAEP_4096_SHA512"] = Algorithm("ASYMMETRIC_DECRYPT", "rsa", 4096)
    table["EC_SIGN_P256_SHA256"] = Algorithm("ASYMMETRIC_SIGN", "ec", 256, "P-256")
    table["EC_SIGN_P384_SHA384"] = Algorithm("ASYMMETRIC_SIGN", "ec", 384, "P-384")
    table["EC_SIGN_SECP256K1_SHA256"] = Algorithm("ASYMMETRIC_SIGN", "ec", 256, "P-256K", hsm_only=True)
    for bits in (128, 256):
        for mode in ("GCM", "CBC", "CTR"):
            table[f"AES_{bits}_{mode}"] = Algorithm("RAW_ENCRYPT_DECRYPT", "raw", bits // 8)
    return table


ALGORITHMS = _algorithms()


def purpose_of(algorithm: str) -> str | None:
    """The purpose an algorithm belongs to, also for algorithms the fake does not model."""
    if algorithm in ALGORITHMS:
        return ALGORITHMS[algorithm].purpose
    prefixes = {"HMAC_": "MAC", "ML_KEM_": "KEY_ENCAPSULATION", "KEM_": "KEY_ENCAPSULATION",
                "PQ_SIGN_": "ASYMMETRIC_SIGN", "EC_SIGN_": "ASYMMETRIC_SIGN", "AES_256_KWP": "AES_WRAPPING",
                "EXTERNAL_SYMMETRIC": "ENCRYPT_DECRYPT"}
    return next((p for prefix, p in prefixes.items() if algorithm.startswith(prefix)), None)


@dataclass(frozen=True)
class ImportMethod:
    """key-transfer.md §5.2: the job's RSA size, the OAEP hash, and whether AES-KWP follows."""

    bits: int
    hash_name: str
    aes_kwp: bool

    def oaep(self) -> padding.OAEP:
        digest: hashes.HashAlgorithm = hashes.SHA1() if self.hash_name == "SHA-1" else hashes.SHA256()
        return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


IMPORT_METHODS: dict[str, ImportMethod] = {
    "RSA_OAEP_3072_SHA1_AES_256": ImportMethod(3072, "SHA-1", True),
    "RSA_OAEP_4096_SHA1_AES_256": ImportMethod(4096, "SHA-1", True),
    "RSA_OAEP_3072_SHA256_AES_256": ImportMethod(3072, "SHA-256", True),
    "RSA_OAEP_4096_SHA256_AES_256": ImportMethod(4096, "SHA-256", True),
    "RSA_OAEP_3072_SHA256": ImportMethod(3072, "SHA-256", False),
    "RSA_OAEP_4096_SHA256": ImportMethod(4096, "SHA-256", False),
}
MODELLED_PROTECTION = ("SOFTWARE", "HSM")


def unwrap(private_key: rsa.RSAPrivateKey, method: ImportMethod, wrapped: bytes) -> bytes:
    """Undo the wrapping of key-transfer.md §5.3 with OpenSSL (via `cryptography`)."""
    modulus = private_key.key_size // 8
    if not method.aes_kwp:
        try:
            return private_key.decrypt(wrapped, method.oaep())
        except ValueError:
            raise KeyMaterialError(f"RSA-OAEP ({method.hash_name}) decryption of the wrapped key failed") from None
    try:
        aes_key = private_key.decrypt(wrapped[:modulus], method.oaep())
    except ValueError:
        raise KeyMaterialError(
            f"RSA-OAEP ({method.hash_name}) decryption of the ephemeral AES key failed") from None
    if len(aes_key) != 32:
        raise KeyMaterialError(f"the ephemeral key is {len(aes_key)} bytes; AES-256 needs 32")
    try:
        return aes_key_unwrap_with_padding(aes_key, wrapped[modulus:])
    except (InvalidUnwrap, ValueError):
        raise KeyMaterialError("AES key wrap with padding (RFC 5649) integrity check failed") from None


def check_material(algorithm: str, material: bytes) -> str | None:
    """Validate unwrapped material for `algorithm`; returns the public key PEM if asymmetric."""
    spec = ALGORITHMS[algorithm]
    if spec.kind == "raw":
        if len(material) != spec.size:
            raise KeyMaterialError(
                f"key material is {len(material)} bytes; {algorithm} takes {spec.size} raw bytes")
        return None
    key = load_pkcs8(material, "RSA" if spec.kind == "rsa" else spec.curve or "")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size != spec.size:
        raise KeyMaterialError(f"the RSA key is {key.key_size} bits; {algorithm} needs {spec.size}")
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _generate(algorithm: str) -> tuple[bytes, str | None]:
    spec = ALGORITHMS[algorithm]
    if spec.kind == "raw":
        return os.urandom(spec.size), None
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec.kind == "rsa":
        private = rsa.generate_private_key(65537, spec.size)
    else:
        private = ec.generate_private_key(CURVES[spec.curve or ""])
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return der, check_material(algorithm, der)


class _RsaKeyPool:
    """Fresh import-job keys, generated ahead on one background thread.

    RSA-3072/4096 generation takes 0.1-2 s and holds the GIL, so doing it on
    demand makes every import test slow. Each key is still generated by
    `cryptography` for this process and handed out exactly once, so no two
    import jobs (in any fake) ever share a wrapping key. A size is generated
    ahead only after it was first asked for.
    """

    def __init__(self, ahead: int = 2) -> None:
        self._ahead = ahead
        self._ready: dict[int, list[rsa.RSAPrivateKey]] = {}
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def take(self, bits: int) -> Future[rsa.RSAPrivateKey]:
        future: Future[rsa.RSAPrivateKey] = Future()
        with self._condition:
            ready = self._ready.setdefault(bits, [])
            key = ready.pop(0) if ready else None
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill, name="gcp-fake-rsa-pool", daemon=True)
                self._thread.start()
            self._condition.notify_all()
        if key is not None:
            future.set_result(key)
        else:
            threading.Thread(target=lambda: future.set_result(rsa.generate_private_key(65537, bits)),
                             name="gcp-fake-rsa-now", daemon=True).start()
        return future

    def _fill(self) -> None:
        while True:
            with self._condition:
                short = [bits for bits, ready in self._ready.items() if len(ready) < self._ahead]
                while not short:
                    self._condition.wait()
                    short = [bits for bits, ready in self._ready.items() if len(ready) < self._ahead]
            key = rsa.generate_private_key(65537, short[0])
            with self._condition:
                self._ready[short[0]].append(key)


_KEY_POOL = _RsaKeyPool()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Google's `*Crc32c` integrity fields use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


# -- test-facing snapshots ------------------------------------------------------


@dataclass(frozen=True)
class VersionSnapshot:
    """One CryptoKeyVersion as the fake holds it; `material` is the unwrapped secret."""

    name: str
    id: str
    state: str
    algorithm: str
    protection_level: str
    origin: str  # "imported" or "generated"
    import_job: str | None
    import_failure_reason: str | None
    material: bytes | None = field(repr=False)  # raw key bytes, or PKCS#8 DER; None once destroyed
    public_key_pem: str | None

    def private_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if self.material is None or self.public_key_pem is None:
            raise ValueError(f"{self.name} holds no asymmetric key material")
        key = serialization.load_der_private_key(self.material, password=None)
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        return key


@dataclass(frozen=True)
class CryptoKeySnapshot:
    name: str
    purpose: str
    protection_level: str
    algorithm: str  # versionTemplate.algorithm
    import_only: bool
    destroy_scheduled_duration: float  # seconds
    primary: str | None  # version id
    labels: dict[str, str]
    versions: list[VersionSnapshot]


@dataclass(frozen=True)
class ImportJobSnapshot:
    name: str
    import_method: str
    protection_level: str
    state: str
    public_key_pem: str | None  # once generated


@dataclass(frozen=True)
class KmsSnapshot:
    key_rings: list[str]
    crypto_keys: dict[str, CryptoKeySnapshot]
    import_jobs: dict[str, ImportJobSnapshot]


# -- errors ----------------------------------------------------------------------


class GcpError(Exception):
    """A google.rpc.Status answer; `source` set means it is also a recorded failure."""

    def __init__(self, status: str, message: str, source: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.source, self.details = status, message, source, details or []

    def response(self) -> Response:
        return error_response(self.status, self.message, self.details)


def error_response(status: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Google's JSON error shape: {"error": {"code", "message", "status", "details"}}."""
    error: dict[str, Any] = {"code": _HTTP_STATUS[status], "message": message, "status": status}
    if details:
        error["details"] = details
    return Response(_HTTP_STATUS[status], {"error": error}, headers or {})


def _invalid(message: str) -> GcpError:
    return GcpError("INVALID_ARGUMENT", message, "service")


def _precondition(message: str) -> GcpError:
    return GcpError("FAILED_PRECONDITION", message)


def _unsupported(message: str) -> GcpError:
    return GcpError("INVALID_ARGUMENT", f"not modelled by the fake: {message}", "unsupported")


def _not_found(kind: str, name: str) -> GcpError:
    return GcpError("NOT_FOUND", f"{kind} {name} not found.")


def _timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.9f}".rstrip("0") + "s"


def _parse_duration(value: str) -> float:
    return float(value.removesuffix("s"))


# -- faults -----------------------------------------------------------------------

_FAULT_KINDS = re.compile(r"^(429|500|503|504|drop|lost|delay:\d+(\.\d+)?)$")
_FAULT_STATUS = {
    "429": ("RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Read requests' and limit 'Read requests "
            "per minute' of service 'cloudkms.googleapis.com'.", "RATE_LIMIT_EXCEEDED"),
    "500": ("INTERNAL", "Internal error encountered.", None),
    "503": ("UNAVAILABLE", "The service is currently unavailable.", None),
    "504": ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete.", None),
}


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    kind: str
    remaining: int


class GcpFaultPlan(FaultPlan):
    """FaultPlan's queue with Google's kinds; adds "lost": act, then drop the connection.

    A subclass (with its own queue) only so that `Listener` takes it unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._gcp_faults: list[_Fault] = []
        self._gcp_lock = threading.Lock()

    def add(self, method: str, path_regex: str, kind: str, times: int = 1) -> None:
        if not _FAULT_KINDS.match(kind):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._gcp_lock:
            self._gcp_faults.append(_Fault(method.upper(), re.compile(path_regex), kind, times))

    def pending(self) -> list[tuple[str, str, str, int]]:
        """Faults not yet fired: (method, path regex, kind, remaining)."""
        with self._gcp_lock:
            return [(f.method, f.path.pattern, f.kind, f.remaining) for f in self._gcp_faults]

    def take(self, method: str, path: str) -> str | None:
        with self._gcp_lock:
            for fault in self._gcp_faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._gcp_faults.remove(fault)
                    return fault.kind
        return None


def _fault_response(kind: str) -> Response:
    status, message, reason = _FAULT_STATUS[kind]
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
                "metadata": {"service": SERVICE}}] if reason else None
    return error_response(status, message, details)


class _GcpListener(Listener):
    """A Listener with Google-shaped injected faults, crashes and secret-free query records."""

    def _run_handler(self, request: Request) -> Response:
        """A bug in the fake becomes a reported 500 INTERNAL in Google's shape."""
        try:
            return self._handler(request)
        except Exception:
            self._on_crash(request, traceback.format_exc())
            return error_response("INTERNAL", "the fake raised; see its validation failures")

    def _serve(self, request: Request) -> Response | None:
        kind = self._faults.take(request.method, request.path)
        response: Response | None
        lost = False
        if kind == "drop":
            response = None
        elif kind == "lost":
            response, lost = self._run_handler(request), True
        elif kind is not None and not kind.startswith("delay:"):
            response = _fault_response(kind)
        else:
            if kind is not None:
                time.sleep(float(kind.removeprefix("delay:")))
            response = self._run_handler(request)
        query = {k: (["<redacted>"] if k in _REDACTED_QUERY else v) for k, v in request.query.items()}
        self._log(RequestRecord(
            self.service, request.method, request.path, query,
            None if response is None or lost else response.status,
            None if response is None else response.operation,
        ))
        return None if lost else response


# -- the resource model -----------------------------------------------------------


class _Clock:
    """Wall time plus an offset tests can advance, for job expiry and destruction."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class _ImportJob:
    name: str
    method: str
    protection: str
    created: float
    lifetime: float
    ready_after: float
    key: Future[rsa.RSAPrivateKey] = field(repr=False)
    expired_at: float | None = None

    def expire_time(self) -> float:
        return self.created + self.lifetime

    def expire_event(self, now: float) -> float | None:
        ends = [t for t in (self.expired_at, self.expire_time()) if t is not None and t <= now]
        return min(ends) if ends else None

    def state(self, now: float) -> str:
        if self.expire_event(now) is not None:
            return "EXPIRED"
        if now < self.ready_after or not self.key.done():
            return "PENDING_GENERATION"
        return "ACTIVE"

    def public_pem(self) -> str | None:
        if not self.key.done():
            return None
        return self.key.result().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class _Version:
    id: str
    name: str
    algorithm: str
    protection: str
    created: float
    origin: str
    state: str
    pending_until: float | None = None
    outcome: str | None = None
    staged_material: bytes | None = field(default=None, repr=False)
    staged_pem: str | None = None
    failure_reason: str | None = None
    import_job: str | None = None
    import_time: float | None = None
    generate_time: float | None = None
    material: bytes | None = field(default=None, repr=False)
    public_pem: str | None = None
    material_digest: bytes | None = None
    destroy_time: float | None = None
    destroy_event_time: float | None = None

    def settle(self, now: float) -> None:
        """Apply the transitions that are due: pending work ends, scheduled destruction happens."""
        if self.pending_until is not None and now >= self.pending_until:
            assert self.outcome is not None
            finished, self.pending_until = self.pending_until, None
            self.state = self.outcome
            if self.outcome != "IMPORT_FAILED":
                self.material, self.public_pem = self.staged_material, self.staged_pem
                self.material_digest = hashlib.sha256(self.material or b"").digest()
                if self.origin == "imported":
                    self.import_time = finished
                else:
                    self.generate_time = finished
            self.staged_material = self.staged_pem = None
        if self.state == "DESTROY_SCHEDULED" and self.destroy_time is not None and now >= self.destroy_time:
            self.state, self.destroy_event_time = "DESTROYED", self.destroy_time
            self.material = self.public_pem = None

    def snapshot(self) -> VersionSnapshot:
        return VersionSnapshot(self.name, self.id, self.state, self.algorithm, self.protection, self.origin,
                               self.import_job, self.failure_reason if self.state == "IMPORT_FAILED" else None,
                               self.material, self.public_pem)


@dataclass
class _CryptoKey:
    name: str
    purpose: str
    protection: str
    algorithm: str
    import_only: bool
    destroy_duration: float
    created: float
    labels: dict[str, str]
    versions: list[_Version] = field(default_factory=list)
    primary: str | None = None

    def version(self, version_id: str) -> _Version:
        for candidate in self.versions:
            if candidate.id == version_id:
                return candidate
        raise _not_found("CryptoKeyVersion", f"{self.name}/cryptoKeyVersions/{version_id}")


@dataclass(frozen=True)
class _Call:
    request: ValidatedRequest
    principal: Principal
    raw: Request

    @property
    def params(self) -> dict[str, str]:
        return self.request.params

    @property
    def query(self) -> dict[str, Any]:
        return self.request.query

    @property
    def body(self) -> dict[str, Any]:
        return self.request.body or {}

    @property
    def method(self) -> Method:
        return self.request.method


def _operation(method: Method) -> str:
    return method.name.removeprefix("projects.locations.")


class _Kms:
    """The Cloud KMS API: route, authenticate, validate, authorise, then the resource model."""

    def __init__(
        self,
        document: DiscoveryDocument,
        auth: GoogleAuth,
        key_rings: tuple[str, ...],
        report: Callable[[str, Request, str | None, str, str], None],
    ) -> None:
        self._doc = document
        self._auth = auth
        self._report = report
        self.clock = _Clock()
        self.import_job_delay = 0.2
        self.import_job_lifetime: float = IMPORT_JOB_LIFETIME
        self.version_delay = 0.2
        self.default_page_size = DEFAULT_PAGE_SIZE
        self.denied: set[str] = set()
        self.principals: list[Principal] = []
        self.forced_import_failures: list[str] = []
        self._lock = threading.RLock()
        now = self.clock.now()
        for ring in key_rings:
            if not _KEY_RING.match(ring):
                raise ValueError(f"{ring!r} is not projects/*/locations/*/keyRings/*")
        self._rings: dict[str, float] = dict.fromkeys(key_rings, now)
        self._projects = {ring.split("/")[1] for ring in key_rings}
        self._keys: dict[str, _CryptoKey] = {}
        self._jobs: dict[str, _ImportJob] = {}
        self._page_tokens: dict[str, tuple[str, str, str, str, int]] = {}
        self._handlers: dict[str, Callable[[_Call], dict[str, Any]]] = {
            "keyRings.create": self._create_key_ring,
            "keyRings.get": self._get_key_ring,
            "keyRings.list": self._list_key_rings,
            "keyRings.cryptoKeys.create": self._create_crypto_key,
            "keyRings.cryptoKeys.get": self._get_crypto_key,
            "keyRings.cryptoKeys.list": self._list_crypto_keys,
            "keyRings.cryptoKeys.patch": self._patch_crypto_key,
            "keyRings.cryptoKeys.updatePrimaryVersion": self._update_primary,
            "keyRings.cryptoKeys.cryptoKeyVersions.create": self._create_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.import": self._import_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.get": self._get_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.list": self._list_versions,
            "keyRings.cryptoKeys.cryptoKeyVersions.patch": self._patch_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.destroy": self._destroy_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.restore": self._restore_version,
            "keyRings.cryptoKeys.cryptoKeyVersions.getPublicKey": self._get_public_key,
            "keyRings.importJobs.create": self._create_import_job,
            "keyRings.importJobs.get": self._get_import_job,
            "keyRings.importJobs.list": self._list_import_jobs,
        }

    # -- request pipeline -------------------------------------------------

    def serve(self, request: Request) -> Response:
        try:
            method, _ = self._doc.match(request.method, request.path)
        except DiscoveryViolation as violation:
            self._report("spec", request, None, str(violation), "kms")
            return error_response("NOT_FOUND", str(violation))
        operation = _operation(method)
        try:
            principal = self._auth.authenticate(request.headers.get("Authorization"), method.scopes)
        except AuthFailure as failure:
            response = failure.response(SERVICE, f"google.cloud.kms.v1.KeyManagementService.{operation}")
            response.operation = operation
            return response
        with self._lock:
            self.principals.append(principal)
        int_enums = False
        try:
            validated = self._validate(request)
            int_enums = validated.int_enums
            handler = self._handlers.get(operation)
            if handler is None:
                raise GcpError("UNIMPLEMENTED", f"the fake does not implement {method.id}", "unsupported")
            body = handler(_Call(validated, principal, request))
            response = Response(200, body)
        except GcpError as error:
            if error.source is not None:
                self._report(error.source, request, operation, error.message, "kms")
            response = error.response()
        response.operation = operation
        if response.status == 200:
            for problem in self._doc.validate_response(method, response.body):
                self._report("response", request, operation, problem, "kms")
            response.body = self._doc.encode_response(method, response.body, int_enums)
        return response

    def _validate(self, request: Request) -> ValidatedRequest:
        try:
            return self._doc.validate_request(request.method, request.path, request.query,
                                              request.headers.get("Content-Type"), request.body)
        except DiscoveryViolation as violation:
            violations = [{"field": p.field, "description": p.description} for p in violation.problems]
            source = "unsupported" if violation.unsupported else "spec"
            prefix = "not modelled by the fake: " if violation.unsupported else ""
            raise GcpError("INVALID_ARGUMENT", prefix + str(violation), source, [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]) from None

    def _require(self, permission: str, resource: str) -> None:
        if permission in self.denied:
            raise GcpError("PERMISSION_DENIED", (
                f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."),
                details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                          "domain": "iam.googleapis.com",
                          "metadata": {"permission": permission, "resource": resource}}])

    def _authorise(self, call: _Call, resource: str) -> None:
        self._require(PERMISSIONS[_operation(call.method)], resource)

    # -- lookups ----------------------------------------------------------

    def _ring(self, name: str) -> None:
        if name not in self._rings:
            raise _not_found("KeyRing", name)

    def _key(self, name: str) -> _CryptoKey:
        key = self._keys.get(name)
        if key is None:
            raise _not_found("CryptoKey", name)
        now = self.clock.now()
        for version in key.versions:
            version.settle(now)
        return key

    def _version(self, name: str) -> tuple[_CryptoKey, _Version]:
        key_name, _, version_id = name.rpartition("/cryptoKeyVersions/")
        key = self._key(key_name)
        return key, key.version(version_id)

    def _job(self, name: str) -> _ImportJob:
        job = self._jobs.get(name)
        if job is None:
            raise _not_found("ImportJob", name)
        return job

    # -- JSON views -------------------------------------------------------

    @staticmethod
    def _version_json(version: _Version) -> dict[str, Any]:
        state = version.state
        body: dict[str, Any] = {
            "name": version.name, "state": state, "protectionLevel": version.protection,
            "algorithm": version.algorithm, "createTime": _timestamp(version.created),
        }
        if version.generate_time is not None:
            body["generateTime"] = _timestamp(version.generate_time)
        if version.destroy_time is not None:
            body["destroyTime"] = _timestamp(version.destroy_time)
        if version.destroy_event_time is not None:
            body["destroyEventTime"] = _timestamp(version.destroy_event_time)
        if version.import_job is not None:
            body["importJob"] = version.import_job
        if version.import_time is not None:
            body["importTime"] = _timestamp(version.import_time)
        if state == "IMPORT_FAILED" and version.failure_reason:
            body["importFailureReason"] = version.failure_reason
        if version.origin == "imported":
            body["reimportEligible"] = True
        return body

    def _key_json(self, key: _CryptoKey) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": key.name, "purpose": key.purpose, "createTime": _timestamp(key.created),
            "versionTemplate": {"protectionLevel": key.protection, "algorithm": key.algorithm},
            "destroyScheduledDuration": _duration(key.destroy_duration),
        }
        if key.import_only:
            body["importOnly"] = True
        if key.labels:
            body["labels"] = dict(key.labels)
        if key.primary is not None and key.purpose == "ENCRYPT_DECRYPT":
            body["primary"] = self._version_json(key.version(key.primary))
        return body

    def _job_json(self, job: _ImportJob, public_key_format: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        state = job.state(now)
        body: dict[str, Any] = {
            "name": job.name, "importMethod": job.method, "protectionLevel": job.protection,
            "createTime": _timestamp(job.created), "expireTime": _timestamp(job.expire_time()), "state": state,
        }
        if state != "PENDING_GENERATION":
            body["generateTime"] = _timestamp(job.ready_after)
        expired = job.expire_event(now)
        if expired is not None:
            body["expireEventTime"] = _timestamp(expired)
        if state == "ACTIVE":
            pem = job.public_pem()
            assert pem is not None
            if public_key_format == "DER":
                der = job.key.result().public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                body["publicKey"] = {"data": base64.b64encode(der).decode()}
            else:
                body["publicKey"] = {"pem": pem}
            if public_key_format in ("PEM", "DER"):
                body["publicKeyFormat"] = public_key_format
        return body

    # -- paging and filtering ----------------------------------------------

    def _page(self, call: _Call, parent: str, items: list[dict[str, Any]], collection: str) -> dict[str, Any]:
        query = call.query
        size = query.get("pageSize") or 0
        if size < 0:
            raise _invalid(f"page_size must be non-negative, got {size}")
        size = min(size or self.default_page_size, MAX_PAGE_SIZE)
        filter_text, order_by = query.get("filter") or "", query.get("orderBy") or ""
        if filter_text:
            predicate = _parse_filter(filter_text)
            items = [item for item in items if predicate(item)]
        if order_by:
            items = _order(items, order_by)
        offset = 0
        token = query.get("pageToken") or ""
        if token:
            with self._lock:
                entry = self._page_tokens.get(token)
            if entry is None or entry[:4] != (call.method.id, parent, filter_text, order_by):
                raise _invalid("Invalid page token; it was not issued for this request (parent, filter, orderBy).")
            offset = entry[4]
        body: dict[str, Any] = {}
        page = items[offset:offset + size]
        if page:
            body[collection] = page
        if offset + size < len(items):
            next_token = secrets.token_urlsafe(18)
            with self._lock:
                self._page_tokens[next_token] = (call.method.id, parent, filter_text, order_by, offset + size)
            body["nextPageToken"] = next_token
        if not filter_text and items:
            body["totalSize"] = len(items)
        return body

    # -- key rings ---------------------------------------------------------

    def _create_key_ring(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        ring_id = call.query.get("keyRingId") or ""
        if not _ID.match(ring_id):
            raise _invalid(f"key_ring_id {ring_id!r} must match [a-zA-Z0-9_-]{{1,63}}")
        if parent.split("/")[1] not in self._projects:
            raise GcpError("PERMISSION_DENIED", f"Permission 'cloudkms.keyRings.create' denied on resource "
                           f"'{parent}' (or it may not exist).")
        name = f"{parent}/keyRings/{ring_id}"
        with self._lock:
            if name in self._rings:
                raise GcpError("ALREADY_EXISTS", f"KeyRing {name} already exists.")
            self._rings[name] = self.clock.now()
            return {"name": name, "createTime": _timestamp(self._rings[name])}

    def _get_key_ring(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        with self._lock:
            self._ring(name)
            return {"name": name, "createTime": _timestamp(self._rings[name])}

    def _list_key_rings(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        with self._lock:
            items = [{"name": n, "createTime": _timestamp(t)} for n, t in self._rings.items()
                     if n.startswith(parent + "/keyRings/")]
        return self._page(call, parent, items, "keyRings")

    # -- crypto keys -------------------------------------------------------

    def _check_algorithm(self, algorithm: str, purpose: str, protection: str, what: str) -> None:
        if algorithm == "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED":
            raise _invalid(f"{what} is required")
        expected = purpose_of(algorithm)
        if expected is not None and expected != purpose:
            raise _invalid(f"{what} {algorithm} is not compatible with purpose {purpose}")
        if algorithm not in ALGORITHMS:
            raise _unsupported(f"algorithm {algorithm}")
        if ALGORITHMS[algorithm].hsm_only and protection != "HSM":
            raise _invalid(f"{what} {algorithm} is only available at protection level HSM")

    @staticmethod
    def _check_protection(protection: str) -> None:
        if protection not in MODELLED_PROTECTION:
            raise _unsupported(f"protection level {protection}")

    @staticmethod
    def _check_labels(labels: dict[str, str]) -> None:
        if len(labels) > 64:
            raise _invalid("a CryptoKey has at most 64 labels")
        for name, value in labels.items():
            if not _LABEL_KEY.match(name) or not _LABEL_VALUE.match(value):
                raise _invalid(f"label {name!r}: {value!r} does not match the label syntax")

    def _create_crypto_key(self, call: _Call) -> dict[str, Any]:
        parent, body = call.params["parent"], call.body
        self._authorise(call, parent)
        key_id = call.query.get("cryptoKeyId") or ""
        if not _ID.match(key_id):
            raise _invalid(f"crypto_key_id {key_id!r} must match [a-zA-Z0-9_-]{{1,63}}")
        purpose = body.get("purpose", "CRYPTO_KEY_PURPOSE_UNSPECIFIED")
        if purpose == "CRYPTO_KEY_PURPOSE_UNSPECIFIED":
            raise _invalid("crypto_key.purpose is required")
        template = body.get("versionTemplate") or {}
        protection = template.get("protectionLevel", "SOFTWARE")
        if protection == "PROTECTION_LEVEL_UNSPECIFIED":
            protection = "SOFTWARE"
        algorithm = template.get("algorithm", "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED")
        if algorithm == "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED" and purpose == "ENCRYPT_DECRYPT":
            algorithm = "GOOGLE_SYMMETRIC_ENCRYPTION"  # implied, per the discovery document
        self._check_protection(protection)
        self._check_algorithm(algorithm, purpose, protection, "crypto_key.version_template.algorithm")
        import_only = bool(body.get("importOnly", False))
        skip = bool(call.query.get("skipInitialVersionCreation", False))
        if import_only and not skip:
            # [INFER] an import-only key cannot generate its first version.
            raise _invalid("import_only CryptoKeys must be created with skip_initial_version_creation")
        if call.query.get("trustedWrappingEnabled"):
            raise _invalid("trusted_wrapping_enabled is only supported for protection level HSM_SINGLE_TENANT")
        for unmodelled in ("rotationPeriod", "nextRotationTime", "cryptoKeyBackend", "keyAccessJustificationsPolicy"):
            if unmodelled in body:
                raise _unsupported(f"crypto_key.{unmodelled}")
        duration = _parse_duration(body["destroyScheduledDuration"]) if "destroyScheduledDuration" in body \
            else float(DEFAULT_DESTROY_SCHEDULED)
        if not MIN_DESTROY_SCHEDULED <= duration <= MAX_DESTROY_SCHEDULED:
            raise _invalid(f"destroy_scheduled_duration {_duration(duration)} must be between 24 hours and 120 days")
        labels = dict(body.get("labels") or {})
        self._check_labels(labels)
        name = f"{parent}/cryptoKeys/{key_id}"
        with self._lock:
            self._ring(parent)
            if name in self._keys:
                raise GcpError("ALREADY_EXISTS", f"CryptoKey {name} already exists.")
            now = self.clock.now()
            key = _CryptoKey(name, purpose, protection, algorithm, import_only, duration, now, labels)
            self._keys[name] = key
            if not skip:
                version = self._new_generated_version(key, "ENABLED")
                if purpose == "ENCRYPT_DECRYPT":
                    key.primary = version.id
            return self._key_json(key)

    def _new_generated_version(self, key: _CryptoKey, state: str) -> _Version:
        now = self.clock.now()
        material, pem = _generate(key.algorithm)
        version_id = str(len(key.versions) + 1)
        version = _Version(version_id, f"{key.name}/cryptoKeyVersions/{version_id}", key.algorithm, key.protection,
                           now, "generated", "PENDING_GENERATION", staged_material=material, staged_pem=pem)
        version.pending_until, version.outcome = now + (self.version_delay if pem else 0.0), state
        version.settle(now)
        key.versions.append(version)
        return version

    def _get_crypto_key(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        with self._lock:
            return self._key_json(self._key(name))

    def _list_crypto_keys(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        with self._lock:
            self._ring(parent)
            items = [self._key_json(self._key(n)) for n in self._keys if n.startswith(parent + "/cryptoKeys/")]
        return self._page(call, parent, items, "cryptoKeys")

    def _patch_crypto_key(self, call: _Call) -> dict[str, Any]:
        name, body = call.params["name"], call.body
        self._authorise(call, name)
        paths = [p for p in (call.query.get("updateMask") or "").split(",") if p]
        with self._lock:
            key = self._key(name)
            template = body.get("versionTemplate") or {}
            for path in paths:
                if path == "labels":
                    labels = dict(body.get("labels") or {})
                    self._check_labels(labels)
                elif path in ("versionTemplate", "versionTemplate.algorithm"):
                    algorithm = template.get("algorithm", key.algorithm)
                    self._check_algorithm(algorithm, key.purpose, key.protection,
                                          "crypto_key.version_template.algorithm")
                    if path == "versionTemplate" and template.get("protectionLevel", key.protection) != key.protection:
                        raise _invalid("crypto_key.version_template.protection_level is immutable")
                elif path in ("purpose", "importOnly", "destroyScheduledDuration", "versionTemplate.protectionLevel",
                              "cryptoKeyBackend", "name", "createTime", "primary"):
                    raise _invalid(f"update_mask path {path} names an immutable or output-only field")
                elif path in ("rotationPeriod", "nextRotationTime", "keyAccessJustificationsPolicy"):
                    raise _unsupported(f"updating {path}")
                else:
                    raise _invalid(f"update_mask path {path} is not a field of CryptoKey")
            if not paths:
                raise _invalid("update_mask is required")
            if "labels" in paths:
                key.labels = dict(body.get("labels") or {})
            if "versionTemplate" in paths or "versionTemplate.algorithm" in paths:
                key.algorithm = template.get("algorithm", key.algorithm)
            return self._key_json(key)

    def _update_primary(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        version_id = call.body.get("cryptoKeyVersionId") or ""
        if not version_id:
            raise _invalid("crypto_key_version_id is required")
        with self._lock:
            key = self._key(name)
            if key.purpose != "ENCRYPT_DECRYPT":
                raise _precondition(f"CryptoKey {name} has purpose {key.purpose}; only ENCRYPT_DECRYPT keys "
                                    "have a primary version.")
            version = key.version(version_id)
            state = self._version_json(version)["state"]
            if state != "ENABLED":
                raise _precondition(f"{version.name} is not enabled, current state is: {state}.")
            key.primary = version.id
            return self._key_json(key)

    # -- crypto key versions ------------------------------------------------

    def _create_version(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        state = call.body.get("state", "ENABLED")
        if state not in ("ENABLED", "DISABLED", "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED"):
            raise _invalid(f"crypto_key_version.state {state} is not ENABLED or DISABLED")
        if "externalProtectionLevelOptions" in call.body:
            raise _unsupported("external_protection_level_options")
        with self._lock:
            key = self._key(parent)
            if key.import_only:
                raise _precondition(f"CryptoKey {parent} is import only; new versions must be imported.")
            version = self._new_generated_version(
                key, "ENABLED" if state == "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED" else state)
            return self._version_json(version)

    def _get_version(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        with self._lock:
            return self._version_json(self._version(name)[1])

    def _list_versions(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        with self._lock:
            items = [self._version_json(v) for v in self._key(parent).versions]
        return self._page(call, parent, items, "cryptoKeyVersions")

    def _patch_version(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        paths = [p for p in (call.query.get("updateMask") or "").split(",") if p]
        if paths != ["state"]:
            if "externalProtectionLevelOptions" in paths:
                raise _unsupported("updating external_protection_level_options")
            raise _invalid(f"update_mask {','.join(paths) or '(empty)'} is not supported; only state may be updated")
        target = call.body.get("state", "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED")
        if target not in ("ENABLED", "DISABLED"):
            raise _invalid(f"crypto_key_version.state may only be set to ENABLED or DISABLED, not {target}")
        with self._lock:
            _, version = self._version(name)
            current = self._version_json(version)["state"]
            if current not in ("ENABLED", "DISABLED"):
                raise _precondition(f"{name} is not enabled or disabled, current state is: {current}.")
            version.state = target
            return self._version_json(version)

    def _destroy_version(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        with self._lock:
            key, version = self._version(name)
            current = self._version_json(version)["state"]
            if current not in ("ENABLED", "DISABLED"):
                raise _precondition(f"{name} is not enabled or disabled, current state is: {current}.")
            version.state = "DESTROY_SCHEDULED"
            version.destroy_time = self.clock.now() + key.destroy_duration
            return self._version_json(version)

    def _restore_version(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        with self._lock:
            _, version = self._version(name)
            if version.state != "DESTROY_SCHEDULED":
                raise _precondition(f"{name} is not scheduled for destruction, current state is: {version.state}.")
            version.state, version.destroy_time = "DISABLED", None
            return self._version_json(version)

    def _get_public_key(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        requested = call.query.get("publicKeyFormat") or "PUBLIC_KEY_FORMAT_UNSPECIFIED"
        with self._lock:
            key, version = self._version(name)
            if key.purpose not in ("ASYMMETRIC_SIGN", "ASYMMETRIC_DECRYPT"):
                raise _precondition(f"{name} has purpose {key.purpose}; GetPublicKey needs an asymmetric key.")
            state = self._version_json(version)["state"]
            if state != "ENABLED":
                raise _precondition(f"{name} is not enabled, current state is: {state}.")
            if requested in ("NIST_PQC", "XWING_RAW_BYTES"):
                raise _invalid(f"public_key_format {requested} is only valid for post-quantum algorithms")
            assert version.public_pem is not None
            body: dict[str, Any] = {"name": name, "algorithm": version.algorithm,
                                    "protectionLevel": version.protection}
            if requested == "DER":
                der = serialization.load_pem_public_key(version.public_pem.encode()).public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                body["publicKey"] = {"data": base64.b64encode(der).decode(), "crc32cChecksum": str(crc32c(der))}
                body["publicKeyFormat"] = "DER"
            else:
                body["pem"] = version.public_pem
                body["pemCrc32c"] = str(crc32c(version.public_pem.encode()))
                if requested == "PEM":
                    body["publicKeyFormat"] = "PEM"
            return body

    # -- import -----------------------------------------------------------

    def _import_version(self, call: _Call) -> dict[str, Any]:
        parent, body = call.params["parent"], call.body
        target = body.get("cryptoKeyVersion") or ""
        if target:
            self._require("cloudkms.cryptoKeyVersions.update", target)
        else:
            self._authorise(call, parent)
        job_name = body.get("importJob") or ""
        if not job_name:
            raise _invalid("import_job is required")
        match = _IMPORT_JOB.match(job_name)
        if match is None:
            raise _invalid(f"import_job {job_name!r} is not projects/*/locations/*/keyRings/*/importJobs/*")
        if not parent.startswith(match.group(1) + "/"):
            raise _invalid(f"ImportJob {job_name} is not in the location of CryptoKey {parent}")  # [INFER]
        self._require("cloudkms.importJobs.useToImport", job_name)
        algorithm = body.get("algorithm", "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED")
        present = [f for f in ("wrappedKey", "rsaAesWrappedKey") if body.get(f)]
        if len(present) != 1:
            raise _invalid("exactly one of wrapped_key and rsa_aes_wrapped_key must be set, "
                           f"got {', '.join(present) or 'neither'}")
        wrapped = decode_bytes(body[present[0]])
        with self._lock:
            key = self._key(parent)
            job = self._job(job_name)
            now = self.clock.now()
            state = job.state(now)
            if state != "ACTIVE":
                raise _precondition(f"ImportJob {job_name} is not ACTIVE, current state is: {state}.")
            if job.protection != key.protection:
                raise _invalid(f"ImportJob {job_name} has protection level {job.protection}, but CryptoKey "
                               f"{parent} has {key.protection}; they must match.")
            self._check_algorithm(algorithm, key.purpose, key.protection, "algorithm")
            method = IMPORT_METHODS[job.method]
            if present[0] == "rsaAesWrappedKey" and not method.aes_kwp:
                raise _invalid(f"rsa_aes_wrapped_key needs an RSA_OAEP_*_AES_256 import method, not {job.method}")
            modulus = method.bits // 8
            if method.aes_kwp and (len(wrapped) < modulus + 16 or (len(wrapped) - modulus) % 8):
                raise _invalid(f"wrapped key is {len(wrapped)} bytes; {job.method} needs {modulus} bytes of "
                               "RSA-OAEP followed by an AES-KWP output (a multiple of 8, at least 16)")
            if not method.aes_kwp and len(wrapped) != modulus:
                raise _invalid(f"wrapped key is {len(wrapped)} bytes; {job.method} produces exactly {modulus}")
            version = self._reimport_target(key, target, algorithm) if target else None
            material, pem, reason = self._unwrap_and_check(job, method, wrapped, algorithm)
            if reason is None and version is not None and version.material_digest is not None \
                    and hashlib.sha256(material or b"").digest() != version.material_digest:
                reason = "The key material does not match the material this version held before."
            if reason is not None:
                self._report("service", call.raw, _operation(call.method),
                             f"import into {parent} will fail: {reason}", "kms")
            elif self.forced_import_failures:
                reason = self.forced_import_failures.pop(0)
            if version is None:
                version_id = str(len(key.versions) + 1)
                version = _Version(version_id, f"{key.name}/cryptoKeyVersions/{version_id}", algorithm,
                                   key.protection, now, "imported", "PENDING_IMPORT")
                key.versions.append(version)
            version.state, version.algorithm, version.import_job = "PENDING_IMPORT", algorithm, job_name
            version.destroy_time = version.destroy_event_time = None
            version.pending_until = now + self.version_delay
            version.outcome = "IMPORT_FAILED" if reason else "ENABLED"
            version.failure_reason = reason
            version.staged_material, version.staged_pem = (None, None) if reason else (material, pem)
            version.settle(now)
            return self._version_json(version)

    @staticmethod
    def _reimport_target(key: _CryptoKey, target: str, algorithm: str) -> _Version:
        key_name, _, version_id = target.rpartition("/cryptoKeyVersions/")
        if key_name != key.name:
            raise _invalid(f"crypto_key_version {target} is not a child of {key.name}")
        version = key.version(version_id)
        if version.origin != "imported":
            raise _precondition(f"{target} was not created by ImportCryptoKeyVersion and is not eligible for reimport.")
        if version.state not in ("DESTROYED", "IMPORT_FAILED") or version.pending_until is not None:
            raise _precondition(f"{target} must be DESTROYED or IMPORT_FAILED to be reimported, "
                                f"current state is: {version.state}.")
        if version.material_digest is not None and version.algorithm != algorithm:
            raise _invalid(f"algorithm {algorithm} differs from {version.algorithm}, the algorithm {target} had")
        return version

    @staticmethod
    def _unwrap_and_check(job: _ImportJob, method: ImportMethod, wrapped: bytes,
                          algorithm: str) -> tuple[bytes | None, str | None, str | None]:
        """(material, public PEM, failure reason): failures surface as IMPORT_FAILED, as on Google."""
        try:
            material = unwrap(job.key.result(), method, wrapped)
            return material, check_material(algorithm, material), None
        except KeyMaterialError as error:
            return None, None, str(error)

    # -- import jobs -------------------------------------------------------

    def _create_import_job(self, call: _Call) -> dict[str, Any]:
        parent, body = call.params["parent"], call.body
        self._authorise(call, parent)
        job_id = call.query.get("importJobId") or ""
        if not _ID.match(job_id):
            raise _invalid(f"import_job_id {job_id!r} must match [a-zA-Z0-9_-]{{1,63}}")
        method_name = body.get("importMethod", "IMPORT_METHOD_UNSPECIFIED")
        protection = body.get("protectionLevel", "PROTECTION_LEVEL_UNSPECIFIED")
        if method_name == "IMPORT_METHOD_UNSPECIFIED":
            raise _invalid("import_job.import_method is required")
        if protection == "PROTECTION_LEVEL_UNSPECIFIED":
            raise _invalid("import_job.protection_level is required")
        if protection not in MODELLED_PROTECTION + ("HSM_SINGLE_TENANT",):
            raise _invalid(f"import_job.protection_level {protection} is not supported for import jobs")
        self._check_protection(protection)
        if method_name not in IMPORT_METHODS:
            raise _unsupported(f"import method {method_name}")
        if "cryptoKeyBackend" in body:
            raise _unsupported("import_job.crypto_key_backend")
        name = f"{parent}/importJobs/{job_id}"
        with self._lock:
            self._ring(parent)
            if name in self._jobs:
                raise GcpError("ALREADY_EXISTS", f"ImportJob {name} already exists.")
            bits = IMPORT_METHODS[method_name].bits
            now = self.clock.now()
            job = _ImportJob(name, method_name, protection, now, self.import_job_lifetime,
                             now + self.import_job_delay, _KEY_POOL.take(bits))
            self._jobs[name] = job
            return self._job_json(job)

    def _get_import_job(self, call: _Call) -> dict[str, Any]:
        name = call.params["name"]
        self._authorise(call, name)
        requested = call.query.get("publicKeyFormat") or "PUBLIC_KEY_FORMAT_UNSPECIFIED"
        if requested in ("NIST_PQC", "XWING_RAW_BYTES"):
            raise _invalid(f"public_key_format {requested} is only valid for post-quantum import methods")
        with self._lock:
            return self._job_json(self._job(name), requested)

    def _list_import_jobs(self, call: _Call) -> dict[str, Any]:
        parent = call.params["parent"]
        self._authorise(call, parent)
        with self._lock:
            self._ring(parent)
            items = [self._job_json(j) for n, j in self._jobs.items() if n.startswith(parent + "/importJobs/")]
        return self._page(call, parent, items, "importJobs")

    # -- test-facing views --------------------------------------------------

    def snapshot(self) -> KmsSnapshot:
        with self._lock:
            keys = {name: self.key_snapshot(name) for name in self._keys}
            now = self.clock.now()
            jobs = {name: ImportJobSnapshot(name, j.method, j.protection, j.state(now), j.public_pem())
                    for name, j in self._jobs.items()}
            return KmsSnapshot(sorted(self._rings), keys, jobs)

    def key_snapshot(self, name: str) -> CryptoKeySnapshot:
        with self._lock:
            key = self._keys.get(name)
            if key is None:
                raise KeyError(name)
            self._key(name)
            return CryptoKeySnapshot(key.name, key.purpose, key.protection, key.algorithm, key.import_only,
                                     key.destroy_duration, key.primary, dict(key.labels),
                                     [v.snapshot() for v in key.versions])

    def expire_job(self, name: str) -> None:
        with self._lock:
            self._job(name).expired_at = self.clock.now()


def _field(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else "" if value is None else str(value)


def _parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """The AIP-160 subset list filters need: `field=value`, `!=`, `:`, NOT, AND, OR (no parentheses).

    OR binds tighter than AND, as AIP-160 says. Fields are JSON paths of the
    listed resource (`state`, `versionTemplate.algorithm`, `labels.env`).
    Anything else is valid for Google but not modelled, and is refused as such.
    """
    conjuncts = []
    for conjunct in re.split(r"\s+AND\s+", text.strip()):
        terms = []
        for raw in re.split(r"\s+OR\s+", conjunct.strip()):
            match = _FILTER_TERM.match(raw.strip())
            if match is None:
                raise _unsupported(f"filter {text!r} (only field=value terms joined by AND/OR are modelled)")
            negate, path, operator, value = match.groups()
            if value.startswith('"'):
                value = json.loads(value)
            terms.append((bool(negate), path, operator, value))
        conjuncts.append(terms)

    def matches(term: tuple[bool, str, str, str], resource: dict[str, Any]) -> bool:
        negate, path, operator, value = term
        actual = _field(resource, path)
        if operator == ":":
            hit = value == "*" and actual is not None or _text(actual) == value or (
                isinstance(actual, list) and value in [_text(a) for a in actual])
        else:
            hit = (_text(actual) == value) == (operator == "=")
        return hit != negate

    return lambda resource: all(any(matches(t, resource) for t in terms) for terms in conjuncts)


def _order(items: list[dict[str, Any]], order_by: str) -> list[dict[str, Any]]:
    """`field [asc|desc]`, comma-separated; stable, so later fields break ties first."""
    keys = []
    for part in order_by.split(","):
        words = part.split()
        if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise _unsupported(f"order_by {order_by!r}")
        keys.append((words[0], len(words) == 2 and words[1] == "desc"))
    ordered = list(items)
    for path, descending in reversed(keys):
        ordered.sort(key=lambda item: _text(_field(item, path)), reverse=descending)
    return ordered


# -- the fake ---------------------------------------------------------------------


class GcpKmsFake:
    """Cloud KMS and the OAuth token endpoint on loopback HTTPS, with a test-facing API.

    Point the client at `kms_url` (an api_endpoint / `with_endpoint`), give it
    `service_account_file`, and make it trust `ca_pem_path` (Rust reqwest:
    SSL_CERT_FILE; Python requests: REQUESTS_CA_BUNDLE). Key rings exist by
    configuration (`key_rings`); keyRings.create works too.
    """

    def __init__(
        self,
        *,
        key_rings: tuple[str, ...] = (DEFAULT_KEY_RING,),
        service_accounts: list[ServiceAccountKey] | None = None,
        token_lifetime: int = 3600,
        import_job_delay: float = 0.2,
        import_job_lifetime: float = IMPORT_JOB_LIFETIME,
        version_delay: float = 0.2,
        default_page_size: int = DEFAULT_PAGE_SIZE,
        spec_path: Path = SPEC_PATH,
    ) -> None:
        project = key_rings[0].split("/")[1] if key_rings else DEFAULT_PROJECT
        self._auth = GoogleAuth(
            service_accounts if service_accounts is not None else [new_service_account(project)],
            token_lifetime=token_lifetime,
            on_misuse=lambda service, request, message: self._report("protocol", request, None, message, service),
        )
        self._kms = _Kms(DiscoveryDocument.load(spec_path), self._auth, key_rings, self._report)
        self._kms.import_job_delay = import_job_delay
        self._kms.import_job_lifetime = import_job_lifetime
        self._kms.version_delay = version_delay
        self._kms.default_page_size = default_page_size
        self._faults = GcpFaultPlan()
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._failures: list[ValidationFailure] = []
        self._listeners: dict[str, Listener] = {}
        self._workdir: TemporaryDirectory[str] | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> GcpKmsFake:
        if self._workdir is not None:
            raise RuntimeError("fake already started")
        self._workdir = TemporaryDirectory(prefix="gcp-kms-fake-")
        directory = Path(self._workdir.name)
        ca = FakeCA("keymgmt Cloud KMS fake CA")
        (directory / "ca.pem").write_bytes(ca.cert_pem())
        tls = ca.server_context(directory, ["localhost"], ["127.0.0.1"])
        handlers = {"kms": self._kms.serve, "oauth2": self._auth.token_endpoint}
        self._listeners = {
            service: _GcpListener(service, handler, self._faults, self._log, self._crash_reporter(service), tls)
            for service, handler in handlers.items()
        }
        for listener in self._listeners.values():
            listener.start()
        self._auth.token_uri = self._listeners["oauth2"].url + TOKEN_PATH
        return self

    def stop(self) -> None:
        stoppers = [threading.Thread(target=listener.stop) for listener in self._listeners.values()]
        for stopper in stoppers:  # in parallel: each waits out a serve_forever poll interval
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self._listeners = {}
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> GcpKmsFake:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- where and who ----------------------------------------------------

    @property
    def kms_url(self) -> str:
        """The API endpoint, e.g. https://127.0.0.1:PORT (paths start with /v1/)."""
        return self._listeners["kms"].url

    @property
    def token_uri(self) -> str:
        return self._auth.token_uri

    @property
    def ca_pem_path(self) -> str:
        return str(self._directory() / "ca.pem")

    @property
    def key_rings(self) -> list[str]:
        return self.snapshot().key_rings

    @property
    def key_collection(self) -> str:
        """The first configured key ring: the keymgmt `gcpckms` provider's key_collection."""
        return self.key_rings[0]

    @property
    def service_account(self) -> ServiceAccountKey:
        return self._auth.accounts[0]

    @property
    def service_accounts(self) -> list[ServiceAccountKey]:
        """The accounts the fake accepts; mutate to rotate or delete keys."""
        return self._auth.accounts

    def service_account_info(self, account: ServiceAccountKey | None = None) -> dict[str, str]:
        return (account or self.service_account).info(self.token_uri)

    @property
    def service_account_file(self) -> str:
        """A key file for the first account (0600, in the fake's own temporary directory)."""
        path = self._directory() / "service-account.json"
        if not path.exists():
            self.service_account.write_key_file(path, self.token_uri)
        return str(path)

    def _directory(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("fake not started")
        return Path(self._workdir.name)

    # -- inspection -------------------------------------------------------

    def snapshot(self) -> KmsSnapshot:
        """Everything: key rings, CryptoKeys with versions (material included), import jobs."""
        return self._kms.snapshot()

    def crypto_key(self, name: str) -> CryptoKeySnapshot:
        """KeyError if unknown. `name` is the full resource name."""
        return self._kms.key_snapshot(name)

    def versions(self, key_name: str) -> list[VersionSnapshot]:
        return self.crypto_key(key_name).versions

    def crypto_keys(self) -> list[str]:
        return sorted(self.snapshot().crypto_keys)

    def import_jobs(self) -> dict[str, ImportJobSnapshot]:
        return self.snapshot().import_jobs

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    @property
    def validation_failures(self) -> list[ValidationFailure]:
        with self._log_lock:
            return list(self._failures)

    @property
    def principals(self) -> list[Principal]:
        """Who each authenticated API request came from, and by which mode."""
        with self._kms._lock:
            return list(self._kms.principals)

    @property
    def auth_rejections(self) -> list[AuthRejection]:
        """Why credentials were refused (never the credentials themselves)."""
        return list(self._auth.rejections)

    # -- steering ---------------------------------------------------------

    def inject(self, method: str, path_regex: str, kind: str, times: int = 1) -> None:
        """Queue a fault for requests whose method ("*" = any) and path (re.search) match.

        kind: "429", "500", "503", "504" (Google error bodies), "delay:<seconds>"
        (then served), "drop" (connection closed, nothing done) or "lost" (the
        request is carried out, then the connection is closed unanswered).
        """
        self._faults.add(method, path_regex, kind, times)

    def pending_faults(self) -> list[tuple[str, str, str, int]]:
        """Injected faults that no request has matched yet."""
        return self._faults.pending()

    def deny(self, *permissions: str) -> None:
        """Answer 403 PERMISSION_DENIED wherever these IAM permissions are checked."""
        unknown = [p for p in permissions if p not in KNOWN_PERMISSIONS]
        if unknown:
            raise ValueError(f"unknown permissions {unknown}; known: {sorted(KNOWN_PERMISSIONS)}")
        self._kms.denied.update(permissions)

    def allow(self, *permissions: str) -> None:
        self._kms.denied.difference_update(permissions)

    def advance(self, seconds: float) -> None:
        """Move the fake's clock: import jobs expire, scheduled destructions happen, pending work ends."""
        self._kms.clock.offset += seconds

    def expire_import_job(self, name: str) -> None:
        self._kms.expire_job(name)

    def fail_next_imports(self, reason: str = "The import failed in the HSM.", times: int = 1) -> None:
        """Make the next well-formed imports end IMPORT_FAILED, as a backend fault would."""
        self._kms.forced_import_failures.extend([reason] * times)

    def set_latency(self, seconds: float, service: str = "kms") -> None:
        """Make every request to `service` wait `seconds` before it is served."""
        self._listeners[service].latency = seconds

    def max_in_flight(self, service: str = "kms", method: str | None = None) -> int:
        """The most requests to `service` (of `method`, if given) served at once since the last reset."""
        listener = self._listeners[service]
        return listener.max_in_flight if method is None else listener.max_in_flight_by_method.get(method, 0)

    def reset_max_in_flight(self, service: str = "kms") -> None:
        self._listeners[service].reset_max_in_flight()

    def expire_tokens(self) -> None:
        self._auth.expire_all()

    @property
    def import_job_delay(self) -> float:
        return self._kms.import_job_delay

    @import_job_delay.setter
    def import_job_delay(self, seconds: float) -> None:
        self._kms.import_job_delay = seconds

    @property
    def import_job_lifetime(self) -> float:
        """Seconds from creation to EXPIRED for jobs created from now on (Google: 3 days)."""
        return self._kms.import_job_lifetime

    @import_job_lifetime.setter
    def import_job_lifetime(self, seconds: float) -> None:
        self._kms.import_job_lifetime = seconds

    @property
    def version_delay(self) -> float:
        """Seconds a version stays PENDING_IMPORT (or PENDING_GENERATION)."""
        return self._kms.version_delay

    @version_delay.setter
    def version_delay(self, seconds: float) -> None:
        self._kms.version_delay = seconds

    @property
    def default_page_size(self) -> int:
        return self._kms.default_page_size

    @default_page_size.setter
    def default_page_size(self, size: int) -> None:
        self._kms.default_page_size = size

    # -- internals --------------------------------------------------------

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)

    def _crash_reporter(self, service: str) -> Callable[[Request, str], None]:
        return lambda request, trace: self._report("crash", request, None, trace, service)

    def _report(self, source: str, request: Request, operation: str | None, message: str, service: str) -> None:
        with self._log_lock:
            self._failures.append(ValidationFailure(service, request.method, request.path, operation, source, message))


@contextlib.contextmanager
def FakeCloudKms(*, allow_violations: bool = False, **options: Any) -> Iterator[GcpKmsFake]:
    """A started fake for a `with` block or a pytest fixture.

    Unless `allow_violations`, a block that finishes normally fails if any
    request was recorded as a validation failure, so tests cannot forget to check.
    """
    fake = GcpKmsFake(**options).start()
    try:
        yield fake
    finally:
        fake.stop()
    if not allow_violations and fake.validation_failures:
        details = "\n".join(f"  {f.source}: {f.method} {f.path}: {f.message}" for f in fake.validation_failures)
        raise AssertionError(f"the GCP KMS fake recorded validation failures:\n{details}")
