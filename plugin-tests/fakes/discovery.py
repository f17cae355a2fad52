"""A strict request validator driven by a Google API discovery document.

The GCP fake is only worth something if it rejects what Cloud KMS would
reject, so the rules come from Google's own artefacts, not from memory:
routes, parameters and body schemas from the discovery document
(`specs/cloudkms.v1.json`), and enum numbers from the official Python client.

Two facts shape this module:

* Both official clients (Rust `google-cloud-kms-v1`, Python `google-cloud-kms`
  REST transport) send enums as integers with `$alt=json;enum-encoding=int`,
  and expect integers back. The discovery document only lists enum *names*, and
  their order there is not their number (`ASYMMETRIC_SIGN` is 5, `HSM` 2,
  `RSA_OAEP_4096_SHA256_AES_256` 4). The numbers below are copied from the
  generated proto descriptors of `google-cloud-kms` 3.18.0
  (`google.cloud.kms_v1`); `test_gcp_fake.py` checks them against the
  installed package, so a version bump that renumbers anything fails loudly.
* Google parses request JSON with the proto3 JSON rules: unknown fields and
  unknown enum values are errors, `null` means unset, int64 may be a string,
  output-only fields are accepted and ignored (AIP-203). The Rust client also
  repeats the path fields (`parent`, `name`) inside `body: "*"` requests; the
  discovery schemas do not list them, real Cloud KMS accepts them, so they are
  allowed when they equal the path.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

SPEC_PATH = Path(__file__).with_name("specs") / "cloudkms.v1.json"
PROTO_PACKAGE = "google.cloud.kms.v1"
ENUM_ENCODING_INT = "json;enum-encoding=int"

# -- proto enum numbers --------------------------------------------------------
# Generated from google-cloud-kms 3.18.0's descriptors (message field -> enum
# type -> values); keys are relative to PROTO_PACKAGE. Never derive a number
# from a position in the discovery document's enum lists.
PROTO_ENUMS: dict[str, dict[str, int]] = {
    "AccessReason": {
        "REASON_UNSPECIFIED": 0, "CUSTOMER_INITIATED_SUPPORT": 1, "GOOGLE_INITIATED_SERVICE": 2,
        "THIRD_PARTY_DATA_REQUEST": 3, "GOOGLE_INITIATED_REVIEW": 4, "CUSTOMER_INITIATED_ACCESS": 5,
        "GOOGLE_INITIATED_SYSTEM_OPERATION": 6, "REASON_NOT_EXPECTED": 7,
        "MODIFIED_CUSTOMER_INITIATED_ACCESS": 8, "MODIFIED_GOOGLE_INITIATED_SYSTEM_OPERATION": 9,
        "GOOGLE_RESPONSE_TO_PRODUCTION_ALERT": 10, "CUSTOMER_AUTHORIZED_WORKFLOW_SERVICING": 11,
    },
    "AutokeyConfig.KeyProjectResolutionMode": {
        "KEY_PROJECT_RESOLUTION_MODE_UNSPECIFIED": 0, "DEDICATED_KEY_PROJECT": 1, "RESOURCE_PROJECT": 2,
        "DISABLED": 3,
    },
    "AutokeyConfig.State": {
        "STATE_UNSPECIFIED": 0, "ACTIVE": 1, "KEY_PROJECT_DELETED": 2, "UNINITIALIZED": 3,
        "KEY_PROJECT_PERMISSION_DENIED": 4,
    },
    "CryptoKey.CryptoKeyPurpose": {
        "CRYPTO_KEY_PURPOSE_UNSPECIFIED": 0, "ENCRYPT_DECRYPT": 1, "ASYMMETRIC_SIGN": 5,
        "ASYMMETRIC_DECRYPT": 6, "RAW_ENCRYPT_DECRYPT": 7, "MAC": 9, "KEY_ENCAPSULATION": 10,
        "AES_WRAPPING": 11,
    },
    "CryptoKeyVersion.CryptoKeyVersionAlgorithm": {
        "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED": 0, "GOOGLE_SYMMETRIC_ENCRYPTION": 1,
        "RSA_SIGN_PSS_2048_SHA256": 2, "RSA_SIGN_PSS_3072_SHA256": 3, "RSA_SIGN_PSS_4096_SHA256": 4,
        "RSA_SIGN_PKCS1_2048_SHA256": 5, "RSA_SIGN_PKCS1_3072_SHA256": 6, "RSA_SIGN_PKCS1_4096_SHA256": 7,
        "RSA_DECRYPT_OAEP_2048_SHA256": 8, "RSA_DECRYPT_OAEP_3072_SHA256": 9,
        "RSA_DECRYPT_OAEP_4096_SHA256": 10, "EC_SIGN_P256_SHA256": 12, "EC_SIGN_P384_SHA384": 13,
        "RSA_SIGN_PSS_4096_SHA512": 15, "RSA_SIGN_PKCS1_4096_SHA512": 16,
        "RSA_DECRYPT_OAEP_4096_SHA512": 17, "EXTERNAL_SYMMETRIC_ENCRYPTION": 18, "AES_256_GCM": 19,
        "RSA_SIGN_RAW_PKCS1_2048": 28, "RSA_SIGN_RAW_PKCS1_3072": 29, "RSA_SIGN_RAW_PKCS1_4096": 30,
        "EC_SIGN_SECP256K1_SHA256": 31, "HMAC_SHA256": 32, "HMAC_SHA1": 33, "HMAC_SHA384": 34,
        "HMAC_SHA512": 35, "HMAC_SHA224": 36, "RSA_DECRYPT_OAEP_2048_SHA1": 37,
        "RSA_DECRYPT_OAEP_3072_SHA1": 38, "RSA_DECRYPT_OAEP_4096_SHA1": 39, "EC_SIGN_ED25519": 40,
        "AES_128_GCM": 41, "AES_128_CBC": 42, "AES_256_CBC": 43, "AES_128_CTR": 44, "AES_256_CTR": 45,
        "ML_KEM_768": 47, "ML_KEM_1024": 48, "PQ_SIGN_ML_DSA_65": 56, "PQ_SIGN_SLH_DSA_SHA2_128S": 57,
        "PQ_SIGN_HASH_SLH_DSA_SHA2_128S_SHA256": 60, "KEM_XWING": 63, "PQ_SIGN_ML_DSA_65_EXTERNAL_MU": 67,
        "PQ_SIGN_ML_DSA_44": 68, "PQ_SIGN_ML_DSA_87": 69, "PQ_SIGN_ML_DSA_44_EXTERNAL_MU": 70,
        "PQ_SIGN_ML_DSA_87_EXTERNAL_MU": 71, "AES_256_KWP": 73,
    },
    "CryptoKeyVersion.CryptoKeyVersionState": {
        "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED": 0, "ENABLED": 1, "DISABLED": 2, "DESTROYED": 3,
        "DESTROY_SCHEDULED": 4, "PENDING_GENERATION": 5, "PENDING_IMPORT": 6, "IMPORT_FAILED": 7,
        "GENERATION_FAILED": 8, "PENDING_EXTERNAL_DESTRUCTION": 9, "EXTERNAL_DESTRUCTION_FAILED": 10,
    },
    "CryptoKeyVersion.CryptoKeyVersionView": {
        "CRYPTO_KEY_VERSION_VIEW_UNSPECIFIED": 0, "FULL": 1,
    },
    "EkmConnection.KeyManagementMode": {
        "KEY_MANAGEMENT_MODE_UNSPECIFIED": 0, "MANUAL": 1, "CLOUD_KMS": 2,
    },
    "ImportJob.ImportJobState": {
        "IMPORT_JOB_STATE_UNSPECIFIED": 0, "PENDING_GENERATION": 1, "ACTIVE": 2, "EXPIRED": 3,
    },
    "ImportJob.ImportMethod": {
        "IMPORT_METHOD_UNSPECIFIED": 0, "RSA_OAEP_3072_SHA1_AES_256": 1, "RSA_OAEP_4096_SHA1_AES_256": 2,
        "RSA_OAEP_3072_SHA256_AES_256": 3, "RSA_OAEP_4096_SHA256_AES_256": 4, "RSA_OAEP_3072_SHA256": 5,
        "RSA_OAEP_4096_SHA256": 6, "HPKE_KEM_ML_KEM_768_HKDF_SHA256_AES_256_GCM": 8,
        "HPKE_KEM_ML_KEM_1024_HKDF_SHA256_AES_256_GCM": 9, "HPKE_KEM_XWING_HKDF_SHA256_AES_256_GCM": 10,
    },
    "KeyOperationAttestation.AttestationFormat": {
        "ATTESTATION_FORMAT_UNSPECIFIED": 0, "CAVIUM_V1_COMPRESSED": 3, "CAVIUM_V2_COMPRESSED": 4,
    },
    "ProtectionLevel": {
        "PROTECTION_LEVEL_UNSPECIFIED": 0, "SOFTWARE": 1, "HSM": 2, "EXTERNAL": 3, "EXTERNAL_VPC": 4,
        "HSM_SINGLE_TENANT": 5,
    },
    "PublicKey.PublicKeyFormat": {
        "PUBLIC_KEY_FORMAT_UNSPECIFIED": 0, "PEM": 1, "DER": 2, "NIST_PQC": 3, "XWING_RAW_BYTES": 4,
    },
    "SingleTenantHsmInstance.State": {
        "STATE_UNSPECIFIED": 0, "CREATING": 1, "PENDING_TWO_FACTOR_AUTH_REGISTRATION": 2, "ACTIVE": 3,
        "DISABLING": 4, "DISABLED": 5, "DELETING": 6, "DELETED": 7, "FAILED": 8,
    },
    "SingleTenantHsmInstanceProposal.State": {
        "STATE_UNSPECIFIED": 0, "CREATING": 1, "PENDING": 2, "APPROVED": 3, "RUNNING": 4, "SUCCEEDED": 5,
        "FAILED": 6, "DELETED": 7,
    },
}
ENUM_FIELDS: dict[str, str] = {
    "AsymmetricDecryptResponse.protectionLevel": "ProtectionLevel",
    "AsymmetricSignResponse.protectionLevel": "ProtectionLevel",
    "AutokeyConfig.keyProjectResolutionMode": "AutokeyConfig.KeyProjectResolutionMode",
    "AutokeyConfig.state": "AutokeyConfig.State",
    "CryptoKey.purpose": "CryptoKey.CryptoKeyPurpose",
    "CryptoKeyVersion.algorithm": "CryptoKeyVersion.CryptoKeyVersionAlgorithm",
    "CryptoKeyVersion.protectionLevel": "ProtectionLevel",
    "CryptoKeyVersion.state": "CryptoKeyVersion.CryptoKeyVersionState",
    "CryptoKeyVersionTemplate.algorithm": "CryptoKeyVersion.CryptoKeyVersionAlgorithm",
    "CryptoKeyVersionTemplate.protectionLevel": "ProtectionLevel",
    "DecapsulateResponse.protectionLevel": "ProtectionLevel",
    "DecryptResponse.protectionLevel": "ProtectionLevel",
    "EkmConnection.keyManagementMode": "EkmConnection.KeyManagementMode",
    "EncryptResponse.protectionLevel": "ProtectionLevel",
    "GenerateRandomBytesRequest.protectionLevel": "ProtectionLevel",
    "GetImportJobRequest.publicKeyFormat": "PublicKey.PublicKeyFormat",
    "GetPublicKeyRequest.publicKeyFormat": "PublicKey.PublicKeyFormat",
    "ImportCryptoKeyVersionRequest.algorithm": "CryptoKeyVersion.CryptoKeyVersionAlgorithm",
    "ImportJob.importMethod": "ImportJob.ImportMethod",
    "ImportJob.protectionLevel": "ProtectionLevel",
    "ImportJob.publicKeyFormat": "PublicKey.PublicKeyFormat",
    "ImportJob.state": "ImportJob.ImportJobState",
    "ImportTrustedKeyWrappedCryptoKeyVersionRequest.algorithm": "CryptoKeyVersion.CryptoKeyVersionAlgorithm",
    "KeyAccessJustificationsPolicy.allowedAccessReasons": "AccessReason",
    "KeyOperationAttestation.format": "KeyOperationAttestation.AttestationFormat",
    "ListCryptoKeyVersionsRequest.view": "CryptoKeyVersion.CryptoKeyVersionView",
    "ListCryptoKeysRequest.versionView": "CryptoKeyVersion.CryptoKeyVersionView",
    "MacSignResponse.protectionLevel": "ProtectionLevel",
    "MacVerifyResponse.protectionLevel": "ProtectionLevel",
    "PublicKey.algorithm": "CryptoKeyVersion.CryptoKeyVersionAlgorithm",
    "PublicKey.protectionLevel": "ProtectionLevel",
    "PublicKey.publicKeyFormat": "PublicKey.PublicKeyFormat",
    "RawDecryptResponse.protectionLevel": "ProtectionLevel",
    "RawEncryptResponse.protectionLevel": "ProtectionLevel",
    "SingleTenantHsmInstance.state": "SingleTenantHsmInstance.State",
    "SingleTenantHsmInstanceProposal.state": "SingleTenantHsmInstanceProposal.State",
}

# Request messages whose fields the discovery document exposes as enum query
# parameters, so that `ENUM_FIELDS["<message>.<param>"]` applies to them.
QUERY_MESSAGES: dict[str, str] = {
    "cloudkms.projects.locations.keyRings.importJobs.get": "GetImportJobRequest",
    "cloudkms.projects.locations.keyRings.cryptoKeys.cryptoKeyVersions.getPublicKey": "GetPublicKeyRequest",
    "cloudkms.projects.locations.keyRings.cryptoKeys.list": "ListCryptoKeysRequest",
    "cloudkms.projects.locations.keyRings.cryptoKeys.cryptoKeyVersions.list": "ListCryptoKeyVersionsRequest",
}

_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_DURATION = re.compile(r"^-?\d{1,12}(\.\d{1,9})?s$")
_FIELD_MASK = re.compile(r"^([a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*)(,[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*)*$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_VARIABLE = re.compile(r"\{(\+?)([A-Za-z0-9_]+)\}")
# Query parameters Google accepts on every method that the fake does not model.
_UNSUPPORTED_GLOBALS = frozenset({"fields", "callback", "uploadType", "upload_protocol", "key",
                                  "access_token", "oauth_token"})
_IGNORED_GLOBALS = frozenset({"prettyPrint", "quotaUser", "$.xgafv"})


@dataclass(frozen=True)
class Problem:
    """One reason a request is invalid, in google.rpc.BadRequest.FieldViolation terms."""

    field: str
    description: str
    unsupported: bool = False  # valid for Google, but not modelled by the fake


class DiscoveryViolation(Exception):
    """The request does not conform to the discovery document.

    status is 404 when no method matches (Google answers unknown URLs with
    404), otherwise 400 INVALID_ARGUMENT.
    """

    def __init__(self, problems: list[Problem], method: Method | None = None, status: int = 400) -> None:
        super().__init__("; ".join(p.description for p in problems))
        self.problems = problems
        self.method = method
        self.status = status

    @property
    def unsupported(self) -> bool:
        """Every problem is something Google accepts but the fake does not model."""
        return all(p.unsupported for p in self.problems)


@dataclass(frozen=True)
class Method:
    """One discovery method with its routing compiled."""

    id: str
    http_method: str
    flat_path: str
    path: str
    parameters: dict[str, dict[str, Any]]
    request_ref: str | None
    response_ref: str | None
    scopes: tuple[str, ...]
    flat_regex: re.Pattern[str] = field(repr=False)
    path_regex: re.Pattern[str] = field(repr=False)

    @property
    def name(self) -> str:
        """The id without the service prefix, e.g. `projects.locations.keyRings.importJobs.get`."""
        return self.id.removeprefix("cloudkms.")

    @property
    def literal_length(self) -> int:
        return len(_VARIABLE.sub("", self.flat_path))

    @property
    def body_is_request_message(self) -> bool:
        """`body: "*"`: the JSON body is the whole RPC request message (it may repeat path fields)."""
        return self.request_ref is not None and self.request_ref.endswith("Request")

    def path_parameters(self) -> list[str]:
        return [n for n, p in self.parameters.items() if p.get("location") == "path"]


@dataclass(frozen=True)
class ValidatedRequest:
    """A request that passed validation, with enums normalised to their names.

    Output-only fields and repeated path fields are removed from `body`, and
    `null` members dropped, so service code sees exactly what Google would act on.
    """

    method: Method
    params: dict[str, str]
    query: dict[str, Any]
    body: dict[str, Any] | None
    int_enums: bool


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _compile(template: str, multi_segment: bool) -> re.Pattern[str]:
    """A discovery path template as a regex; `{+x}` spans segments, `{x}` does not."""
    pattern, position = "", 0
    for match in _VARIABLE.finditer(template):
        pattern += re.escape(template[position:match.start()])
        reserved, name = match.groups()
        if reserved and multi_segment:
            pattern += f"(?P<{name}>.+?)"
        else:
            pattern += f"(?P<{name}>[^/:]+)"
        position = match.end()
    return re.compile("^" + pattern + re.escape(template[position:]) + "$")


class DiscoveryDocument:
    """Routing, request validation and response encoding for one discovery document."""

    def __init__(
        self,
        document: dict[str, Any],
        enum_fields: dict[str, str] | None = None,
        proto_enums: dict[str, dict[str, int]] | None = None,
        query_messages: dict[str, str] | None = None,
    ) -> None:
        if document.get("discoveryVersion") != "v1" or document.get("protocol") != "rest":
            raise ValueError("only v1 REST discovery documents are supported")
        self._doc = document
        self.revision: str = document["revision"]
        self.schemas: dict[str, dict[str, Any]] = document["schemas"]
        self.global_parameters: dict[str, dict[str, Any]] = document.get("parameters", {})
        self.enum_fields = ENUM_FIELDS if enum_fields is None else enum_fields
        self.proto_enums = PROTO_ENUMS if proto_enums is None else proto_enums
        self.query_messages = QUERY_MESSAGES if query_messages is None else query_messages
        self.methods: list[Method] = []
        self._collect(document.get("resources", {}))
        self.by_id = {m.id: m for m in self.methods}

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> DiscoveryDocument:
        return cls(json.loads(path.read_text()))

    def _collect(self, resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                flat = spec.get("flatPath", spec["path"])
                self.methods.append(Method(
                    id=spec["id"],
                    http_method=spec["httpMethod"],
                    flat_path=flat,
                    path=spec["path"],
                    parameters=spec.get("parameters", {}),
                    request_ref=spec.get("request", {}).get("$ref"),
                    response_ref=spec.get("response", {}).get("$ref"),
                    scopes=tuple(spec.get("scopes", ())),
                    flat_regex=_compile(flat, multi_segment=False),
                    path_regex=_compile(spec["path"], multi_segment=True),
                ))
            self._collect(resource.get("resources", {}))

    # -- enums -------------------------------------------------------------

    def enum_type(self, owner: str, prop: str) -> str | None:
        """The proto enum (relative to PROTO_PACKAGE) of `owner.prop`, if the table has it."""
        return self.enum_fields.get(f"{owner}.{prop}")

    def enum_number(self, owner: str, prop: str, name: str) -> int | None:
        enum = self.enum_type(owner, prop)
        return None if enum is None else self.proto_enums[enum].get(name)

    def _enum_value(self, owner: str, prop: str, names: list[str], value: Any, where: str,
                    *, from_query: bool) -> tuple[list[Problem], str | None]:
        """Accept a name the document lists, or that name's proto number."""
        enum = self.enum_type(owner, prop)
        type_url = f"type.googleapis.com/{PROTO_PACKAGE}.{enum}" if enum else f"enum {owner}.{prop}"
        invalid = [Problem(where, f"Invalid value at '{where}' ({type_url}), {json.dumps(value)}")]
        number: int | None = None
        if isinstance(value, bool):
            return invalid, None
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            if value in names:
                return [], value
            if from_query and re.fullmatch(r"-?\d+", value):
                number = int(value)
        if number is None:
            return invalid, None
        if enum is None:
            return [Problem(where, f"{where}: the fake has no proto numbers for {owner}.{prop}", True)], None
        by_number = {n: v for v, n in self.proto_enums[enum].items()}
        name = by_number.get(number)
        if name is None or name not in names:
            return invalid, None
        return [], name

    # -- routing -----------------------------------------------------------

    def match(self, http_method: str, raw_path: str) -> tuple[Method, dict[str, str]]:
        path = "/".join(unquote(segment) for segment in raw_path.removeprefix("/").split("/"))
        candidates = [m for m in self.methods if m.flat_regex.match(path)]
        not_found = DiscoveryViolation(
            [Problem("", f"The requested URL {raw_path} was not found on this server.")], status=404)
        if not candidates:
            raise not_found
        allowed = [m for m in candidates if m.http_method == http_method]
        if not allowed:
            others = ", ".join(sorted(f"{m.http_method} ({m.name})" for m in candidates))
            not_found.problems.append(Problem("", f"{http_method} is not allowed here; the path takes {others}"))
            raise not_found
        method = max(allowed, key=lambda m: m.literal_length)
        match = method.path_regex.match(path)
        if match is None:
            raise DiscoveryViolation([Problem("", f"{path} does not fit {method.path}")], method)
        return method, {name: value for name, value in match.groupdict().items()}

    # -- requests ----------------------------------------------------------

    def validate_request(
        self, http_method: str, raw_path: str, query: dict[str, list[str]],
        content_type: str | None, body: bytes,
    ) -> ValidatedRequest:
        method, params = self.match(http_method, raw_path)
        problems = self._check_path(method, params)
        query_problems, parsed_query, int_enums = self._check_query(method, query)
        problems += query_problems
        parsed_body: dict[str, Any] | None = None
        if method.request_ref is not None:
            body_problems, parsed_body = self._check_body(method, params, content_type, body)
            problems += body_problems
        elif body.strip():
            problems.append(Problem("", f"{method.name} takes no request body"))
        if problems:
            raise DiscoveryViolation(problems, method)
        return ValidatedRequest(method, params, parsed_query, parsed_body, int_enums)

    @staticmethod
    def _check_path(method: Method, params: dict[str, str]) -> list[Problem]:
        problems = []
        for name in method.path_parameters():
            spec = method.parameters[name]
            value = params.get(name, "")
            if not value and spec.get("required"):
                problems.append(Problem(name, f"path parameter {name} is required"))
            elif "pattern" in spec and not re.search(spec["pattern"], value):
                problems.append(Problem(name, f"path parameter {name} {value!r} does not match {spec['pattern']}"))
        return problems

    def _check_query(self, method: Method, query: dict[str, list[str]]) -> tuple[list[Problem], dict[str, Any], bool]:
        problems: list[Problem] = []
        parsed: dict[str, Any] = {}
        int_enums = False
        declared = {n: p for n, p in method.parameters.items() if p.get("location") == "query"}
        for name, values in query.items():
            if name not in declared and name != "$alt" and name not in self.global_parameters:
                problems.append(Problem(name, (
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query parameter. '
                    f"Field '{name}' could not be found in request message.")))
                continue
            spec = declared.get(name) or self.global_parameters.get(name, {})
            if len(values) > 1 and not spec.get("repeated"):
                problems.append(Problem(name, f"query parameter {name} is repeated"))
                continue
            raw = values[0]
            if name == "$alt":
                if raw not in ("json", ENUM_ENCODING_INT):
                    problems.append(Problem(name, f"$alt {raw!r} is not json or {ENUM_ENCODING_INT}", raw == "proto"))
                int_enums = raw == ENUM_ENCODING_INT
                continue
            if name in _UNSUPPORTED_GLOBALS:
                problems.append(Problem(name, f"query parameter {name} is not modelled by the fake", True))
                continue
            where = f"query parameter {name}"
            if "enum" in spec:
                owner = self.query_messages.get(method.id, "") if name in declared else "(global)"
                if name in declared:
                    enum_problems, value = self._enum_value(owner, name, spec["enum"], raw, name, from_query=True)
                elif raw in spec["enum"]:
                    enum_problems, value = [], raw
                else:
                    enum_problems, value = [Problem(name, f"{where} {raw!r} is not one of {spec['enum']}")], None
                problems += enum_problems
                if name == "alt" and value not in (None, "json"):
                    problems.append(Problem(name, f"alt={value} is not modelled by the fake", True))
                parsed[name] = value
                continue
            scalar_problems, value = _parse_query_scalar(spec, raw, where)
            problems += [Problem(name, p) for p in scalar_problems]
            if name not in _IGNORED_GLOBALS:
                parsed[name] = value
        for name, spec in declared.items():
            if spec.get("description", "").startswith("Required.") and parsed.get(name) in (None, ""):
                problems.append(Problem(name, f"{name} is required"))
        return problems, parsed, int_enums

    def _check_body(
        self, method: Method, params: dict[str, str], content_type: str | None, body: bytes,
    ) -> tuple[list[Problem], dict[str, Any] | None]:
        assert method.request_ref is not None
        if not body.strip():
            value: Any = {}
        else:
            media_type = (content_type or "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return [Problem("", f"Content-Type {content_type!r} is not application/json")], None
            try:
                value = json.loads(body, object_pairs_hook=_no_duplicate_members)
            except (UnicodeDecodeError, ValueError) as error:
                return [Problem("", f"Invalid JSON payload received. {error}")], None
        if not isinstance(value, dict):
            return [Problem("", "Invalid JSON payload received. The body must be a JSON object.")], None
        problems: list[Problem] = []
        root = "" if method.body_is_request_message else camel_to_snake(method.request_ref)
        if method.body_is_request_message:
            for name in method.path_parameters():
                if name in value:
                    echoed = value.pop(name)
                    if echoed != params.get(name):
                        problems.append(Problem(
                            name, f"body field {name} {echoed!r} differs from the URL's {params.get(name)!r}"))
        elif "name" in value and method.http_method == "PATCH" and value["name"] not in (None, "", params.get("name")):
            problems.append(Problem(
                "name", f"body name {value['name']!r} differs from the URL's {params.get('name')!r}"))
        object_problems, normalised = self._check_object(method.request_ref, value, root, request=True)
        return problems + object_problems, normalised

    # -- schema walking ----------------------------------------------------

    def _check_object(self, schema_name: str, value: Any, where: str, *, request: bool) -> tuple[list[Problem], Any]:
        schema = self.schemas[schema_name]
        if not isinstance(value, dict):
            type_url = f"type.googleapis.com/{PROTO_PACKAGE}.{schema_name}"
            message = f"Invalid value at '{where or schema_name}' ({type_url}), {json.dumps(value)}: expected an object"
            return [Problem(where, message)], None
        properties: dict[str, Any] = schema.get("properties", {})
        problems: list[Problem] = []
        normalised: dict[str, Any] = {}
        for name, item in value.items():
            child = f"{where}.{camel_to_snake(name)}" if where else camel_to_snake(name)
            prop = properties.get(name)
            if prop is None:
                at = f" at '{where}'" if where else ""
                problems.append(Problem(
                    child, f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'))
                continue
            if item is None:
                continue  # proto3 JSON: null is the default value, i.e. unset
            item_problems, item_value = self._check_value(schema_name, name, prop, item, child, request=request)
            problems += item_problems
            if request and prop.get("readOnly"):
                continue  # AIP-203: output-only input is ignored, after it parsed
            normalised[name] = item_value
        return problems, normalised

    def _check_value(self, owner: str, prop_name: str, prop: dict[str, Any], value: Any, where: str,
                     *, request: bool) -> tuple[list[Problem], Any]:
        if "$ref" in prop:
            return self._check_object(prop["$ref"], value, where, request=request)
        kind = prop.get("type")
        if kind == "array":
            if not isinstance(value, list):
                return [Problem(where, f"Invalid value at '{where}': expected a list")], None
            problems: list[Problem] = []
            items: list[Any] = []
            for index, element in enumerate(value):
                element_problems, element_value = self._check_value(
                    owner, prop_name, prop["items"], element, f"{where}[{index}]", request=request)
                problems += element_problems
                items.append(element_value)
            return problems, items
        if kind == "object":
            extra = prop.get("additionalProperties")
            if not isinstance(value, dict) or extra is None:
                return [Problem(where, f"Invalid value at '{where}': expected a map")], None
            problems = []
            entries: dict[str, Any] = {}
            for key, element in value.items():
                element_problems, entries[key] = self._check_value(
                    owner, prop_name, extra, element, f"{where}[{key}]", request=request)
                problems += element_problems
            return problems, entries
        if "enum" in prop:
            return self._enum_value(owner, prop_name, prop["enum"], value, where, from_query=False)
        return [Problem(where, p) for p in _check_scalar(prop, value, where)], value

    # -- responses ---------------------------------------------------------

    def validate_response(self, method: Method, body: Any) -> list[str]:
        """Check the fake's own output (enum names, before any int encoding)."""
        if method.response_ref is None or self.schemas[method.response_ref].get("properties") is None:
            return [] if body in (None, {}) else [f"{method.name} answers an empty message"]
        problems, _ = self._check_object(method.response_ref, body, "", request=False)
        return [p.description for p in problems]

    def encode_response(self, method: Method, body: Any, int_enums: bool) -> Any:
        """Render enums as proto numbers when the client asked for enum-encoding=int."""
        if not int_enums or method.response_ref is None or body is None:
            return body
        return self._encode(method.response_ref, body)

    def _encode(self, schema_name: str, value: Any) -> Any:
        properties = self.schemas[schema_name].get("properties", {})
        out: dict[str, Any] = {}
        for name, item in value.items():
            prop = properties.get(name, {})
            out[name] = self._encode_value(schema_name, name, prop, item)
        return out

    def _encode_value(self, owner: str, name: str, prop: dict[str, Any], item: Any) -> Any:
        if "$ref" in prop and isinstance(item, dict):
            return self._encode(prop["$ref"], item)
        if prop.get("type") == "array" and isinstance(item, list):
            return [self._encode_value(owner, name, prop["items"], element) for element in item]
        if "enum" in prop and isinstance(item, str):
            number = self.enum_number(owner, name, item)
            return item if number is None else number
        return item


def _check_scalar(prop: dict[str, Any], value: Any, where: str) -> list[str]:
    """proto3 JSON scalar rules for one discovery type/format pair."""
    kind, fmt = prop.get("type"), prop.get("format")
    invalid = f"Invalid value at '{where}' ({_type_name(kind, fmt)}), {json.dumps(value)}"
    if kind == "any":
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [invalid]
    if kind == "integer" or (kind == "string" and fmt in ("int64", "uint64")):
        if isinstance(value, bool):
            return [invalid]
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            return [invalid]
        low, high = {"int32": _INT32, "uint32": _UINT32, "uint64": _UINT64}.get(fmt or "", _INT64)
        return [] if low <= value <= high else [f"{invalid}: out of range"]
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return [invalid]
        if isinstance(value, str) and value not in ("NaN", "Infinity", "-Infinity"):
            try:
                float(value)
            except ValueError:
                return [invalid]
        return []
    if kind != "string":
        return [f"{where}: discovery type {kind!r} is not supported by the validator"]
    if not isinstance(value, str):
        return [invalid]
    if fmt == "byte":
        return [] if _is_base64(value) else [invalid]
    if fmt == "google-datetime":
        return [] if _DATETIME.match(value) else [invalid]
    if fmt == "google-duration":
        return [] if _DURATION.match(value) else [invalid]
    if fmt == "google-fieldmask":
        return [] if value == "" or _FIELD_MASK.match(value) else [invalid]
    return []


def _type_name(kind: str | None, fmt: str | None) -> str:
    if kind == "boolean":
        return "TYPE_BOOL"
    if fmt in ("int32", "uint32", "int64", "uint64"):
        return f"TYPE_{fmt.upper()}"
    if fmt == "byte":
        return "TYPE_BYTES"
    if fmt in ("google-datetime", "google-duration", "google-fieldmask"):
        return {"google-datetime": "type.googleapis.com/google.protobuf.Timestamp",
                "google-duration": "type.googleapis.com/google.protobuf.Duration",
                "google-fieldmask": "type.googleapis.com/google.protobuf.FieldMask"}[fmt]
    return "TYPE_DOUBLE" if kind == "number" else "TYPE_STRING"


def _is_base64(value: str) -> bool:
    """proto3 JSON bytes: standard or URL-safe alphabet, padding optional."""
    if not _BASE64.match(value):
        return False
    if ("-" in value or "_" in value) and ("+" in value or "/" in value):
        return False
    try:
        decode_bytes(value)
    except ValueError:
        return False
    return True


def decode_bytes(value: str) -> bytes:
    """Decode a proto3 JSON `bytes` value as Google does (either alphabet, padded or not)."""
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("truncated base64")
    try:
        return base64.b64decode(stripped.replace("-", "+").replace("_", "/") + "=" * (-len(stripped) % 4),
                                validate=True)
    except binascii.Error as error:
        raise ValueError(str(error)) from None


def _parse_query_scalar(spec: dict[str, Any], raw: str, where: str) -> tuple[list[str], Any]:
    """Query strings bind to proto fields: integers and booleans must parse."""
    kind = spec.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", raw):
            return [f"Invalid value at '{where}' ({_type_name(kind, spec.get('format'))}), \"{raw}\""], None
        value: Any = int(raw)
        return _check_scalar(spec, value, where), value
    if kind == "boolean":
        if raw not in ("true", "false"):
            return [f"Invalid value at '{where}' (TYPE_BOOL), \"{raw}\""], None
        return [], raw == "true"
    return _check_scalar(spec, raw, where), raw


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A proto JSON parser rejects a field given twice; Python would keep the last."""
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate members {duplicates}")
    return dict(pairs)


def load(path: Path = SPEC_PATH) -> DiscoveryDocument:
    """The vendored Cloud KMS document, parsed once per call."""
    return DiscoveryDocument.load(path)


__all__ = [
    "DiscoveryDocument", "DiscoveryViolation", "ENUM_ENCODING_INT", "ENUM_FIELDS", "Method",
    "PROTO_ENUMS", "PROTO_PACKAGE", "Problem", "QUERY_MESSAGES", "SPEC_PATH", "ValidatedRequest",
    "camel_to_snake", "decode_bytes", "load",
]
