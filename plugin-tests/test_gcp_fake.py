"""Proves the Google Cloud KMS fake is faithful and strict.

The client side is independent of the fake's code: plain `requests` and
`cryptography` build JWTs, wrap keys (key-transfer.md §1, §5.3) and parse
answers; Google's own client (`google-cloud-kms`, REST transport) and
`google-auth` then drive the fake to show that it accepts exactly what the
official client sends. If these pass, a plugin test that finds the right key
material in the fake has shown that the plugin's import is correct.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from fakes import FakeCloudKms, GcpKmsFake, new_service_account
from fakes.discovery import ENUM_FIELDS, PROTO_ENUMS, PROTO_PACKAGE, QUERY_MESSAGES, load
from fakes.gcp_kms import PERMISSIONS, crc32c

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
INT_ENUMS = {"$alt": "json;enum-encoding=int"}
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
SERVICE_ACCOUNT = new_service_account()  # one key for the run: every fake accepts it
FAST: dict[str, Any] = {"import_job_delay": 0.05, "version_delay": 0.05, "service_accounts": [SERVICE_ACCOUNT]}


# -- independent client helpers ----------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(info: dict[str, str], claims: dict[str, Any], *, kid: str | None = None,
             key: rsa.RSAPrivateKey | None = None, alg: str = "RS256") -> str:
    """RS256 compact JWS from a key file, written here rather than borrowed from the fake."""
    private = key or serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    header = {"alg": alg, "typ": "JWT", "kid": info["private_key_id"] if kid is None else kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def rust_claims(info: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """What google-cloud-auth signs: scope cloud-platform, "aud": null, iat-10 s, exp+3610 s."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": info["client_email"], "sub": info["client_email"], "scope": CLOUD_PLATFORM,
                              "aud": None, "iat": now - 10, "exp": now + 3610}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def key_file(fake: GcpKmsFake) -> dict[str, str]:
    with open(fake.service_account_file) as handle:
        info: dict[str, str] = json.load(handle)
    return info


def session(fake: GcpKmsFake) -> requests.Session:
    """Trusts only the fake's CA (and ignores REQUESTS_CA_BUNDLE)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = fake.ca_pem_path
    return s


class Kms:
    """A minimal Cloud KMS REST client with a self-signed JWT, as the Rust crate behaves."""

    def __init__(self, fake: GcpKmsFake, *, int_enums: bool = False, bearer: str | None = None) -> None:
        self.fake = fake
        self.ring = fake.key_collection
        self.http = session(fake)
        self.int_enums = int_enums
        self.http.headers["Authorization"] = f"Bearer {bearer or sign_jwt(key_file(fake), rust_claims(key_file(fake)))}"

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> requests.Response:
        params = {**(INT_ENUMS if self.int_enums else {}), **query}
        return self.http.request(method, f"{self.fake.kms_url}/v1/{path}", params=params, json=body)

    def ok(self, method: str, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        response = self.call(method, path, body, **query)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def create_key(self, key_id: str = "k", purpose: str = "ENCRYPT_DECRYPT",
                   algorithm: str = "GOOGLE_SYMMETRIC_ENCRYPTION", protection: str = "HSM",
                   import_only: bool = True, skip: bool = True, **extra: Any) -> dict[str, Any]:
        body = {"purpose": purpose, "versionTemplate": {"protectionLevel": protection, "algorithm": algorithm},
                "importOnly": import_only, **extra}
        return self.ok("POST", f"{self.ring}/cryptoKeys", body, cryptoKeyId=key_id,
                       skipInitialVersionCreation=str(skip).lower())

    def create_job(self, job_id: str = "job", method: str = "RSA_OAEP_3072_SHA256_AES_256",
                   protection: str = "HSM", wait: bool = True) -> dict[str, Any]:
        job = self.ok("POST", f"{self.ring}/importJobs", {"importMethod": method, "protectionLevel": protection},
                      importJobId=job_id)
        return self.wait(job["name"], "ACTIVE") if wait else job

    def wait(self, name: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            resource = self.ok("GET", name)
            if resource["state"] in states:
                return resource
            assert time.monotonic() < deadline, f"{name} stayed {resource['state']}"
            time.sleep(0.02)

    def import_version(self, key: str, job: dict[str, Any], algorithm: str, material: bytes,
                       field: str = "wrappedKey", **wrap_options: Any) -> requests.Response:
        body = {"algorithm": algorithm, "importJob": job["name"],
                field: base64.b64encode(wrap(job, material, **wrap_options)).decode()}
        return self.call("POST", f"{self.ring}/cryptoKeys/{key}/cryptoKeyVersions:import", body)

    def imported(self, key: str, job: dict[str, Any], algorithm: str, material: bytes,
                 **wrap_options: Any) -> dict[str, Any]:
        response = self.import_version(key, job, algorithm, material, **wrap_options)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "PENDING_IMPORT"
        return self.wait(response.json()["name"], "ENABLED", "IMPORT_FAILED")


def wrap(job: dict[str, Any], plaintext: bytes, *, oaep_hash: hashes.HashAlgorithm | None = None) -> bytes:
    """key-transfer.md §5.3, by the import method's name: OAEP(AES-256 key) || KWP(material), or OAEP alone."""
    public = serialization.load_pem_public_key(job["publicKey"]["pem"].encode())
    assert isinstance(public, rsa.RSAPublicKey)
    method = job["importMethod"]
    digest = oaep_hash or (hashes.SHA1() if "_SHA1_" in method else hashes.SHA256())
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    if method.endswith("_AES_256"):
        aes_key = os.urandom(32)
        return public.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, plaintext)
    return public.encrypt(plaintext, oaep)


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Keys to import are made once per run: RSA-4096 generation is slow."""
    return rsa.generate_private_key(65537, bits)


@functools.cache
def ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVES[curve])


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def spki_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def error(response: requests.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert set(body) <= {"code", "message", "status", "details"} and body["code"] == response.status_code
    return body


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[GcpKmsFake]:
    """A fake that fails the test if any request broke the spec or a Cloud KMS rule."""
    with FakeCloudKms(**FAST) as started:
        yield started


@pytest.fixture
def lax_fake() -> Iterator[GcpKmsFake]:
    """For tests that send bad requests on purpose and inspect the record."""
    with FakeCloudKms(allow_violations=True, **FAST) as started:
        yield started


@pytest.fixture
def kms(fake: GcpKmsFake) -> Kms:
    return Kms(fake)


@pytest.fixture
def lax_kms(lax_fake: GcpKmsFake) -> Kms:
    return Kms(lax_fake)


class Shared:
    """One lax fake with one ACTIVE import job for a group of cases that each leave it as they found it.

    Import jobs are the expensive part (an RSA-3072 key each); cases use their
    own CryptoKey ids and look only at the failures recorded since they began.
    """

    def __init__(self, fake: GcpKmsFake) -> None:
        self.fake = fake
        self.kms = Kms(fake)
        self.job = self.kms.create_job("shared")
        self.count = 0
        self.mark = 0

    def key_id(self) -> str:
        self.count += 1
        return f"case-{self.count}"

    def begin(self) -> Shared:
        self.fake.allow(*{*PERMISSIONS.values(), "cloudkms.importJobs.useToImport"})
        self.mark = len(self.fake.validation_failures)
        return self

    @property
    def failures(self) -> list[Any]:
        return self.fake.validation_failures[self.mark:]


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[Shared]:
    with FakeCloudKms(allow_violations=True, **FAST) as started:
        yield Shared(started)


@pytest.fixture
def shared(shared_fake: Shared) -> Shared:
    return shared_fake.begin()


# -- the discovery document and the enum numbers --------------------------------


def test_known_proto_enum_numbers_are_not_discovery_positions() -> None:
    doc = load()
    cases = [
        ("ImportJob.importMethod", "RSA_OAEP_4096_SHA256_AES_256", 4),
        ("ImportJob.importMethod", "RSA_OAEP_3072_SHA256", 5),
        ("CryptoKeyVersionTemplate.protectionLevel", "HSM", 2),
        ("CryptoKeyVersionTemplate.protectionLevel", "SOFTWARE", 1),
        ("CryptoKey.purpose", "ENCRYPT_DECRYPT", 1),
        ("CryptoKey.purpose", "ASYMMETRIC_SIGN", 5),
        ("CryptoKey.purpose", "ASYMMETRIC_DECRYPT", 6),
        ("CryptoKeyVersion.state", "ENABLED", 1),
        ("CryptoKeyVersion.state", "PENDING_GENERATION", 5),
        ("CryptoKeyVersion.state", "PENDING_IMPORT", 6),
        ("CryptoKeyVersion.state", "DESTROY_SCHEDULED", 4),
        ("CryptoKeyVersion.algorithm", "EC_SIGN_P256_SHA256", 12),
        ("CryptoKeyVersion.algorithm", "RSA_DECRYPT_OAEP_2048_SHA256", 8),
        ("ImportJob.state", "ACTIVE", 2),
    ]
    for owner, name, number in cases:
        schema, prop = owner.split(".")
        assert doc.enum_number(schema, prop, name) == number, (owner, name)
    # Positions in the discovery lists disagree for several of them: never use them.
    listed = doc.schemas["CryptoKey"]["properties"]["purpose"]["enum"]
    assert listed.index("ASYMMETRIC_SIGN") != 5
    states = doc.schemas["CryptoKeyVersion"]["properties"]["state"]["enum"]
    assert states.index("PENDING_GENERATION") != 5


def test_enum_table_matches_the_installed_google_cloud_kms() -> None:
    from google.cloud import kms_v1  # noqa: F401  (registers the descriptors)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for key, enum_name in ENUM_FIELDS.items():
        message, prop = key.split(".")
        descriptor = pool.FindMessageTypeByName(f"{PROTO_PACKAGE}.{message}")
        enum_type = descriptor.fields_by_camelcase_name[prop].enum_type
        assert enum_type.full_name == f"{PROTO_PACKAGE}.{enum_name}", key
        assert PROTO_ENUMS[enum_name] == {v.name: v.number for v in enum_type.values}, enum_name
    for message in QUERY_MESSAGES.values():
        pool.FindMessageTypeByName(f"{PROTO_PACKAGE}.{message}")


def test_every_discovery_enum_is_numbered_or_known_to_be_missing() -> None:
    """The document (rev 20260917) is newer than google-cloud-kms 3.18.0 in three names."""
    doc = load()
    unnumbered: set[str] = set()
    for schema_name, schema in doc.schemas.items():
        for prop, spec in schema.get("properties", {}).items():
            names = spec.get("items", spec).get("enum")
            if names is None:
                continue
            enum = doc.enum_type(schema_name, prop)
            if enum is None:
                assert f"{schema_name}.{prop}" in ("AuditLogConfig.logType",
                                                   "ShowEffectiveAutokeyConfigResponse.keyProjectResolutionMode")
                continue
            unnumbered |= set(names) - set(PROTO_ENUMS[enum])
    assert unnumbered == {"KEM_ECDH_P256", "KEM_ECDH_P384", "CAVIUM_V209"}


@pytest.mark.parametrize(("http", "path", "method_id"), [
    ("POST", "cryptoKeys/k/cryptoKeyVersions:import", "cryptoKeys.cryptoKeyVersions.import"),
    ("GET", "cryptoKeys/k/cryptoKeyVersions/3", "cryptoKeys.cryptoKeyVersions.get"),
    ("PATCH", "cryptoKeys/k/cryptoKeyVersions/3", "cryptoKeys.cryptoKeyVersions.patch"),
    ("POST", "cryptoKeys/k/cryptoKeyVersions/3:destroy", "cryptoKeys.cryptoKeyVersions.destroy"),
    ("GET", "cryptoKeys/k/cryptoKeyVersions/3/publicKey", "cryptoKeys.cryptoKeyVersions.getPublicKey"),
    ("POST", "cryptoKeys/k:updatePrimaryVersion", "cryptoKeys.updatePrimaryVersion"),
    ("GET", "cryptoKeys/k", "cryptoKeys.get"),
    ("GET", "importJobs/j", "importJobs.get"),
])
def test_routing_by_flat_path(http: str, path: str, method_id: str) -> None:
    method, params = load().match(http, f"/v1/projects/p/locations/l/keyRings/r/{path}")
    assert method.id == f"cloudkms.projects.locations.keyRings.{method_id}"
    assert list(params.values())[0].startswith("projects/p/locations/l/keyRings/r")


def test_every_http_rule_of_the_official_client_routes_to_the_document() -> None:
    """The REST transports' google.api.http rules (149 of them) against the discovery routes.

    Also checks the one heuristic the validator needs: `body: "*"` exactly when
    the discovery request schema is an RPC `...Request` message.
    """
    import google.cloud.kms_v1.services as services

    doc = load()
    rules = 0
    for rest_base in sorted(Path(services.__file__).parent.glob("*/transports/rest_base.py")):
        source = rest_base.read_text()
        for http, uri, body in re.findall(r'"method": "(\w+)",\s*"uri": "([^"]+)",(?:\s*"body": "([^"]+)",)?', source):
            path = re.sub(r"\{([\w.]+)=([^}]+)\}", lambda m: m.group(2).replace("*", "x"), uri)
            method, _ = doc.match(http.upper(), path)
            assert (body == "*") == method.body_is_request_message, (uri, body, method.request_ref)
            assert bool(body) == (method.request_ref is not None), (uri, body)
            rules += 1
    assert rules > 100


def test_response_self_check_is_not_vacuous() -> None:
    doc = load()
    get = doc.by_id["cloudkms.projects.locations.keyRings.importJobs.get"]
    assert doc.validate_response(get, {"name": "n", "state": "ACTIVE", "publicKey": {"pem": "x"}}) == []
    assert doc.validate_response(get, {"state": "LIVE"}) != []
    assert doc.validate_response(get, {"publicKey": {"pem": "x", "der": "y"}}) != []


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4 check value
    assert crc32c(b"") == 0


# -- TLS and authentication ------------------------------------------------------


def test_tls_is_verified_against_the_fake_ca(fake: GcpKmsFake) -> None:
    port = fake.kms_url.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost"):
        assert session(fake).get(f"https://{host}:{port}/v1/{fake.key_collection}").status_code == 401
    strict = requests.Session()
    strict.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        strict.get(f"{fake.kms_url}/v1/{fake.key_collection}")


def test_service_account_file_has_what_both_clients_need(fake: GcpKmsFake) -> None:
    info = key_file(fake)
    assert info["type"] == "service_account" and info["token_uri"] == fake.token_uri
    assert info["token_uri"].startswith("https://127.0.0.1:")
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as google-cloud-auth insists
    assert info["client_email"].endswith(f"@{info['project_id']}.iam.gserviceaccount.com")
    assert len(info["private_key_id"]) == 40
    assert oct(os.stat(fake.service_account_file).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("claims", [
    pytest.param({}, id="rust-style scope with aud null"),
    pytest.param({"scope": "https://www.googleapis.com/auth/cloudkms"}, id="cloudkms scope"),
    pytest.param({"scope": ..., "aud": "https://cloudkms.googleapis.com/"}, id="audience instead of scope"),
])
def test_self_signed_jwt_is_accepted(fake: GcpKmsFake, claims: dict[str, Any]) -> None:
    info = key_file(fake)
    kms = Kms(fake, bearer=sign_jwt(info, rust_claims(info, **claims)))
    assert kms.ok("GET", fake.key_collection)["name"] == fake.key_collection
    assert [(p.client_email, p.mode) for p in fake.principals] == [(info["client_email"], "self-signed-jwt")]


def _other_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


BAD_BEARERS: dict[str, Callable[[dict[str, str]], str]] = {
    "forged signature": lambda i: sign_jwt(i, rust_claims(i), key=_other_key()),
    "wrong kid": lambda i: sign_jwt(i, rust_claims(i), kid="0" * 40),
    "expired": lambda i: sign_jwt(i, rust_claims(i, iat=int(time.time()) - 4000, exp=int(time.time()) - 30)),
    "wrong audience": lambda i: sign_jwt(i, rust_claims(i, scope=..., aud="https://storage.googleapis.com/")),
    "audience of the fake's own URL": lambda i: sign_jwt(i, rust_claims(i, scope=..., aud="https://127.0.0.1/")),
    "wrong scope": lambda i: sign_jwt(i, rust_claims(i, scope="https://www.googleapis.com/auth/devstorage.read_only")),
    "neither aud nor scope": lambda i: sign_jwt(i, rust_claims(i, scope=...)),
    "sub differs from iss": lambda i: sign_jwt(i, rust_claims(i, sub="someone@example.com")),
    "unknown account": lambda i: sign_jwt(i, rust_claims(i, iss="x@y.iam.gserviceaccount.com",
                                                            sub="x@y.iam.gserviceaccount.com")),
    "lifetime over an hour": lambda i: sign_jwt(i, rust_claims(i, exp=int(time.time()) + 7200)),
    "issued in the future": lambda i: sign_jwt(i, rust_claims(i, iat=int(time.time()) + 900)),
    "HS256 header": lambda i: sign_jwt(i, rust_claims(i), alg="HS256"),
    "made-up opaque token": lambda i: "ya29.made-up",
    "truncated JWT": lambda i: sign_jwt(i, rust_claims(i)).rsplit(".", 1)[0] + ".",
}


@pytest.mark.parametrize("case", list(BAD_BEARERS))
def test_bad_bearers_are_rejected(fake: GcpKmsFake, case: str) -> None:
    kms = Kms(fake, bearer=BAD_BEARERS[case](key_file(fake)))
    response = kms.call("GET", fake.key_collection)
    assert response.status_code == 401
    assert error(response)["status"] == "UNAUTHENTICATED"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="https://accounts.google.com/"')
    assert len(fake.auth_rejections) == 1 and fake.principals == []
    assert fake.validation_failures == []  # wrong credentials are behaviour, not protocol misuse


def test_missing_credentials(fake: GcpKmsFake) -> None:
    response = session(fake).get(f"{fake.kms_url}/v1/{fake.key_collection}")
    assert response.status_code == 401
    assert "missing required authentication credential" in error(response)["message"]
    assert error(response)["details"][0]["reason"] == "CREDENTIALS_MISSING"


def jwt_grant(fake: GcpKmsFake, assertion: str, **form: str) -> requests.Response:
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion, **form}
    return session(fake).post(fake.token_uri, data=data)


def grant_claims(info: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """What google-auth's service_account.Credentials puts in a jwt-bearer assertion."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": info["client_email"], "aud": "https://oauth2.googleapis.com/token",
                              "scope": CLOUD_PLATFORM, "iat": now, "exp": now + 3600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def test_token_endpoint_issues_opaque_tokens(fake: GcpKmsFake) -> None:
    info = key_file(fake)
    response = jwt_grant(fake, sign_jwt(info, grant_claims(info)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 3600
    assert body["access_token"].count(".") < 2  # opaque, not a JWT
    kms = Kms(fake, bearer=body["access_token"])
    assert kms.call("GET", fake.key_collection).status_code == 200
    assert fake.principals[-1].mode == "access-token"
    fake.expire_tokens()
    assert kms.call("GET", fake.key_collection).status_code == 401


@pytest.mark.parametrize(("claims", "kid", "key", "expected"), [
    ({}, "0" * 40, None, "invalid_grant"),
    ({}, None, "other", "invalid_grant"),
    ({"aud": "https://www.googleapis.com/oauth2/v4/revoke"}, None, None, "invalid_grant"),
    ({"aud": "https://cloudkms.googleapis.com/"}, None, None, "invalid_grant"),
    ({"iat": 1_000_000, "exp": 1_003_600}, None, None, "invalid_grant"),
    ({"scope": ...}, None, None, "invalid_scope"),
    ({"sub": "admin@example.com"}, None, None, "unauthorized_client"),
])
def test_token_endpoint_rejects_bad_assertions(
    fake: GcpKmsFake, claims: dict[str, Any], kid: str | None, key: str | None, expected: str
) -> None:
    info = key_file(fake)
    assertion = sign_jwt(info, grant_claims(info, **claims), kid=kid, key=_other_key() if key else None)
    response = jwt_grant(fake, assertion)
    assert response.status_code == 400
    assert response.json()["error"] == expected
    assert fake.validation_failures == []


@pytest.mark.parametrize("misuse", ["grant_type", "json body"])
def test_token_endpoint_records_protocol_misuse(lax_fake: GcpKmsFake, misuse: str) -> None:
    info = key_file(lax_fake)
    assertion = sign_jwt(info, grant_claims(info))
    if misuse == "grant_type":
        response = jwt_grant(lax_fake, assertion, grant_type="client_credentials")
    else:
        response = session(lax_fake).post(lax_fake.token_uri, json={"assertion": assertion})
    assert response.status_code == 400
    [failure] = lax_fake.validation_failures
    assert (failure.service, failure.source) == ("oauth2", "protocol")


def test_google_auth_token_uri_flow(fake: GcpKmsFake, monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth without jwt access exchanges its own assertion at the key file's token_uri."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_pem_path)
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        fake.service_account_file, scopes=[CLOUD_PLATFORM])
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token and credentials.token.startswith("ya29.")
    assert [r.path for r in fake.requests] == ["/token"]
    assert Kms(fake, bearer=credentials.token).call("GET", fake.key_collection).status_code == 200


def test_records_hold_no_secrets(fake: GcpKmsFake, kms: Kms) -> None:
    info = key_file(fake)
    kms.create_key()
    job = kms.create_job()
    material = os.urandom(32)
    wrapped = base64.b64encode(wrap(job, material)).decode()
    kms.ok("POST", f"{kms.ring}/cryptoKeys/k/cryptoKeyVersions:import",
           {"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": job["name"], "wrappedKey": wrapped})
    token = jwt_grant(fake, sign_jwt(info, grant_claims(info))).json()["access_token"]
    bearer = kms.http.headers["Authorization"].split()[1]
    logged = repr(fake.requests) + repr(fake.validation_failures) + repr(fake.auth_rejections) + repr(fake.principals)
    for secret in (bearer, bearer.split(".")[2], token, wrapped[:40], info["private_key"][40:80], material.hex()):
        assert secret not in logged
    assert repr(fake.versions(f"{kms.ring}/cryptoKeys/k")).count(material.hex()) == 0  # material is repr=False


def test_query_credentials_are_redacted(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    """Google takes ?access_token= too; the fake does not model it, and never records its value."""
    response = lax_kms.call("GET", lax_kms.ring, access_token="ya29.secret-in-the-query")
    assert response.status_code == 400
    [record] = lax_fake.requests
    assert record.query["access_token"] == ["<redacted>"]
    assert "secret-in-the-query" not in repr(lax_fake.validation_failures)


# -- import: exact material, every method ------------------------------------------


IMPORTS = [
    ("RSA_OAEP_3072_SHA256_AES_256", "ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION", "aes"),
    ("RSA_OAEP_3072_SHA1_AES_256", "ASYMMETRIC_SIGN", "RSA_SIGN_PSS_2048_SHA256", "RSA-2048"),
    ("RSA_OAEP_3072_SHA256_AES_256", "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_3072_SHA256", "RSA-3072"),
    ("RSA_OAEP_4096_SHA256_AES_256", "ASYMMETRIC_SIGN", "RSA_SIGN_PKCS1_4096_SHA256", "RSA-4096"),
    ("RSA_OAEP_3072_SHA256_AES_256", "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256", "P-256"),
    ("RSA_OAEP_3072_SHA1_AES_256", "ASYMMETRIC_SIGN", "EC_SIGN_P384_SHA384", "P-384"),
    ("RSA_OAEP_3072_SHA256", "ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION", "aes"),
    ("RSA_OAEP_3072_SHA256", "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256", "P-256"),
]


@pytest.mark.parametrize(("method", "purpose", "algorithm", "kind"), IMPORTS)
def test_import_unwraps_the_exact_material(fake: GcpKmsFake, kms: Kms, method: str, purpose: str,
                                           algorithm: str, kind: str) -> None:
    kms.create_key(purpose=purpose, algorithm=algorithm)
    job = kms.create_job(method=method)
    private = None if kind == "aes" else rsa_key(int(kind[4:])) if kind.startswith("RSA") else ec_key(kind)
    material = os.urandom(32) if private is None else pkcs8(private)
    version = kms.imported("k", job, algorithm, material)
    assert version["state"] == "ENABLED", version
    assert version["importJob"] == job["name"] and version["reimportEligible"] is True
    assert (version["algorithm"], version["protectionLevel"]) == (algorithm, "HSM")
    [stored] = fake.versions(f"{kms.ring}/cryptoKeys/k")
    assert stored.material == material and stored.origin == "imported"
    if private is not None:
        assert stored.public_key_pem == spki_pem(private)
        assert stored.private_key().private_numbers() == private.private_numbers()
        public = kms.ok("GET", f"{version['name']}/publicKey")
        assert public["pem"] == spki_pem(private) and public["algorithm"] == algorithm
        assert int(public["pemCrc32c"]) == crc32c(public["pem"].encode())


def test_legacy_rsa_aes_wrapped_key_field(fake: GcpKmsFake, kms: Kms) -> None:
    kms.create_key()
    job = kms.create_job()
    material = os.urandom(32)
    version = kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", material, field="rsaAesWrappedKey")
    assert version["state"] == "ENABLED"
    assert fake.versions(f"{kms.ring}/cryptoKeys/k")[0].material == material


def test_public_key_as_der(kms: Kms) -> None:
    kms.create_key(purpose="ASYMMETRIC_SIGN", algorithm="EC_SIGN_P256_SHA256")
    version = kms.imported("k", kms.create_job(), "EC_SIGN_P256_SHA256", pkcs8(ec_key()))
    public = kms.ok("GET", f"{version['name']}/publicKey", publicKeyFormat="DER")
    der = base64.b64decode(public["publicKey"]["data"])
    public_key = serialization.load_der_public_key(der)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.public_numbers() == ec_key().public_key().public_numbers()
    assert public["publicKeyFormat"] == "DER" and "pem" not in public
    assert int(public["publicKey"]["crc32cChecksum"]) == crc32c(der)


# -- import: Cloud KMS rules --------------------------------------------------------


def _traditional(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


# (purpose, key algorithm, import algorithm, material, wrap options) -> IMPORT_FAILED reason fragment
FAILED_IMPORTS: dict[str, tuple[str, str, Callable[[], bytes], dict[str, Any], str]] = {
    "AES key of 16 bytes": ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION", lambda: os.urandom(16), {}, "16 bytes"),
    "AES key given as PKCS#8 of an EC key": ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION",
                                            lambda: pkcs8(ec_key()), {}, "raw bytes"),
    "P-384 material for P-256": ("ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256", lambda: pkcs8(ec_key("P-384")), {},
                                 "expected P-256"),
    "SEC1 instead of PKCS#8": ("ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256", lambda: _traditional(ec_key()), {},
                               "PKCS#8"),
    "PKCS#1 instead of PKCS#8": ("ASYMMETRIC_SIGN", "RSA_SIGN_PSS_2048_SHA256", lambda: _traditional(rsa_key()),
                                 {}, "PKCS#8"),
    "RSA-2048 for a 3072 algorithm": ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_3072_SHA256", lambda: pkcs8(rsa_key()),
                                      {}, "2048 bits"),
    "EC material for an RSA algorithm": ("ASYMMETRIC_SIGN", "RSA_SIGN_PSS_2048_SHA256", lambda: pkcs8(ec_key()), {},
                                         "expected RSA"),
    "OAEP SHA-1 for a SHA-256 method": ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION", lambda: os.urandom(32),
                                        {"oaep_hash": hashes.SHA1()}, "RSA-OAEP (SHA-256)"),
}


@pytest.mark.parametrize("case", list(FAILED_IMPORTS))
def test_bad_material_ends_import_failed(shared: Shared, case: str) -> None:
    purpose, algorithm, material, options, fragment = FAILED_IMPORTS[case]
    key_id = shared.key_id()
    shared.kms.create_key(key_id, purpose=purpose, algorithm=algorithm)
    version = shared.kms.imported(key_id, shared.job, algorithm, material(), **options)
    assert version["state"] == "IMPORT_FAILED"
    assert fragment in version["importFailureReason"]
    [stored] = shared.fake.versions(f"{shared.kms.ring}/cryptoKeys/{key_id}")
    assert stored.material is None and stored.import_failure_reason == version["importFailureReason"]
    [failure] = shared.failures
    assert failure.source == "service" and failure.operation == "keyRings.cryptoKeys.cryptoKeyVersions.import"


def test_corrupted_kwp_part_ends_import_failed(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    lax_kms.create_key()
    job = lax_kms.create_job()
    wrapped = bytearray(wrap(job, os.urandom(32)))
    wrapped[-1] ^= 1
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", {
        "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": job["name"],
        "wrappedKey": base64.b64encode(bytes(wrapped)).decode()})
    version = lax_kms.wait(response.json()["name"], "IMPORT_FAILED")
    assert "RFC 5649" in version["importFailureReason"]


def _import_body(job: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = {"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": job["name"],
            "wrappedKey": base64.b64encode(wrap(job, os.urandom(32))).decode()}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


REJECTED_IMPORTS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str, str]] = {
    "both wrapped fields": (lambda j: _import_body(j, rsaAesWrappedKey=_import_body(j)["wrappedKey"]),
                            "INVALID_ARGUMENT", "exactly one"),
    "no wrapped field": (lambda j: _import_body(j, wrappedKey=...), "INVALID_ARGUMENT", "exactly one"),
    "no algorithm": (lambda j: _import_body(j, algorithm=...), "INVALID_ARGUMENT", "algorithm is required"),
    "algorithm of another purpose": (lambda j: _import_body(j, algorithm="EC_SIGN_P256_SHA256"),
                                     "INVALID_ARGUMENT", "not compatible with purpose ENCRYPT_DECRYPT"),
    "truncated wrapped key": (lambda j: _import_body(j, wrappedKey=base64.b64encode(b"\0" * 390).decode()),
                              "INVALID_ARGUMENT", "390 bytes"),
    "job in another location": (lambda j: _import_body(j, importJob=j["name"].replace("/global/", "/us-east1/")),
                                "INVALID_ARGUMENT", "location"),
    "job name malformed": (lambda j: _import_body(j, importJob="importJobs/job"), "INVALID_ARGUMENT", "importJobs/*"),
    "unknown job": (lambda j: _import_body(j, importJob=j["name"] + "x"), "NOT_FOUND", "ImportJob"),
}


@pytest.mark.parametrize("case", list(REJECTED_IMPORTS))
def test_import_requests_that_cloud_kms_rejects(shared: Shared, case: str) -> None:
    body, status, fragment = REJECTED_IMPORTS[case]
    key_id = shared.key_id()
    shared.kms.create_key(key_id)
    response = shared.kms.call("POST", f"{shared.kms.ring}/cryptoKeys/{key_id}/cryptoKeyVersions:import",
                               body(shared.job))
    assert response.status_code in (400, 404)
    assert error(response)["status"] == status and fragment in error(response)["message"]
    assert shared.fake.versions(f"{shared.kms.ring}/cryptoKeys/{key_id}") == []


def test_job_and_key_protection_levels_must_match(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    lax_kms.create_key(protection="SOFTWARE")
    job = lax_kms.create_job(protection="HSM")
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", _import_body(job))
    assert response.status_code == 400 and "protection level HSM" in error(response)["message"]
    software = lax_kms.create_job("soft", protection="SOFTWARE")
    assert lax_kms.imported("k", software, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))["state"] == "ENABLED"
    assert lax_fake.versions(f"{lax_kms.ring}/cryptoKeys/k")[0].protection_level == "SOFTWARE"


def test_rsa_aes_field_needs_an_aes_method(lax_kms: Kms) -> None:
    lax_kms.create_key()
    job = lax_kms.create_job(method="RSA_OAEP_3072_SHA256")
    body = _import_body(job, rsaAesWrappedKey=_import_body(job)["wrappedKey"], wrappedKey=...)
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", body)
    assert response.status_code == 400 and "AES_256" in error(response)["message"]


def test_import_only_rules(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    """importOnly needs skipInitialVersionCreation and forbids generated versions; imports work into any key."""
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT", "importOnly": True},
                            cryptoKeyId="a")
    assert response.status_code == 400 and "skip_initial_version_creation" in error(response)["message"]
    lax_kms.create_key("b")
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/b/cryptoKeyVersions", {})
    assert response.status_code == 400 and error(response)["status"] == "FAILED_PRECONDITION"
    # Cloud KMS lets a key that is not import-only hold imported versions too; the
    # snapshot is how a plugin test asserts that importOnly was set.
    lax_kms.create_key("c", import_only=False)
    imported = lax_kms.imported("c", lax_kms.create_job(), "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert imported["state"] == "ENABLED"
    assert lax_fake.crypto_key(f"{lax_kms.ring}/cryptoKeys/c").import_only is False
    assert lax_fake.crypto_key(f"{lax_kms.ring}/cryptoKeys/b").import_only is True


@pytest.mark.parametrize(("body", "query", "fragment"), [
    ({"purpose": "ENCRYPT_DECRYPT", "versionTemplate": {"algorithm": "RSA_SIGN_PSS_2048_SHA256"}}, {},
     "not compatible"),
    ({"purpose": "ASYMMETRIC_SIGN"}, {}, "algorithm is required"),
    ({"versionTemplate": {"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"}}, {}, "purpose is required"),
    ({"purpose": "ASYMMETRIC_SIGN", "versionTemplate": {"algorithm": "EC_SIGN_SECP256K1_SHA256"}}, {}, "HSM"),
    ({"purpose": "ENCRYPT_DECRYPT", "destroyScheduledDuration": "3600s"}, {}, "24 hours"),
    ({"purpose": "ENCRYPT_DECRYPT", "destroyScheduledDuration": "10368001s"}, {}, "120 days"),
    ({"purpose": "ENCRYPT_DECRYPT", "labels": {"Upper": "x"}}, {}, "label"),
    ({"purpose": "ENCRYPT_DECRYPT"}, {"cryptoKeyId": "has.dot"}, "crypto_key_id"),
    ({"purpose": "ENCRYPT_DECRYPT"}, {"cryptoKeyId": "x" * 64}, "crypto_key_id"),
])
def test_create_key_rules(lax_fake: GcpKmsFake, lax_kms: Kms, body: dict[str, Any], query: dict[str, str],
                          fragment: str) -> None:
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys", body,
                            **{"cryptoKeyId": "k", "skipInitialVersionCreation": "true", **query})
    assert response.status_code == 400, response.text
    assert error(response)["status"] == "INVALID_ARGUMENT" and fragment in error(response)["message"]
    assert lax_fake.crypto_keys() == []
    assert [f.source for f in lax_fake.validation_failures] == ["service"]


def test_create_key_conflicts_and_missing_ring(kms: Kms) -> None:
    kms.create_key()
    response = kms.call("POST", f"{kms.ring}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId="k")
    assert response.status_code == 409 and error(response)["status"] == "ALREADY_EXISTS"
    other = kms.ring.replace("/keymgmt", "/absent")
    response = kms.call("POST", f"{other}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId="k")
    assert response.status_code == 404 and error(response)["status"] == "NOT_FOUND"
    assert kms.call("GET", f"{kms.ring}/cryptoKeys/nope").status_code == 404


def test_generated_keys_and_the_implied_algorithm(fake: GcpKmsFake, kms: Kms) -> None:
    key = kms.ok("POST", f"{kms.ring}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId="gen")
    assert key["versionTemplate"] == {"protectionLevel": "SOFTWARE", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"}
    assert key["primary"]["state"] == "ENABLED" and key["primary"]["name"].endswith("/cryptoKeyVersions/1")
    assert "importOnly" not in key and key["destroyScheduledDuration"] == "2592000s"
    second = kms.ok("POST", f"{kms.ring}/cryptoKeys/gen/cryptoKeyVersions", {})
    assert second["name"].endswith("/2") and "generateTime" in second
    assert kms.ok("GET", f"{kms.ring}/cryptoKeys/gen")["primary"]["name"].endswith("/1")
    assert [len(v.material or b"") for v in fake.versions(key["name"])] == [32, 32]


def test_key_ring_create_get_list(kms: Kms) -> None:
    parent = kms.ring.rsplit("/keyRings/", 1)[0]
    created = kms.ok("POST", f"{parent}/keyRings", {}, keyRingId="second")
    assert created["name"] == f"{parent}/keyRings/second"
    assert kms.call("POST", f"{parent}/keyRings", {}, keyRingId="second").status_code == 409
    names = [r["name"] for r in kms.ok("GET", f"{parent}/keyRings")["keyRings"]]
    assert names == [kms.ring, created["name"]]


# -- state machines -------------------------------------------------------------------


def test_import_job_lifecycle(fake: GcpKmsFake, kms: Kms) -> None:
    fake.import_job_delay = 0.3
    job = kms.create_job(wait=False)
    assert job["state"] == "PENDING_GENERATION" and "publicKey" not in job and "generateTime" not in job
    created = job["createTime"]
    active = kms.wait(job["name"], "ACTIVE")
    assert active["publicKey"]["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(active["publicKey"]["pem"].encode())
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    assert active["createTime"] == created and "generateTime" in active
    assert active["protectionLevel"] == "HSM" and active["importMethod"] == "RSA_OAEP_3072_SHA256_AES_256"
    expire = time.mktime(time.strptime(active["expireTime"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(expire - time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - 3 * 86400) < 2
    fake.advance(3 * 86400)
    expired = kms.ok("GET", job["name"])
    assert expired["state"] == "EXPIRED" and "publicKey" not in expired and "expireEventTime" in expired
    kms.create_key()
    response = kms.call("POST", f"{kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", {
        "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": job["name"],
        "wrappedKey": base64.b64encode(wrap(active, os.urandom(32))).decode()})
    assert response.status_code == 400 and error(response)["status"] == "FAILED_PRECONDITION"
    assert "current state is: EXPIRED" in error(response)["message"]


def test_import_job_lifetime_is_settable_per_test(fake: GcpKmsFake, kms: Kms) -> None:
    fake.import_job_lifetime = 60
    job = kms.create_job()
    fake.advance(59)
    assert kms.ok("GET", job["name"])["state"] == "ACTIVE"
    fake.advance(1)
    assert kms.ok("GET", job["name"])["state"] == "EXPIRED"
    other = kms.create_job("other")
    fake.expire_import_job(other["name"])
    assert kms.ok("GET", other["name"])["state"] == "EXPIRED"
    assert {j.state for j in fake.import_jobs().values()} == {"EXPIRED"}


def test_pending_generation_job_cannot_import(kms: Kms, fake: GcpKmsFake) -> None:
    fake.import_job_delay = 5
    kms.create_key()
    job = kms.create_job(wait=False)
    response = kms.call("POST", f"{kms.ring}/cryptoKeys/k/cryptoKeyVersions:import",
                        {"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": job["name"], "wrappedKey": "AAAA"})
    assert response.status_code == 400 and "PENDING_GENERATION" in error(response)["message"]


def test_version_lifecycle(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    fake, kms = lax_fake, lax_kms
    kms.create_key(destroyScheduledDuration="86400s")
    version = kms.imported("k", kms.create_job(), "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    name = version["name"]

    def patch(state: Any) -> requests.Response:
        return kms.call("PATCH", name, {"state": state}, updateMask="state")

    assert patch("DISABLED").json()["state"] == "DISABLED"
    assert patch("DISABLED").json()["state"] == "DISABLED"
    assert patch("ENABLED").json()["state"] == "ENABLED"
    assert patch("DESTROYED").status_code == 400
    assert kms.call("PATCH", name, {"algorithm": "AES_256_GCM"}, updateMask="algorithm").status_code == 400
    destroyed = kms.ok("POST", f"{name}:destroy", {})
    assert destroyed["state"] == "DESTROY_SCHEDULED" and "destroyTime" in destroyed
    rejected = patch("ENABLED")
    assert rejected.status_code == 400 and error(rejected)["status"] == "FAILED_PRECONDITION"
    assert error(rejected)["message"].endswith("current state is: DESTROY_SCHEDULED.")
    assert kms.call("POST", f"{name}:destroy", {}).status_code == 400
    restored = kms.ok("POST", f"{name}:restore", {})
    assert restored["state"] == "DISABLED" and "destroyTime" not in restored
    assert kms.call("POST", f"{name}:restore", {}).status_code == 400
    kms.ok("POST", f"{name}:destroy", {})
    fake.advance(86400)
    gone = kms.ok("GET", name)
    assert gone["state"] == "DESTROYED" and "destroyEventTime" in gone
    assert fake.versions(f"{kms.ring}/cryptoKeys/k")[0].material is None


def test_reimport(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    lax_kms.create_key(destroyScheduledDuration="86400s")
    job = lax_kms.create_job()
    failed = lax_kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(16))
    assert failed["state"] == "IMPORT_FAILED"
    material = os.urandom(32)
    body = _import_body(job, cryptoKeyVersion=failed["name"],
                        wrappedKey=base64.b64encode(wrap(job, material)).decode())
    again = lax_kms.ok("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", body)
    assert again["name"] == failed["name"] and again["state"] == "PENDING_IMPORT"
    assert lax_kms.wait(failed["name"], "ENABLED")["state"] == "ENABLED"
    assert lax_fake.versions(f"{lax_kms.ring}/cryptoKeys/k")[0].material == material
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", body)
    assert response.status_code == 400 and "DESTROYED or IMPORT_FAILED" in error(response)["message"]
    lax_kms.ok("POST", f"{failed['name']}:destroy", {})
    lax_fake.advance(86400)  # destroyed, while the 3-day import job is still ACTIVE
    other = _import_body(job, cryptoKeyVersion=failed["name"])
    lax_kms.ok("POST", f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions:import", other)
    assert "does not match" in lax_kms.wait(failed["name"], "IMPORT_FAILED")["importFailureReason"]


def test_forced_import_failure(fake: GcpKmsFake, kms: Kms) -> None:
    kms.create_key()
    fake.fail_next_imports("HSM unavailable")
    version = kms.imported("k", kms.create_job(), "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert (version["state"], version["importFailureReason"]) == ("IMPORT_FAILED", "HSM unavailable")


def test_primary_version_of_symmetric_keys(kms: Kms) -> None:
    key = kms.create_key()
    assert "primary" not in key
    job = kms.create_job()
    first = kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    second = kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert second["name"].endswith("/cryptoKeyVersions/2")
    assert "primary" not in kms.ok("GET", key["name"])  # [INFER] imports are never made primary by themselves
    updated = kms.ok("POST", f"{key['name']}:updatePrimaryVersion", {"cryptoKeyVersionId": "2"})
    assert updated["primary"]["name"] == second["name"] and updated["primary"]["state"] == "ENABLED"
    kms.ok("PATCH", first["name"], {"state": "DISABLED"}, updateMask="state")
    response = kms.call("POST", f"{key['name']}:updatePrimaryVersion", {"cryptoKeyVersionId": "1"})
    assert response.status_code == 400 and "current state is: DISABLED" in error(response)["message"]
    assert kms.call("POST", f"{key['name']}:updatePrimaryVersion", {"cryptoKeyVersionId": "9"}).status_code == 404


def test_asymmetric_keys_have_no_primary(kms: Kms) -> None:
    kms.create_key(purpose="ASYMMETRIC_SIGN", algorithm="EC_SIGN_P256_SHA256")
    kms.imported("k", kms.create_job(), "EC_SIGN_P256_SHA256", pkcs8(ec_key()))
    response = kms.call("POST", f"{kms.ring}/cryptoKeys/k:updatePrimaryVersion", {"cryptoKeyVersionId": "1"})
    assert response.status_code == 400 and error(response)["status"] == "FAILED_PRECONDITION"
    assert "primary" not in kms.ok("GET", f"{kms.ring}/cryptoKeys/k")


def test_public_key_needs_an_enabled_asymmetric_version(kms: Kms) -> None:
    kms.create_key()
    kms.create_key("ec", purpose="ASYMMETRIC_SIGN", algorithm="EC_SIGN_P256_SHA256")
    job = kms.create_job()
    symmetric = kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert kms.call("GET", f"{symmetric['name']}/publicKey").status_code == 400
    asymmetric = kms.imported("ec", job, "EC_SIGN_P256_SHA256", pkcs8(ec_key()))
    kms.ok("PATCH", asymmetric["name"], {"state": "DISABLED"}, updateMask="state")
    response = kms.call("GET", f"{asymmetric['name']}/publicKey")
    assert response.status_code == 400 and "current state is: DISABLED" in error(response)["message"]


# -- paging and filtering ---------------------------------------------------------------


def test_lists_page_through_next_page_token(fake: GcpKmsFake, kms: Kms) -> None:
    kms.create_key()
    job = kms.create_job()
    for _ in range(5):
        kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    parent = f"{kms.ring}/cryptoKeys/k"
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = kms.ok("GET", f"{parent}/cryptoKeyVersions", pageToken=token)
        pages += 1
        assert len(page["cryptoKeyVersions"]) <= 2 and page["totalSize"] == 5
        seen += [v["name"].rsplit("/", 1)[1] for v in page["cryptoKeyVersions"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert (seen, pages) == (["1", "2", "3", "4", "5"], 3)
    assert len(kms.ok("GET", f"{parent}/cryptoKeyVersions", pageSize=5000)["cryptoKeyVersions"]) == 5


def test_page_tokens_and_filters(lax_kms: Kms) -> None:
    lax_kms.create_key()
    job = lax_kms.create_job()
    versions = [lax_kms.imported("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32)) for _ in range(3)]
    lax_kms.ok("PATCH", versions[1]["name"], {"state": "DISABLED"}, updateMask="state")
    parent = f"{lax_kms.ring}/cryptoKeys/k/cryptoKeyVersions"
    enabled = lax_kms.ok("GET", parent, filter="state=ENABLED", pageSize=10)
    assert [v["name"] for v in enabled["cryptoKeyVersions"]] == [versions[0]["name"], versions[2]["name"]]
    assert "totalSize" not in enabled
    both = lax_kms.ok("GET", parent, filter="state=ENABLED OR state=DISABLED", pageSize=10)
    assert len(both["cryptoKeyVersions"]) == 3
    assert len(lax_kms.ok("GET", parent, filter="NOT state=DISABLED", pageSize=10)["cryptoKeyVersions"]) == 2
    ordered = lax_kms.ok("GET", parent, orderBy="name desc", pageSize=10)
    assert [v["name"] for v in ordered["cryptoKeyVersions"]] == [v["name"] for v in reversed(versions)]
    token = lax_kms.ok("GET", parent)["nextPageToken"]
    assert lax_kms.call("GET", parent, pageToken=token, filter="state=ENABLED").status_code == 400
    assert lax_kms.call("GET", parent, pageToken="made-up").status_code == 400
    assert lax_kms.call("GET", parent, pageSize=-1).status_code == 400
    assert lax_kms.call("GET", parent, filter="state=(ENABLED").status_code == 400


def test_key_and_import_job_lists_page_too(kms: Kms) -> None:
    for key_id in ("a", "b", "c"):
        kms.create_key(key_id)
    first = kms.ok("GET", f"{kms.ring}/cryptoKeys")
    rest = kms.ok("GET", f"{kms.ring}/cryptoKeys", pageToken=first["nextPageToken"])
    assert [k["name"][-1] for k in first["cryptoKeys"] + rest["cryptoKeys"]] == ["a", "b", "c"]
    for job_id in ("j1", "j2", "j3"):
        kms.create_job(job_id, wait=False)
    page = kms.ok("GET", f"{kms.ring}/importJobs")
    assert len(page["importJobs"]) == 2 and page["nextPageToken"]


# -- strictness ------------------------------------------------------------------------


SPEC_VIOLATIONS: dict[str, tuple[str, str, Any, dict[str, Any]]] = {
    "unknown top-level field": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT", "rotation": "1s"}, {}),
    "unknown nested field": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT", "versionTemplate": {"hsm": True}},
                             {}),
    "enum name not in the document": ("POST", "cryptoKeys", {"purpose": "SIGN"}, {}),
    "enum name in lower case": ("POST", "cryptoKeys", {"purpose": "encrypt_decrypt"}, {}),
    "enum number that does not exist": ("POST", "importJobs", {"importMethod": 7, "protectionLevel": 2},
                                        {"importJobId": "j"}),
    "enum number out of range": ("POST", "cryptoKeys", {"purpose": 99}, {}),
    "enum number as a string in JSON": ("POST", "cryptoKeys", {"purpose": "1"}, {}),
    "boolean as a string": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT", "importOnly": "true"}, {}),
    "duration without unit": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT",
                                                     "destroyScheduledDuration": "86400"}, {}),
    "labels not a map": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT", "labels": ["a"]}, {}),
    "unknown query parameter": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, {"keyId": "x"}),
    "missing cryptoKeyId": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, {"cryptoKeyId": None}),
    "empty cryptoKeyId (Python's default)": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, {"cryptoKeyId": ""}),
    "boolean query as 1": ("POST", "cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, {"skipInitialVersionCreation": "1"}),
    "query enum number that does not exist": ("GET", "importJobs/j", None, {"publicKeyFormat": "9"}),
    "query enum name that does not exist": ("GET", "importJobs/j", None, {"publicKeyFormat": "BASE64"}),
    "bad enum-encoding": ("GET", "cryptoKeys", None, {"$alt": "json;enum-encoding=string"}),
    "pageSize not a number": ("GET", "cryptoKeys", None, {"pageSize": "ten"}),
    "unknown field in the import request": ("POST", "cryptoKeys/k/cryptoKeyVersions:import",
                                            {"algorithm": 1, "importJob": "x", "wrappedKey": "AAAA", "kek": "x"}, {}),
    "wrappedKey not base64": ("POST", "cryptoKeys/k/cryptoKeyVersions:import",
                              {"algorithm": 1, "importJob": "x", "wrappedKey": "not base64!"}, {}),
    "echoed path field that differs": ("POST", "cryptoKeys/k/cryptoKeyVersions:import",
                                       {"parent": "projects/p/locations/l/keyRings/r/cryptoKeys/other",
                                        "algorithm": 1, "importJob": "x", "wrappedKey": "AAAA"}, {}),
    "patch without updateMask": ("PATCH", "cryptoKeys/k/cryptoKeyVersions/1", {"state": "DISABLED"}, {}),
    "body on a GET": ("GET", "cryptoKeys/k", {"x": 1}, {}),
    "fields= partial responses": ("GET", "cryptoKeys/k", None, {"fields": "name"}),
}


@pytest.mark.parametrize("case", list(SPEC_VIOLATIONS))
def test_spec_violations_are_rejected_and_recorded(shared: Shared, case: str) -> None:
    method, path, body, query = SPEC_VIOLATIONS[case]
    params = {"cryptoKeyId": "k", **query} if path == "cryptoKeys" and method == "POST" else query
    params = {k: v for k, v in params.items() if v is not None}
    before = shared.fake.snapshot()
    response = shared.kms.call(method, f"{shared.kms.ring}/{path}", body, **params)
    assert response.status_code == 400, response.text
    assert error(response)["status"] == "INVALID_ARGUMENT"
    assert error(response)["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    [failure] = shared.failures
    assert failure.source in ("spec", "unsupported") and failure.service == "kms"
    after = shared.fake.snapshot()
    assert after.crypto_keys.keys() == before.crypto_keys.keys()
    assert after.import_jobs.keys() == before.import_jobs.keys()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "cryptoKeys/k:updatePrimaryVersion"),
    ("DELETE", "importJobs/j"),
    ("GET", "cryptoKeys/k/versions"),
    ("POST", "cryptoKeys/k/cryptoKeyVersions:importKey"),
])
def test_unknown_routes_are_404_and_recorded(lax_fake: GcpKmsFake, lax_kms: Kms, method: str, path: str) -> None:
    response = lax_kms.call(method, f"{lax_kms.ring}/{path}")
    assert response.status_code == 404 and error(response)["status"] == "NOT_FOUND"
    assert [f.source for f in lax_fake.validation_failures] == ["spec"]


def test_form_encoded_and_duplicate_member_bodies(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    url = f"{lax_fake.kms_url}/v1/{lax_kms.ring}/cryptoKeys"
    form = lax_kms.http.post(url, params={"cryptoKeyId": "k"}, data={"purpose": "ENCRYPT_DECRYPT"})
    duplicate = lax_kms.http.post(url, params={"cryptoKeyId": "k"}, data=b'{"purpose": 1, "purpose": 5}',
                                  headers={"Content-Type": "application/json"})
    assert form.status_code == duplicate.status_code == 400
    messages = [f.message for f in lax_fake.validation_failures]
    assert len(messages) == 2 and "Content-Type" in messages[0] and "duplicate" in messages[1]


def test_unmodelled_but_valid_requests_are_marked_unsupported(lax_fake: GcpKmsFake, lax_kms: Kms) -> None:
    response = lax_kms.call("POST", f"{lax_kms.ring}/cryptoKeys/k:encrypt", {"plaintext": "AAAA"})
    assert response.status_code == 501 and error(response)["status"] == "UNIMPLEMENTED"
    response = lax_kms.call("POST", f"{lax_kms.ring}/importJobs", {
        "importMethod": "HPKE_KEM_ML_KEM_768_HKDF_SHA256_AES_256_GCM", "protectionLevel": "HSM"}, importJobId="pq")
    assert response.status_code == 400
    assert [f.source for f in lax_fake.validation_failures] == ["unsupported", "unsupported"]


def test_strict_context_manager_fails_on_violations() -> None:
    with pytest.raises(AssertionError, match="purpose"):
        with FakeCloudKms() as fake:
            Kms(fake).call("POST", f"{fake.key_collection}/cryptoKeys", {"purpose": "NOPE"}, cryptoKeyId="k")


# -- what the Rust client sends: integer enums, default query parameters, echoed path fields ---


def test_rust_style_requests_with_integer_enums(fake: GcpKmsFake) -> None:
    kms = Kms(fake, int_enums=True)
    ring = kms.ring
    key = kms.ok("POST", f"{ring}/cryptoKeys", {"purpose": 1, "versionTemplate": {"protectionLevel": 2, "algorithm": 1},
                                                 "importOnly": True, "destroyScheduledDuration": "86400s"},
                 cryptoKeyId="rust", skipInitialVersionCreation="true", trustedWrappingEnabled="false")
    assert (key["purpose"], key["versionTemplate"]) == (1, {"protectionLevel": 2, "algorithm": 1})
    job = kms.ok("POST", f"{ring}/importJobs", {"importMethod": 4, "protectionLevel": 2}, importJobId="rust")
    assert (job["importMethod"], job["protectionLevel"], job["state"]) == (4, 2, 1)
    deadline = time.monotonic() + 20
    while (job := kms.ok("GET", job["name"], publicKeyFormat="0"))["state"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    named = Kms(fake).ok("GET", job["name"])  # without $alt the same job reads with names
    assert (named["state"], named["importMethod"]) == ("ACTIVE", "RSA_OAEP_4096_SHA256_AES_256")
    material = os.urandom(32)
    wrapped = wrap({**job, "importMethod": "RSA_OAEP_4096_SHA256_AES_256"}, material)
    version = kms.ok("POST", f"{key['name']}/cryptoKeyVersions:import", {
        "parent": key["name"], "algorithm": 1, "importJob": job["name"],
        "wrappedKey": base64.b64encode(wrapped).decode()})  # standard base64 with padding, as serde_with writes
    assert version["state"] == 6 and version["protectionLevel"] == 2
    listed = kms.ok("GET", f"{key['name']}/cryptoKeyVersions", pageSize="0", pageToken="", view="0", filter="",
                    orderBy="")
    assert listed["cryptoKeyVersions"][0]["name"] == version["name"]
    deadline = time.monotonic() + 10
    while kms.ok("GET", version["name"])["state"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    patched = kms.ok("PATCH", version["name"], {"name": version["name"], "state": 2}, updateMask="state")
    assert patched["state"] == 2
    destroyed = kms.ok("POST", f"{version['name']}:destroy", {"name": version["name"]})
    assert destroyed["state"] == 4
    primary = kms.call("POST", f"{key['name']}:updatePrimaryVersion", {"name": key["name"], "cryptoKeyVersionId": "1"})
    assert primary.status_code == 400  # DESTROY_SCHEDULED cannot become primary
    assert fake.versions(key["name"])[0].material == material


# -- permissions -------------------------------------------------------------------------


def _setup_for_denials(shared: Shared) -> dict[str, Any]:
    key_id = shared.key_id()
    shared.kms.create_key(key_id)
    version = shared.kms.imported(key_id, shared.job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    return {"job": shared.job, "version": version, "key": f"{shared.kms.ring}/cryptoKeys/{key_id}", "id": key_id}


def _import_new(kms: Kms, setup: dict[str, Any]) -> requests.Response:
    return kms.import_version(setup["id"], setup["job"], "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))


DENIALS: dict[str, tuple[str, Callable[[Kms, dict[str, Any]], requests.Response], str]] = {
    "cloudkms.cryptoKeys.create": ("ring", lambda k, s: k.call("POST", f"{k.ring}/cryptoKeys", {
        "purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId=s["id"] + "-new"), "ring"),
    "cloudkms.cryptoKeys.get": ("key", lambda k, s: k.call("GET", s["key"]), "key"),
    "cloudkms.cryptoKeys.update": ("key", lambda k, s: k.call("POST", f"{s['key']}:updatePrimaryVersion", {
        "cryptoKeyVersionId": "1"}), "key"),
    "cloudkms.importJobs.create": ("ring", lambda k, s: k.call("POST", f"{k.ring}/importJobs", {
        "importMethod": "RSA_OAEP_3072_SHA256_AES_256", "protectionLevel": "HSM"}, importJobId=s["id"]), "ring"),
    "cloudkms.importJobs.get": ("job", lambda k, s: k.call("GET", s["job"]["name"]), "job"),
    "cloudkms.importJobs.useToImport": ("job", lambda k, s: _import_new(k, s), "job"),
    "cloudkms.cryptoKeyVersions.create": ("key", lambda k, s: _import_new(k, s), "key"),
    "cloudkms.cryptoKeyVersions.list": ("key", lambda k, s: k.call("GET", f"{s['key']}/cryptoKeyVersions"), "key"),
    "cloudkms.cryptoKeyVersions.get": ("version", lambda k, s: k.call("GET", s["version"]["name"]), "version"),
    "cloudkms.cryptoKeyVersions.update": ("version", lambda k, s: k.call("PATCH", s["version"]["name"], {
        "state": "DISABLED"}, updateMask="state"), "version"),
    "cloudkms.cryptoKeyVersions.destroy": ("version", lambda k, s: k.call(
        "POST", f"{s['version']['name']}:destroy", {}), "version"),
}


@pytest.mark.parametrize("permission", list(DENIALS))
def test_denied_permissions_answer_403_naming_them(shared: Shared, permission: str) -> None:
    _, request, resource_kind = DENIALS[permission]
    fake, kms = shared.fake, shared.kms
    setup = _setup_for_denials(shared)
    before = fake.snapshot()
    fake.deny(permission)
    response = request(kms, setup)
    assert response.status_code == 403
    body = error(response)
    resource = {"ring": kms.ring, "key": setup["key"], "job": setup["job"]["name"],
                "version": setup["version"]["name"]}[resource_kind]
    assert body["status"] == "PERMISSION_DENIED"
    assert body["message"] == f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    assert body["details"][0]["metadata"] == {"permission": permission, "resource": resource}
    after = fake.snapshot()
    assert after.crypto_keys.keys() == before.crypto_keys.keys()
    assert after.import_jobs.keys() == before.import_jobs.keys()
    assert [v.state for v in after.crypto_keys[setup["key"]].versions] == ["ENABLED"]
    assert shared.failures == []  # a denial is behaviour under test, not a client error
    fake.allow(permission)
    assert request(kms, setup).status_code == 200


def test_every_modelled_method_has_a_permission() -> None:
    modelled = {m.name.removeprefix("projects.locations.") for m in load().methods} & set(PERMISSIONS)
    assert modelled == set(PERMISSIONS)


def test_unknown_permission_names_are_refused(fake: GcpKmsFake) -> None:
    with pytest.raises(ValueError, match="unknown permissions"):
        fake.deny("cloudkms.cryptokeys.create")


# -- fault injection ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status", "name"), [
    ("429", 429, "RESOURCE_EXHAUSTED"), ("500", 500, "INTERNAL"), ("503", 503, "UNAVAILABLE"),
    ("504", 504, "DEADLINE_EXCEEDED"),
])
def test_status_faults_then_success(fake: GcpKmsFake, kms: Kms, kind: str, status: int, name: str) -> None:
    fake.inject("POST", r"/cryptoKeys$", kind)
    response = kms.call("POST", f"{kms.ring}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId="k")
    assert response.status_code == status and error(response)["status"] == name
    assert fake.crypto_keys() == []
    kms.create_key()
    assert [r.status for r in fake.requests] == [status, 200]


def test_drop_does_nothing_but_lost_acts(fake: GcpKmsFake, kms: Kms) -> None:
    fake.inject("POST", r"/cryptoKeys$", "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        kms.create_key()
    assert fake.crypto_keys() == []
    fake.inject("POST", r"/cryptoKeys$", "lost")
    with pytest.raises(requests.exceptions.ConnectionError):
        kms.create_key()
    assert fake.crypto_keys() == [f"{kms.ring}/cryptoKeys/k"]  # created, though the client never heard
    retry = kms.call("POST", f"{kms.ring}/cryptoKeys", {"purpose": "ENCRYPT_DECRYPT"}, cryptoKeyId="k")
    assert retry.status_code == 409
    records = [(r.status, r.operation) for r in fake.requests]
    assert records == [(None, None), (None, "keyRings.cryptoKeys.create"), (409, "keyRings.cryptoKeys.create")]


def test_a_lost_import_is_not_idempotent(fake: GcpKmsFake, kms: Kms) -> None:
    """Why a provider must list versions before retrying an import whose answer it lost."""
    kms.create_key()
    job = kms.create_job()
    fake.inject("POST", r":import$", "lost")
    with pytest.raises(requests.exceptions.ConnectionError):
        kms.import_version("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert kms.import_version("k", job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32)).status_code == 200
    assert [v.id for v in fake.versions(f"{kms.ring}/cryptoKeys/k")] == ["1", "2"]


def test_delay_and_faults_on_the_token_endpoint(fake: GcpKmsFake) -> None:
    info = key_file(fake)
    fake.inject("POST", "^/token$", "503")
    assert jwt_grant(fake, sign_jwt(info, grant_claims(info))).status_code == 503
    fake.inject("*", "/keyRings/", "delay:0.4")
    started = time.monotonic()
    assert Kms(fake).call("GET", fake.key_collection).status_code == 200
    assert time.monotonic() - started >= 0.4


def test_unknown_fault_kind_is_refused(fake: GcpKmsFake) -> None:
    with pytest.raises(ValueError):
        fake.inject("GET", ".*", "418")


def test_a_crash_in_the_fake_is_a_google_shaped_500(lax_fake: GcpKmsFake, lax_kms: Kms,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_: Any) -> dict[str, Any]:
        raise RuntimeError("bug")
    monkeypatch.setitem(lax_fake._kms._handlers, "keyRings.get", boom)
    response = lax_kms.call("GET", lax_kms.ring)
    assert response.status_code == 500 and error(response)["status"] == "INTERNAL"
    assert [f.source for f in lax_fake.validation_failures] == ["crash"]


# -- fidelity: Google's official client against the fake ---------------------------------------


@pytest.fixture
def official(fake: GcpKmsFake, monkeypatch: pytest.MonkeyPatch) -> Any:
    """KeyManagementServiceClient over REST, trusting the fake's CA through the environment."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import kms_v1
    from google.oauth2 import service_account

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_pem_path)
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        fake.service_account_file)
    return kms_v1.KeyManagementServiceClient(credentials=credentials, transport="rest",
                                             client_options=ClientOptions(api_endpoint=fake.kms_url))


def test_official_client_full_import_flow(fake: GcpKmsFake, official: Any) -> None:
    from google.api_core import exceptions
    from google.cloud import kms_v1

    ring = fake.key_collection
    Algorithm = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm
    State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
    assert official.get_key_ring(name=ring).name == ring
    key = official.create_crypto_key(request={
        "parent": ring, "crypto_key_id": "official", "skip_initial_version_creation": True,
        "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN, "import_only": True,
                       "version_template": {"protection_level": kms_v1.ProtectionLevel.HSM,
                                            "algorithm": Algorithm.EC_SIGN_P256_SHA256},
                       "destroy_scheduled_duration": {"seconds": 86400}}})
    assert key.import_only and key.destroy_scheduled_duration.total_seconds() == 86400
    with pytest.raises(exceptions.Conflict):  # REST errors map by HTTP status: ALREADY_EXISTS is a 409
        symmetric = {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT}
        official.create_crypto_key(request={"parent": ring, "crypto_key_id": "official", "crypto_key": symmetric})
    job = official.create_import_job(request={"parent": ring, "import_job_id": "official", "import_job": {
        "import_method": kms_v1.ImportJob.ImportMethod.RSA_OAEP_3072_SHA1_AES_256,
        "protection_level": kms_v1.ProtectionLevel.HSM}})
    while job.state != kms_v1.ImportJob.ImportJobState.ACTIVE:
        time.sleep(0.02)
        job = official.get_import_job(name=job.name)
    wrapped = wrap({"importMethod": job.import_method.name, "publicKey": {"pem": job.public_key.pem}}, pkcs8(ec_key()))
    versions = []
    for _ in range(3):
        version = official.import_crypto_key_version(request={
            "parent": key.name, "algorithm": Algorithm.EC_SIGN_P256_SHA256, "import_job": job.name,
            "wrapped_key": wrapped})
        assert version.state == State.PENDING_IMPORT
        versions.append(version.name)
    for name in versions:
        while (version := official.get_crypto_key_version(name=name)).state == State.PENDING_IMPORT:
            time.sleep(0.02)
        assert version.state == State.ENABLED and version.import_job == job.name
    assert official.get_public_key(name=versions[0]).pem == spki_pem(ec_key())
    version.state = State.DISABLED
    assert official.update_crypto_key_version(crypto_key_version=version,
                                              update_mask={"paths": ["state"]}).state == State.DISABLED
    version.state = State.ENABLED
    assert official.update_crypto_key_version(crypto_key_version=version,
                                              update_mask={"paths": ["state"]}).state == State.ENABLED
    destroyed = official.destroy_crypto_key_version(name=versions[0])
    assert destroyed.state == State.DESTROY_SCHEDULED and destroyed.destroy_time
    assert official.restore_crypto_key_version(name=versions[0]).state == State.DISABLED
    listed = list(official.list_crypto_key_versions(parent=key.name))  # the pager follows nextPageToken
    assert [v.name for v in listed] == versions
    assert [v.state for v in listed] == [State.DISABLED, State.ENABLED, State.ENABLED]
    assert len(list(official.list_import_jobs(parent=ring))) == 1
    with pytest.raises(exceptions.NotFound):
        official.get_crypto_key(name=f"{ring}/cryptoKeys/absent")
    list_pages = [r for r in fake.requests if r.operation == "keyRings.cryptoKeys.cryptoKeyVersions.list"]
    assert len(list_pages) == 2 and "pageToken" in list_pages[1].query
    assert all(r.query.get("$alt") == ["json;enum-encoding=int"] for r in fake.requests)
    assert {p.mode for p in fake.principals} == {"self-signed-jwt"}
    assert [v.material for v in fake.versions(key.name)][1:] == [pkcs8(ec_key())] * 2


def test_official_client_symmetric_flow_and_errors(fake: GcpKmsFake, official: Any) -> None:
    from google.api_core import exceptions
    from google.cloud import kms_v1

    ring = fake.key_collection
    key = official.create_crypto_key(request={
        "parent": ring, "crypto_key_id": "aes", "skip_initial_version_creation": True,
        "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT, "import_only": True,
                       "version_template": {"protection_level": kms_v1.ProtectionLevel.SOFTWARE}}})
    job = official.create_import_job(request={"parent": ring, "import_job_id": "aes", "import_job": {
        "import_method": kms_v1.ImportJob.ImportMethod.RSA_OAEP_3072_SHA256,
        "protection_level": kms_v1.ProtectionLevel.SOFTWARE}})
    while job.state != kms_v1.ImportJob.ImportJobState.ACTIVE:
        time.sleep(0.02)
        job = official.get_import_job(name=job.name)
    material = os.urandom(32)
    wrapped = wrap({"importMethod": job.import_method.name, "publicKey": {"pem": job.public_key.pem}}, material)
    version = official.import_crypto_key_version(request={
        "parent": key.name, "algorithm": kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
        "import_job": job.name, "wrapped_key": wrapped})
    enabled = kms_v1.CryptoKeyVersion.CryptoKeyVersionState.ENABLED
    while official.get_crypto_key_version(name=version.name).state != enabled:
        time.sleep(0.02)
    updated = official.update_crypto_key_primary_version(name=key.name, crypto_key_version_id="1")
    assert updated.primary.name == version.name
    assert fake.versions(key.name)[0].material == material
    fake.deny("cloudkms.cryptoKeyVersions.destroy")
    with pytest.raises(exceptions.Forbidden) as denied:
        official.destroy_crypto_key_version(name=version.name)
    assert denied.value.reason == "IAM_PERMISSION_DENIED"
    assert "cloudkms.cryptoKeyVersions.destroy" in denied.value.message
    with pytest.raises(exceptions.BadRequest) as precondition:  # FAILED_PRECONDITION is a 400 too
        official.restore_crypto_key_version(name=version.name)
    assert "not scheduled for destruction" in precondition.value.message


def test_official_client_through_token_uri(fake: GcpKmsFake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without jwt access the same client gets an access token from token_uri first."""
    from google.cloud import kms_v1
    from google.cloud.kms_v1.services.key_management_service.transports.rest import (
        KeyManagementServiceRestTransport,
    )
    from google.oauth2 import service_account

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_pem_path)
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        fake.service_account_file, scopes=[CLOUD_PLATFORM])
    transport = KeyManagementServiceRestTransport(credentials=credentials, host=fake.kms_url,
                                                  always_use_jwt_access=False)
    client = kms_v1.KeyManagementServiceClient(transport=transport)
    assert client.get_key_ring(name=fake.key_collection).name == fake.key_collection
    assert [r.service for r in fake.requests] == ["oauth2", "kms"]
    assert [p.mode for p in fake.principals] == ["access-token"]
