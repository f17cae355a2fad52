"""A faithful, strict HTTPS fake of Azure Key Vault (keys, api-version 7.6) and Entra ID.

Azure has no installable emulator, and lowkey-vault ignores BYOK blobs, so the
plugin's Azure path is tested against this fake instead. It is only worth
something because it is strict: every data-plane request is checked against
the official swagger (`specs/keys-7.6.json`), every imported key is unwrapped
or rebuilt independently with `cryptography`, and every rejected request is
recorded so a test can assert that the plugin sent none.

Three listeners run on 127.0.0.1: the vault and the Entra ID authority over
HTTPS (certificates from a CA made at start, see `ca_pem_path`), and IMDS over
plain HTTP as on a real VM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .azure_auth import KEYVAULT_RESOURCE, TokenIssuer
from .azure_crypto import (
    CURVES,
    RSA_SIZES,
    KeyMaterialError,
    PrivateKey,
    curve_name,
    generate,
    load_pkcs8,
    parse_transfer_blob,
    private_key_from_jwk,
    public_jwk,
    unwrap_rsa_aes_key_wrap,
)
from .httpserver import FaultPlan, Listener, Request, RequestRecord, Response
from .swagger import Operation, SpecViolation, SwaggerSpec, ValidatedRequest
from .tls import FakeCA

SPEC_PATH = Path(__file__).with_name("specs") / "keys-7.6.json"
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90
_DAY = 86400
_RSA_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
_EC_OPS = ("sign", "verify")
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_KID_PATH = re.compile(r"^/keys/([0-9a-zA-Z-]+)/([0-9a-f]{32})$")
_PAGE_SIZE = 25


@dataclass(frozen=True)
class ValidationFailure:
    """A request the fake rejected because a correct client would not send it.

    source: "spec" (breaks the swagger or the accepted api-versions),
    "service" (breaks a Key Vault rule, e.g. an RSA-1024 key or a bad BYOK
    blob), "unsupported" (valid, but not modelled by the fake), "protocol"
    (a malformed Entra ID / IMDS request), or a bug in the fake: "response"
    (its reply broke the swagger) or "crash" (it raised; message is the traceback).
    """

    service: str
    method: str
    path: str
    operation: str | None
    source: str
    message: str


@dataclass
class KeyVersion:
    """One key version as the vault holds it, private half included."""

    name: str
    version: str
    kty: str
    key_ops: list[str]
    private_key: PrivateKey
    origin: str  # "generated", "byok" or "software"
    enabled: bool
    created: int
    updated: int
    nbf: int | None = None
    exp: int | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def is_kek(self) -> bool:
        return self.kty == "RSA-HSM" and self.key_ops == ["import"]

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def snapshot(self) -> KeyVersion:
        return dataclasses.replace(self, key_ops=list(self.key_ops), tags=dict(self.tags))


@dataclass
class _Key:
    name: str  # as first created; lookups ignore case, as Key Vault's do
    versions: list[KeyVersion]
    deleted_date: int | None = None


class AzureError(Exception):
    """An error response; `source` set means it is also a recorded failure."""

    def __init__(
        self, status: int, code: str, message: str, source: str | None = None,
        operation: Operation | None = None, inner: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.source = status, code, message, source
        self.operation, self.inner = operation, inner

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner is not None:
            error["innererror"] = {"code": self.inner}
        return Response(self.status, {"error": error})


def _bad(message: str) -> AzureError:
    return AzureError(400, "BadParameter", message, "service")


def _unsupported(message: str) -> AzureError:
    return AzureError(400, "BadParameter", f"not modelled by the fake: {message}", "unsupported")


def _not_found(what: str) -> AzureError:
    return AzureError(404, "KeyNotFound", (
        f"A key with (name/id) {what} was not found in this key vault. If you recently deleted "
        "this key you may be able to recover it using the correct recovery command."
    ))


def _family(kty: str) -> str:
    family = kty.removesuffix("-HSM")
    if family == "oct":
        raise _bad("oct keys are supported only by Managed HSM, not by a key vault")
    return family


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class _Call:
    request: ValidatedRequest
    base: str  # https://host:port, as the client addressed the vault
    api_version: str

    @property
    def name(self) -> str:
        return self.request.path_params["key-name"]

    @property
    def body(self) -> dict[str, Any]:
        return self.request.body or {}


class _Vault:
    """Key Vault data plane: authentication, validation, then the key store."""

    def __init__(
        self,
        spec: SwaggerSpec,
        issuer: TokenIssuer,
        api_versions: frozenset[str],
        challenge: Callable[[], str],
        report: Callable[[str, Request, str | None, str, str], None],
    ) -> None:
        self._spec = spec
        self._issuer = issuer
        self._api_versions = api_versions
        self._challenge = challenge
        self._report = report
        self._operations = frozenset(spec.definition("JsonWebKeyOperation")["enum"])
        # Both maps are keyed by the lower-cased name: Key Vault names are case-insensitive.
        self._keys: dict[str, _Key] = {}
        self._deleted: dict[str, _Key] = {}
        self._lock = threading.RLock()
        self._handlers: dict[str, Callable[[_Call], Response]] = {
            "CreateKey": self._create_key,
            "ImportKey": self._import_key,
            "GetKey": self._get_key,
            "UpdateKey": self._update_key,
            "GetKeyVersions": self._get_key_versions,
            "DeleteKey": self._delete_key,
            "GetDeletedKey": self._get_deleted_key,
            "PurgeDeletedKey": self._purge_deleted_key,
            "RecoverDeletedKey": self._recover_deleted_key,
            "RotateKey": self._rotate_key,
        }

    # -- request pipeline -------------------------------------------------

    def serve(self, request: Request) -> Response:
        problem = self._issuer.bearer_problem(request.headers.get("Authorization"))
        if problem is not None:
            return Response(401, {"error": {"code": "Unauthorized", "message": problem}},
                            headers={"WWW-Authenticate": self._challenge()})
        operation: Operation | None = None
        try:
            call = self._validate(request)
            operation = call.request.operation
            handler = self._handlers.get(operation.operation_id)
            if handler is None:
                raise AzureError(501, "NotImplemented",
                                 f"the fake does not implement {operation.operation_id}", "unsupported")
            response = handler(call)
        except AzureError as error:
            operation = operation or error.operation
            if error.source is not None:
                operation_id = operation.operation_id if operation else None
                self._report(error.source, request, operation_id, error.message, "vault")
            response = error.response()
        if operation is not None:
            response.operation = operation.operation_id
            for problem in self._spec.validate_response(operation, response.status, response.body):
                self._report("response", request, operation.operation_id, problem, "vault")
        return response

    def _validate(self, request: Request) -> _Call:
        problems = []
        operation = None
        versions = request.query.get("api-version", [])
        if versions and versions[0] not in self._api_versions:
            problems.append(
                f"The specified version ({versions[0]}) is not recognized. Consider using "
                f"a supported version ({', '.join(sorted(self._api_versions))})."
            )
        try:
            validated = self._spec.validate_request(
                request.method, request.path, request.query,
                request.headers.get("Content-Type"), request.body,
            )
        except SpecViolation as violation:
            problems += violation.problems
            operation = violation.operation
        host = request.headers.get("Host")
        if not host:
            problems.append("the Host header is required")
        if problems:
            raise AzureError(400, "BadParameter", "; ".join(problems), "spec", operation)
        return _Call(validated, f"https://{host}", versions[0])

    # -- state helpers ----------------------------------------------------

    def _live(self, name: str) -> _Key:
        key = self._keys.get(name.lower())
        if key is None:
            raise _not_found(name)
        return key

    def _version(self, name: str, version: str) -> KeyVersion:
        """`version` "" is the optional segment left out: the latest version."""
        key = self._live(name)
        if version == "":
            return key.versions[-1]
        for candidate in key.versions:
            if candidate.version == version:
                return candidate
        raise _not_found(f"{name}/{version}")

    def _ensure_name_free(self, name: str) -> None:
        if name.lower() in self._deleted:
            raise AzureError(409, "Conflict", (
                f"Key {name} is currently in a deleted but recoverable state, and its name cannot "
                "be reused; in this state, the key can only be recovered or purged."
            ))

    def _add_version(self, name: str, **fields: Any) -> KeyVersion:
        now = _now()
        with self._lock:
            self._ensure_name_free(name)
            key = self._keys.setdefault(name.lower(), _Key(name, []))
            version = KeyVersion(name=key.name, version=uuid.uuid4().hex, created=now, updated=now, **fields)
            key.versions.append(version)
            return version

    # -- request semantics ------------------------------------------------

    def _key_ops(self, ops: list[str] | None, kty: str, *, may_import: bool) -> list[str]:
        family = _family(kty)
        allowed = _RSA_OPS if family == "RSA" else _EC_OPS
        if ops is None:
            return list(allowed)
        unknown = [op for op in ops if op not in self._operations]
        if unknown:
            raise _bad(f"key_ops {unknown} are not JsonWebKeyOperation values")
        if len(set(ops)) != len(ops):
            raise _bad(f"key_ops {ops} contains duplicates")
        if "import" in ops:
            if not may_import or kty != "RSA-HSM" or ops != ["import"]:
                raise _bad("key_ops 'import' is only valid alone, on an RSA-HSM key exchange key")
            return list(ops)
        misfits = [op for op in ops if op not in allowed]
        if misfits:
            raise _bad(f"key_ops {misfits} are not valid for a {kty} key")
        return list(ops)

    @staticmethod
    def _attributes(body: dict[str, Any]) -> dict[str, Any]:
        """The writable attributes the fake models; rejects what it cannot honour."""
        if "release_policy" in body:
            raise _unsupported("release_policy (secure key release)")
        attributes = body.get("attributes") or {}
        if attributes.get("exportable"):
            raise _unsupported("exportable keys")
        return {name: attributes[name] for name in ("enabled", "nbf", "exp") if name in attributes}

    def _bundle(self, base: str, version: KeyVersion) -> dict[str, Any]:
        body: dict[str, Any] = {
            "key": {
                "kid": f"{base}/keys/{version.name}/{version.version}",
                "kty": version.kty,
                "key_ops": list(version.key_ops),
                **public_jwk(version.private_key),
            },
            "attributes": self._attributes_json(version),
        }
        if version.tags:
            body["tags"] = dict(version.tags)
        return body

    @staticmethod
    def _attributes_json(version: KeyVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": RECOVERABLE_DAYS,
            "exportable": False,
        }
        for name in ("nbf", "exp"):
            if getattr(version, name) is not None:
                attributes[name] = getattr(version, name)
        return attributes

    def _deleted_bundle(self, base: str, key: _Key) -> dict[str, Any]:
        assert key.deleted_date is not None
        return {
            **self._bundle(base, key.versions[-1]),
            "recoveryId": f"{base}/deletedkeys/{key.name}",
            "deletedDate": key.deleted_date,
            "scheduledPurgeDate": key.deleted_date + RECOVERABLE_DAYS * _DAY,
        }

    # -- CreateKey / RotateKey -------------------------------------------

    def _create_key(self, call: _Call) -> Response:
        body = call.body
        kty = body["kty"]
        family = _family(kty)
        key_size, crv = body.get("key_size"), body.get("crv")
        if family == "RSA":
            if crv is not None:
                raise _bad("crv is not valid for an RSA key")
            if (key_size or 2048) not in RSA_SIZES:
                raise _bad(f"key_size {key_size} is not one of {RSA_SIZES}")
            if body.get("public_exponent", 65537) != 65537:
                raise _bad("public_exponent must be 65537")
        elif key_size is not None or "public_exponent" in body:
            raise _bad("key_size and public_exponent are not valid for an EC key")
        key_ops = self._key_ops(body.get("key_ops"), kty, may_import=True)
        attributes = self._attributes(body)
        with self._lock:
            self._ensure_name_free(call.name)
        version = self._add_version(
            call.name, kty=kty, key_ops=key_ops, private_key=generate(family, key_size, crv),
            origin="generated", enabled=attributes.pop("enabled", True),
            tags=dict(body.get("tags") or {}), **attributes,
        )
        return Response(200, self._bundle(call.base, version))

    def _rotate_key(self, call: _Call) -> Response:
        with self._lock:
            current = self._live(call.name).versions[-1]
        old = current.private_key
        if isinstance(old, rsa.RSAPrivateKey):
            private = generate("RSA", old.key_size, None)
        else:
            private = generate("EC", None, curve_name(old))
        version = self._add_version(
            call.name, kty=current.kty, key_ops=list(current.key_ops), private_key=private,
            origin="generated", enabled=True, tags=dict(current.tags),
        )
        return Response(200, self._bundle(call.base, version))

    # -- ImportKey --------------------------------------------------------

    def _import_key(self, call: _Call) -> Response:
        body = call.body
        jwk: dict[str, Any] = body["key"]
        kty = jwk.get("kty")
        if kty is None:
            raise _bad("key.kty is required")
        family = _family(kty)
        hsm = body.get("Hsm")
        key_ops = self._key_ops(jwk.get("key_ops"), kty, may_import=False)
        attributes = self._attributes(body)
        with self._lock:
            self._ensure_name_free(call.name)
        try:
            if "key_hsm" in jwk:
                private, origin, stored_kty = self._unwrap_byok(call.base, jwk, kty, family, hsm), "byok", kty
            else:
                private, origin = self._software_key(jwk, kty, family), "software"
                stored_kty = f"{kty}-HSM" if hsm else kty
        except KeyMaterialError as error:
            raise _bad(str(error)) from None
        if isinstance(private, rsa.RSAPrivateKey) and private.key_size not in RSA_SIZES:
            raise _bad(f"RSA key size {private.key_size} is not one of {RSA_SIZES}")
        version = self._add_version(
            call.name, kty=stored_kty, key_ops=key_ops, private_key=private, origin=origin,
            enabled=attributes.pop("enabled", True), tags=dict(body.get("tags") or {}), **attributes,
        )
        return Response(200, self._bundle(call.base, version))

    @staticmethod
    def _software_key(jwk: dict[str, Any], kty: str, family: str) -> PrivateKey:
        if kty.endswith("-HSM"):
            raise _bad(f"kty {kty} without key_hsm: a plain JWK uses kty {family} (with Hsm true for an HSM key)")
        if "k" in jwk:
            raise _bad("key.k is only valid for oct keys")
        return private_key_from_jwk(jwk, family)

    def _unwrap_byok(
        self, base: str, jwk: dict[str, Any], kty: str, family: str, hsm: bool | None
    ) -> PrivateKey:
        """key-transfer.md §3.3: resolve the KEK, unwrap, parse PKCS#8, cross-check the JWK."""
        if hsm is False:
            raise _bad("Hsm must not be false for a key_hsm (BYOK) import")
        if not kty.endswith("-HSM"):
            raise _bad(f"a key_hsm (BYOK) import needs kty RSA-HSM or EC-HSM, not {kty}")
        private_members = [m for m in _PRIVATE_JWK_MEMBERS if m in jwk]
        if private_members:
            raise _bad(f"key {private_members} must not accompany key_hsm")
        if family == "EC" and jwk.get("crv") not in CURVES:
            raise _bad("key.crv is required for an EC-HSM import")
        blob = parse_transfer_blob(jwk["key_hsm"])
        kek = self._kek(base, blob.kid)
        der = unwrap_rsa_aes_key_wrap(kek, blob.ciphertext)
        private = load_pkcs8(der, "RSA" if family == "RSA" else jwk["crv"])
        public = public_jwk(private)
        mismatched = [m for m in ("n", "e", "x", "y") if m in jwk and jwk[m] != public.get(m)]
        if mismatched:
            raise _bad(f"key {mismatched} do not match the wrapped private key")
        return private

    def _kek(self, base: str, kid: str) -> rsa.RSAPrivateKey:
        url = urlsplit(kid)
        match = _KID_PATH.match(url.path)
        if f"{url.scheme}://{url.netloc}" != base or match is None or url.query or url.fragment:
            raise _bad(f"transfer blob kid {kid!r} is not a versioned key id in this vault ({base})")
        with self._lock:
            try:
                kek = self._version(match.group(1), match.group(2))
            except AzureError:
                raise _bad(f"key exchange key {kid} does not exist in this vault") from None
        if not kek.is_kek:
            raise _bad(f"{kid} is not a key exchange key (kty RSA-HSM, key_ops ['import'])")
        if not kek.enabled or (kek.exp is not None and kek.exp <= _now()):
            raise _bad(f"key exchange key {kid} is disabled or expired")
        assert isinstance(kek.private_key, rsa.RSAPrivateKey)
        return kek.private_key

    # -- GetKey / UpdateKey / GetKeyVersions ------------------------------

    def _get_key(self, call: _Call) -> Response:
        with self._lock:
            version = self._version(call.name, call.request.path_params["key-version"])
            if not version.enabled:
                # Key Vault shows nothing of a disabled version, whatever the
                # caller's permissions; PATCH, list and delete still work.
                raise AzureError(403, "Forbidden", "Operation get is not allowed on a disabled key.",
                                 inner="KeyDisabled")
            return Response(200, self._bundle(call.base, version))

    def _update_key(self, call: _Call) -> Response:
        body = call.body
        attributes = self._attributes(body)
        with self._lock:
            version = self._version(call.name, call.request.path_params["key-version"])
            if "key_ops" in body:
                version.key_ops = self._key_ops(body["key_ops"], version.kty, may_import=version.is_kek)
            for name, value in attributes.items():
                setattr(version, name, value)
            if "tags" in body:
                version.tags = dict(body["tags"] or {})
            version.updated = _now()
            return Response(200, self._bundle(call.base, version))

    def _get_key_versions(self, call: _Call) -> Response:
        page_size = call.request.query.get("maxresults", _PAGE_SIZE)
        skip_raw = call.request.query.get("$skiptoken") or "0"
        if not skip_raw.isdigit():
            raise _bad(f"$skiptoken {skip_raw!r} was not issued by this vault")
        skip = int(skip_raw)
        with self._lock:
            key = self._live(call.name)
            versions = key.versions
            page = versions[skip:skip + page_size]
            body: dict[str, Any] = {"value": [
                {"kid": f"{call.base}/keys/{v.name}/{v.version}", "attributes": self._attributes_json(v),
                 **({"tags": dict(v.tags)} if v.tags else {})}
                for v in page
            ]}
            if skip + page_size < len(versions):
                body["nextLink"] = (
                    f"{call.base}/keys/{key.name}/versions?api-version={call.api_version}"
                    f"&$skiptoken={skip + page_size}&maxresults={page_size}"
                )
        return Response(200, body)

    # -- DeleteKey and the deleted-key operations -------------------------

    def _delete_key(self, call: _Call) -> Response:
        with self._lock:
            key = self._keys.pop(self._live(call.name).name.lower())
            key.deleted_date = _now()
            self._deleted[key.name.lower()] = key
            return Response(200, self._deleted_bundle(call.base, key))

    def _deleted_key(self, name: str) -> _Key:
        key = self._deleted.get(name.lower())
        if key is None:
            raise AzureError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return key

    def _get_deleted_key(self, call: _Call) -> Response:
        with self._lock:
            return Response(200, self._deleted_bundle(call.base, self._deleted_key(call.name)))

    def _purge_deleted_key(self, call: _Call) -> Response:
        with self._lock:
            del self._deleted[self._deleted_key(call.name).name.lower()]
        return Response(204)

    def _recover_deleted_key(self, call: _Call) -> Response:
        with self._lock:
            key = self._deleted.pop(self._deleted_key(call.name).name.lower())
            key.deleted_date = None
            self._keys[key.name.lower()] = key
            return Response(200, self._bundle(call.base, key.versions[-1]))

    # -- test-facing views ------------------------------------------------

    def live_names(self) -> list[str]:
        with self._lock:
            return sorted(key.name for key in self._keys.values())

    def deleted_names(self) -> list[str]:
        with self._lock:
            return sorted(key.name for key in self._deleted.values())

    def hold_deleted(self, name: str) -> None:
        """A soft-deleted key under `name`, as a removal in the portal leaves it."""
        now = _now()
        version = KeyVersion(
            name=name, version=uuid.uuid4().hex, kty="RSA", key_ops=["sign", "verify"],
            private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            origin="generated", enabled=True, created=now, updated=now,
        )
        with self._lock:
            if name.lower() in self._keys:
                raise ValueError(f"{name} is a live key")
            self._deleted[name.lower()] = _Key(name, [version], deleted_date=now)

    def set_enabled_outside(self, name: str, version: str, enabled: bool) -> None:
        """Enable or disable a version, as someone in the Azure portal would."""
        with self._lock:
            found = self._version(name, version)
            found.enabled, found.updated = enabled, _now()

    def add_version_outside(self, name: str, private_key: PrivateKey) -> KeyVersion:
        """Import a version into a live key, untagged, as someone in the portal would.

        It is created a second after the newest version, as a later import is,
        so it is the current version and the newest by `created`.
        """
        with self._lock:
            key = self._live(name)
            created = max([_now()] + [v.created + 1 for v in key.versions])
            kty = "RSA" if isinstance(private_key, rsa.RSAPrivateKey) else "EC"
            version = KeyVersion(
                name=key.name, version=uuid.uuid4().hex, kty=kty,
                key_ops=list(_RSA_OPS if kty == "RSA" else _EC_OPS), private_key=private_key,
                origin="software", enabled=True, created=created, updated=created,
            )
            key.versions.append(version)
            return version.snapshot()

    def delete_outside(self, name: str) -> None:
        """Delete a key (soft delete), as someone in the portal would."""
        with self._lock:
            key = self._keys.pop(self._live(name).name.lower())
            key.deleted_date = _now()
            self._deleted[key.name.lower()] = key

    def live_keks(self) -> int:
        with self._lock:
            return sum(1 for key in self._keys.values() if key.versions[-1].is_kek)

    def snapshot(self, name: str) -> list[KeyVersion]:
        with self._lock:
            key = self._keys.get(name.lower()) or self._deleted.get(name.lower())
            if key is None:
                raise KeyError(name)
            return [v.snapshot() for v in key.versions]


class AzureKeyVaultFake:
    """Azure Key Vault + Entra ID + IMDS on loopback, with a test-facing API.

    Point the plugin at `vault_url` (Key Vault base URL), `authority_url`
    (Entra ID authority host) and `imds_url`, and make it trust `ca_pem_path`.
    Credentials default to random values; read them back from the attributes
    or `credentials`.
    """

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        msi_client_id: str | None = None,
        managed_identity: bool = True,
        api_versions: tuple[str, ...] = ("7.6",),
        token_lifetime: int = 3600,
        spec_path: Path = SPEC_PATH,
    ) -> None:
        self._issuer = TokenIssuer(
            tenant_id=tenant_id or str(uuid.uuid4()),
            client_id=client_id or str(uuid.uuid4()),
            client_secret=client_secret or uuid.uuid4().hex,
            msi_client_id=msi_client_id or str(uuid.uuid4()),
            managed_identity=managed_identity,
            lifetime=token_lifetime,
            on_misuse=lambda service, request, message: self._report(
                "protocol", request, None, message, service),
        )
        self._vault = _Vault(
            SwaggerSpec.load(spec_path), self._issuer, frozenset(api_versions),
            lambda: f'Bearer authorization="{self.authority_url}/{self.tenant_id}", '
                    f'resource="{KEYVAULT_RESOURCE}"',
            self._report,
        )
        self._faults = FaultPlan()
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._failures: list[ValidationFailure] = []
        self._listeners: dict[str, Listener] = {}
        self._workdir: TemporaryDirectory[str] | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> AzureKeyVaultFake:
        if self._workdir is not None:
            raise RuntimeError("fake already started")
        self._workdir = TemporaryDirectory(prefix="azure-keyvault-fake-")
        directory = Path(self._workdir.name)
        ca = FakeCA("keymgmt Azure Key Vault fake CA")
        (directory / "ca.pem").write_bytes(ca.cert_pem())
        tls = ca.server_context(directory, ["localhost"], ["127.0.0.1"])
        handlers = {"vault": self._vault.serve, "login": self._issuer.login, "imds": self._issuer.imds}
        self._listeners = {
            service: Listener(
                service, handler, self._faults, self._log, self._crash_reporter(service),
                None if service == "imds" else tls,
            )
            for service, handler in handlers.items()
        }
        for listener in self._listeners.values():
            listener.start()
        return self

    def stop(self) -> None:
        for listener in self._listeners.values():
            listener.stop()
        self._listeners = {}
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> AzureKeyVaultFake:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- where and who ----------------------------------------------------

    @property
    def vault_url(self) -> str:
        return self._listeners["vault"].url

    @property
    def authority_url(self) -> str:
        return self._listeners["login"].url

    @property
    def imds_url(self) -> str:
        return self._listeners["imds"].url

    @property
    def ca_pem_path(self) -> str:
        if self._workdir is None:
            raise RuntimeError("fake not started")
        return str(Path(self._workdir.name) / "ca.pem")

    @property
    def tenant_id(self) -> str:
        return self._issuer.tenant_id

    @property
    def client_id(self) -> str:
        return self._issuer.client_id

    @property
    def client_secret(self) -> str:
        return self._issuer.client_secret

    @property
    def msi_client_id(self) -> str:
        return self._issuer.msi_client_id

    @property
    def credentials(self) -> dict[str, str]:
        """The keymgmt `azurekeyvault` provider credentials for this fake."""
        return {"tenant_id": self.tenant_id, "client_id": self.client_id, "client_secret": self.client_secret}

    # -- inspection -------------------------------------------------------

    def keys(self) -> list[str]:
        """Names of live (not soft-deleted) keys."""
        return self._vault.live_names()

    def versions(self, name: str) -> list[KeyVersion]:
        """Versions of a live or soft-deleted key, oldest first (copies); KeyError if unknown."""
        return self._vault.snapshot(name)

    def current_version(self, name: str) -> KeyVersion:
        return self.versions(name)[-1]

    def deleted_keys(self) -> list[str]:
        return self._vault.deleted_names()

    def hold_deleted(self, name: str) -> None:
        """Make `name` a soft-deleted key (recoverable or purgeable, not reusable)."""
        self._vault.hold_deleted(name)

    def set_enabled_outside(self, name: str, version: str, enabled: bool) -> None:
        """Enable or disable a version behind the plugin's back (the portal's toggle)."""
        self._vault.set_enabled_outside(name, version, enabled)

    def add_version_outside(self, name: str, private_key: PrivateKey) -> KeyVersion:
        """Import an untagged version behind the plugin's back; it becomes current."""
        return self._vault.add_version_outside(name, private_key)

    def delete_outside(self, name: str) -> None:
        """Soft-delete a key behind the plugin's back."""
        self._vault.delete_outside(name)

    def kek_count_alive(self) -> int:
        """Live keys whose current version is a key exchange key."""
        return self._vault.live_keks()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    @property
    def validation_failures(self) -> list[ValidationFailure]:
        with self._log_lock:
            return list(self._failures)

    # -- steering ---------------------------------------------------------

    def inject(self, method: str, path_regex: str, kind: str, times: int = 1) -> None:
        """Queue a fault for requests whose method ("*" = any) and path (re.search) match.

        kind: "429" (with Retry-After: 1), "500", "503", "delay:<seconds>"
        (then served normally) or "drop" (connection closed, no response).
        """
        self._faults.add(method, path_regex, kind, times)

    def set_latency(self, seconds: float, service: str = "vault") -> None:
        """Make every request to `service` wait `seconds` before it is served."""
        self._listeners[service].latency = seconds

    def max_in_flight(self, service: str = "vault", method: str | None = None) -> int:
        """The most requests to `service` (of `method`, if given) served at once since the last reset."""
        listener = self._listeners[service]
        return listener.max_in_flight if method is None else listener.max_in_flight_by_method.get(method, 0)

    def reset_max_in_flight(self, service: str = "vault") -> None:
        self._listeners[service].reset_max_in_flight()

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as if its lifetime had passed."""
        self._issuer.expire_all()

    # -- internals --------------------------------------------------------

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)

    def _crash_reporter(self, service: str) -> Callable[[Request, str], None]:
        return lambda request, trace: self._report("crash", request, None, trace, service)

    def _report(self, source: str, request: Request, operation: str | None, message: str, service: str) -> None:
        with self._log_lock:
            self._failures.append(
                ValidationFailure(service, request.method, request.path, operation, source, message)
            )


@contextlib.contextmanager
def FakeKeyVault(*, allow_violations: bool = False, **options: Any) -> Iterator[AzureKeyVaultFake]:
    """A started fake for a `with` block or a pytest fixture.

    Unless `allow_violations`, a block that finishes normally fails if any
    request was recorded as a validation failure, so tests cannot forget to check.
    """
    fake = AzureKeyVaultFake(**options).start()
    try:
        yield fake
    finally:
        fake.stop()
    if not allow_violations and fake.validation_failures:
        details = "\n".join(f"  {f.source}: {f.method} {f.path}: {f.message}" for f in fake.validation_failures)
        raise AssertionError(f"the Azure fake recorded validation failures:\n{details}")
