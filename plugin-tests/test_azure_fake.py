"""Proves the Azure Key Vault fake is faithful and strict.

The client side here is deliberately independent of the fake's code: plain
`requests` for HTTP and `cryptography` for building and wrapping keys, as
key-transfer.md §3 describes. If these pass, a plugin test that finds the
right private key in the fake has shown the plugin's import is correct.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from fakes import AzureKeyVaultFake, FakeKeyVault
from fakes.azure_keyvault import SPEC_PATH
from fakes.swagger import SwaggerSpec

API = "7.6"
SCOPE = "https://vault.azure.net/.default"
CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


# -- independent client helpers ---------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def session(fake: AzureKeyVaultFake) -> requests.Session:
    """A session that trusts only the fake's CA (and ignores REQUESTS_CA_BUNDLE)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = fake.ca_pem_path
    return s


def token_request(fake: AzureKeyVaultFake, tenant: str | None = None, **overrides: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "scope": SCOPE,
        **overrides,
    }
    url = f"{fake.authority_url}/{tenant or fake.tenant_id}/oauth2/v2.0/token"
    return session(fake).post(url, data=form)


class Vault:
    """Minimal Key Vault REST client: bearer token from the fake's Entra ID."""

    def __init__(self, fake: AzureKeyVaultFake) -> None:
        self.fake = fake
        self.http = session(fake)
        token = token_request(fake)
        assert token.status_code == 200, token.text
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def call(self, method: str, path: str, body: Any = None, api_version: str | None = API,
             **query: Any) -> requests.Response:
        params = {"api-version": api_version, **query} if api_version else query
        return self.http.request(method, self.fake.vault_url + path, params=params, json=body)

    def create_kek(self, name: str = "kek", size: int = 2048) -> dict[str, Any]:
        response = self.call("POST", f"/keys/{name}/create",
                             {"kty": "RSA-HSM", "key_size": size, "key_ops": ["import"]})
        assert response.status_code == 200, response.text
        bundle: dict[str, Any] = response.json()
        return bundle


def kek_public_key(bundle: dict[str, Any]) -> rsa.RSAPublicKey:
    key = bundle["key"]
    n, e = (int.from_bytes(b64url_decode(key[m]), "big") for m in ("n", "e"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def byok_blob(kek: dict[str, Any], plaintext: bytes, *, oaep_hash: hashes.HashAlgorithm | None = None,
              **overrides: Any) -> str:
    """key-transfer.md §3.3: OAEP-SHA1(AES-256 key) || KWP(plaintext) in the .byok JSON."""
    aes_key = os.urandom(32)
    digest = oaep_hash or hashes.SHA1()
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    ciphertext = kek_public_key(kek).encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, plaintext)
    blob = {
        "schema_version": "1.0.0",
        "header": {"kid": kek["key"]["kid"], "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": b64url(ciphertext),
        "generator": "test_azure_fake",
        **overrides,
    }
    return b64url(json.dumps(blob).encode())


def byok_body(kty: str, key_hsm: str, **key: Any) -> dict[str, Any]:
    return {"key": {"kty": kty, "key_ops": key.pop("key_ops", ["sign", "verify"]), "key_hsm": key_hsm, **key},
            "attributes": {"enabled": True}}


def rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    n = key.private_numbers()
    return {"kty": "RSA", "n": uint(n.public_numbers.n), "e": uint(n.public_numbers.e), "d": uint(n.d),
            "p": uint(n.p), "q": uint(n.q), "dp": uint(n.dmp1), "dq": uint(n.dmq1), "qi": uint(n.iqmp)}


def ec_jwk(key: ec.EllipticCurvePrivateKey, crv: str) -> dict[str, str]:
    size = (key.curve.key_size + 7) // 8
    n = key.private_numbers()
    return {"kty": "EC", "crv": crv, "x": b64url(n.public_numbers.x.to_bytes(size, "big")),
            "y": b64url(n.public_numbers.y.to_bytes(size, "big")), "d": b64url(n.private_value.to_bytes(size, "big"))}


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[AzureKeyVaultFake]:
    """A fake that fails the test if any request broke the spec."""
    with FakeKeyVault() as started:
        yield started


@pytest.fixture
def lax_fake() -> Iterator[AzureKeyVaultFake]:
    """For tests that send bad requests on purpose and inspect the record."""
    with FakeKeyVault(allow_violations=True) as started:
        yield started


@pytest.fixture
def vault(fake: AzureKeyVaultFake) -> Vault:
    return Vault(fake)


@pytest.fixture
def lax_vault(lax_fake: AzureKeyVaultFake) -> Vault:
    return Vault(lax_fake)


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Keys to import are made once per run: RSA-4096 generation is slow."""
    return rsa.generate_private_key(65537, bits)


@functools.cache
def ec_key(crv: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVES[crv])


def target_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    return rsa_key(int(kind[4:])) if kind.startswith("RSA-") else ec_key(kind)


# -- TLS and authentication --------------------------------------------------


def test_tls_is_verified_against_the_fake_ca(fake: AzureKeyVaultFake) -> None:
    port = fake.vault_url.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost"):
        response = session(fake).get(f"https://{host}:{port}/keys/k/", params={"api-version": API})
        assert response.status_code == 401
    strict = requests.Session()
    strict.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        strict.get(fake.vault_url + "/keys/k/")


def test_client_credentials_token(fake: AzureKeyVaultFake) -> None:
    response = token_request(fake)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["access_token"]


@pytest.mark.parametrize(("override", "status", "error", "code"), [
    ({"client_secret": "wrong"}, 401, "invalid_client", 7000215),
    ({"client_id": "00000000-0000-0000-0000-000000000000"}, 400, "unauthorized_client", 700016),
    ({"tenant": "other-tenant"}, 400, "invalid_request", 90002),
])
def test_token_endpoint_rejects_wrong_credentials(
    fake: AzureKeyVaultFake, override: dict[str, str], status: int, error: str, code: int
) -> None:
    response = token_request(fake, **override)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    # Wrong credentials are behaviour under test, not protocol misuse.
    assert fake.validation_failures == []


@pytest.mark.parametrize(("override", "error"), [
    ({"scope": "https://vault.azure.net"}, "invalid_scope"),
    ({"grant_type": "password"}, "unsupported_grant_type"),
])
def test_token_endpoint_records_protocol_misuse(
    lax_fake: AzureKeyVaultFake, override: dict[str, str], error: str
) -> None:
    response = token_request(lax_fake, **override)
    assert response.status_code == 400
    assert response.json()["error"] == error
    [failure] = lax_fake.validation_failures
    assert (failure.service, failure.source) == ("login", "protocol")


def test_managed_identity_token_works_against_the_vault(fake: AzureKeyVaultFake) -> None:
    response = requests.get(
        fake.imds_url + "/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": "https://vault.azure.net"},
        headers={"Metadata": "true"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["resource"] == "https://vault.azure.net"
    assert body["client_id"] == fake.msi_client_id and body["expires_in"].isdigit()
    http = session(fake)
    http.headers["Authorization"] = f"Bearer {body['access_token']}"
    response = http.post(fake.vault_url + "/keys/msi/create", params={"api-version": API}, json={"kty": "EC"})
    assert response.status_code == 200, response.text


def test_imds_requires_metadata_header(lax_fake: AzureKeyVaultFake) -> None:
    response = requests.get(
        lax_fake.imds_url + "/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": "https://vault.azure.net"},
    )
    assert response.status_code == 400
    assert [f.service for f in lax_fake.validation_failures] == ["imds"]


def test_imds_can_be_disabled() -> None:
    with FakeKeyVault(managed_identity=False) as fake:
        response = requests.get(
            fake.imds_url + "/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", "resource": "https://vault.azure.net"},
            headers={"Metadata": "true"},
        )
        assert response.status_code == 400
        assert response.json()["error_description"] == "Identity not found"


def test_missing_token_gets_the_bearer_challenge(fake: AzureKeyVaultFake) -> None:
    response = session(fake).post(fake.vault_url + "/keys/k/create", params={"api-version": API})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{fake.authority_url}/{fake.tenant_id}", resource="https://vault.azure.net"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"
    # The SDK's body-less challenge probe must not count as a spec violation.
    assert fake.validation_failures == []


def test_made_up_and_expired_tokens_are_rejected(fake: AzureKeyVaultFake, vault: Vault) -> None:
    assert vault.call("POST", "/keys/k/create", {"kty": "EC"}).status_code == 200
    fake.expire_tokens()
    assert vault.call("GET", "/keys/k/").status_code == 401
    vault.http.headers["Authorization"] = "Bearer made-up"
    assert vault.call("GET", "/keys/k/").status_code == 401


# -- KEK and BYOK import -----------------------------------------------------


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_create_kek(fake: AzureKeyVaultFake, vault: Vault, size: int) -> None:
    bundle = vault.create_kek(size=size)
    key = bundle["key"]
    assert re.fullmatch(re.escape(fake.vault_url) + r"/keys/kek/[0-9a-f]{32}", key["kid"])
    assert (key["kty"], key["key_ops"]) == ("RSA-HSM", ["import"])
    stored = fake.current_version("kek")
    assert stored.version == key["kid"].rsplit("/", 1)[1]
    assert stored.private_key.public_key().public_numbers() == kek_public_key(bundle).public_numbers()
    assert stored.private_key.key_size == size
    assert bundle["attributes"]["enabled"] is True
    assert bundle["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"
    assert fake.kek_count_alive() == 1


@pytest.mark.parametrize("kind", ["RSA-2048", "RSA-3072", "RSA-4096", "P-256", "P-384", "P-521"])
def test_byok_import_unwraps_the_exact_private_key(fake: AzureKeyVaultFake, vault: Vault, kind: str) -> None:
    original = target_key(kind)
    kek = vault.create_kek(size=4096 if kind == "RSA-4096" else 2048)
    if kind.startswith("RSA-"):
        body = byok_body("RSA-HSM", byok_blob(kek, pkcs8(original)), key_ops=["encrypt", "decrypt"])
    else:
        body = byok_body("EC-HSM", byok_blob(kek, pkcs8(original)), crv=kind)
    response = vault.call("PUT", "/keys/target", body)
    assert response.status_code == 200, response.text
    [stored] = fake.versions("target")
    assert stored.private_key.private_numbers() == original.private_numbers()
    assert stored.kty == body["key"]["kty"] and stored.key_ops == body["key"]["key_ops"]
    assert stored.origin == "byok" and stored.enabled
    assert response.json()["key"]["kid"].endswith(f"/keys/target/{stored.version}")
    expected_pem = original.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert stored.public_pem() == expected_pem
    assert vault.call("DELETE", "/keys/kek").status_code == 200
    assert fake.kek_count_alive() == 0


def test_each_import_adds_a_version(fake: AzureKeyVaultFake, vault: Vault) -> None:
    kek = vault.create_kek()
    first, second = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    for key in (first, second):
        body = byok_body("RSA-HSM", byok_blob(kek, pkcs8(key)), key_ops=["sign", "verify"])
        assert vault.call("PUT", "/keys/rotating", body).status_code == 200
    versions = fake.versions("rotating")
    assert [v.private_key.private_numbers() for v in versions] == [first.private_numbers(), second.private_numbers()]
    assert fake.current_version("rotating").version == versions[1].version
    latest = vault.call("GET", "/keys/rotating/").json()
    assert latest["key"]["kid"].endswith(versions[1].version)
    older = vault.call("GET", f"/keys/rotating/{versions[0].version}").json()
    assert older["key"]["kid"].endswith(versions[0].version)


def _traditional_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


BAD_BYOK = {
    "PKCS#1 instead of PKCS#8": lambda kek, key: byok_body("RSA-HSM", byok_blob(kek, _traditional_der(key))),
    "OAEP-SHA256 instead of SHA-1": lambda kek, key: byok_body(
        "RSA-HSM", byok_blob(kek, pkcs8(key), oaep_hash=hashes.SHA256())),
    "RSA material declared EC-HSM": lambda kek, key: byok_body("EC-HSM", byok_blob(kek, pkcs8(key)), crv="P-256"),
    "unknown KEK kid": lambda kek, key: byok_body("RSA-HSM", byok_blob(
        kek, pkcs8(key), header={"kid": kek["key"]["kid"].rsplit("/", 1)[0] + "/" + "0" * 32, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"})),
    "wrong enc": lambda kek, key: byok_body("RSA-HSM", byok_blob(
        kek, pkcs8(key), header={"kid": kek["key"]["kid"], "alg": "dir", "enc": "CKM_AES_KEY_WRAP"})),
    "private members beside key_hsm": lambda kek, key: byok_body(
        "RSA-HSM", byok_blob(kek, pkcs8(key)), d=rsa_jwk(key)["d"]),
    "key_hsm on a software kty": lambda kek, key: byok_body("RSA", byok_blob(kek, pkcs8(key))),
    "Hsm false with key_hsm": lambda kek, key: {**byok_body("RSA-HSM", byok_blob(kek, pkcs8(key))), "Hsm": False},
    "mismatched n": lambda kek, key: byok_body("RSA-HSM", byok_blob(kek, pkcs8(key)), n=kek["key"]["n"]),
}


@pytest.mark.parametrize("case", list(BAD_BYOK))
def test_byok_rejects_bad_transfers(lax_fake: AzureKeyVaultFake, lax_vault: Vault, case: str) -> None:
    kek = lax_vault.create_kek()
    response = lax_vault.call("PUT", "/keys/target", BAD_BYOK[case](kek, rsa_key()))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BadParameter"
    [failure] = lax_fake.validation_failures
    assert (failure.source, failure.operation) == ("service", "ImportKey")
    assert "target" not in lax_fake.keys()


def test_byok_rejects_tampered_ciphertext(lax_fake: AzureKeyVaultFake, lax_vault: Vault) -> None:
    kek = lax_vault.create_kek()
    blob = json.loads(b64url_decode(byok_blob(kek, pkcs8(ec_key()))))
    ciphertext = bytearray(b64url_decode(blob["ciphertext"]))
    ciphertext[-1] ^= 1
    blob["ciphertext"] = b64url(bytes(ciphertext))
    response = lax_vault.call("PUT", "/keys/target", byok_body("EC-HSM", b64url(json.dumps(blob).encode()), crv="P-256"))
    assert response.status_code == 400
    assert "unwrap" in response.json()["error"]["message"]


def test_byok_needs_a_kek_with_only_the_import_op(lax_fake: AzureKeyVaultFake, lax_vault: Vault) -> None:
    not_a_kek = lax_vault.call("POST", "/keys/plain/create", {"kty": "RSA-HSM", "key_ops": ["wrapKey", "unwrapKey"]})
    response = lax_vault.call("PUT", "/keys/target", byok_body("RSA-HSM", byok_blob(not_a_kek.json(), pkcs8(rsa_key()))))
    assert response.status_code == 400
    assert "not a key exchange key" in response.json()["error"]["message"]


# -- software import -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["RSA-2048", "P-256", "P-384", "P-521"])
def test_software_jwk_import(fake: AzureKeyVaultFake, vault: Vault, kind: str) -> None:
    original = target_key(kind)
    if isinstance(original, rsa.RSAPrivateKey):
        jwk = rsa_jwk(original)
    else:
        jwk = ec_jwk(original, kind)
    response = vault.call("PUT", "/keys/soft", {"Hsm": False, "key": jwk})
    assert response.status_code == 200, response.text
    stored = fake.current_version("soft")
    assert stored.private_key.private_numbers() == original.private_numbers()
    assert stored.kty == jwk["kty"] and stored.origin == "software"
    returned = response.json()["key"]
    assert "d" not in returned and returned["kty"] == jwk["kty"]


def test_software_import_with_hsm_true_stores_an_hsm_key(fake: AzureKeyVaultFake, vault: Vault) -> None:
    response = vault.call("PUT", "/keys/soft", {"Hsm": True, "key": rsa_jwk(rsa_key())})
    assert response.json()["key"]["kty"] == "RSA-HSM"
    assert fake.current_version("soft").kty == "RSA-HSM"


def _swap_q(jwk: dict[str, str]) -> dict[str, str]:
    other = rsa_jwk(rsa.generate_private_key(65537, 2048))
    return {**jwk, "q": other["q"]}


BAD_JWK = {
    "n != p*q": lambda: _swap_q(rsa_jwk(rsa_key())),
    "missing dp": lambda: {k: v for k, v in rsa_jwk(rsa_key()).items() if k != "dp"},
    "n with a leading zero octet": lambda: {
        **rsa_jwk(rsa_key()),
        "n": b64url(b"\x00" + b64url_decode(rsa_jwk(rsa_key())["n"]))},
    "short EC coordinate": lambda: {**ec_jwk(ec_key(), "P-256"), "x": b64url(b"\x01" * 31)},
    "public point of another key": lambda: {
        **ec_jwk(ec_key(), "P-256"), "y": ec_jwk(ec.generate_private_key(ec.SECP256R1()), "P-256")["y"]},
    "RSA-1024": lambda: rsa_jwk(rsa.generate_private_key(65537, 1024)),
}


@pytest.mark.parametrize("case", list(BAD_JWK))
def test_software_import_rejects_inconsistent_jwk(lax_fake: AzureKeyVaultFake, lax_vault: Vault, case: str) -> None:
    response = lax_vault.call("PUT", "/keys/soft", {"Hsm": False, "key": BAD_JWK[case]()})
    assert response.status_code == 400, response.text
    assert [f.source for f in lax_fake.validation_failures] == ["service"]


# -- update, delete, versions ------------------------------------------------


def test_patch_enabled_false_then_true(fake: AzureKeyVaultFake, vault: Vault) -> None:
    vault.call("POST", "/keys/k/create", {"kty": "RSA", "key_size": 2048})
    version = fake.current_version("k").version
    off = vault.call("PATCH", f"/keys/k/{version}", {"attributes": {"enabled": False}})
    assert off.status_code == 200 and off.json()["attributes"]["enabled"] is False
    assert fake.versions("k")[0].enabled is False
    # Key Vault shows nothing of a disabled version, neither by its id nor
    # as the current version; listing still shows it, disabled.
    for path in (f"/keys/k/{version}", "/keys/k/"):
        hidden = vault.call("GET", path)
        assert hidden.status_code == 403, path
        assert hidden.json()["error"] == {
            "code": "Forbidden", "message": "Operation get is not allowed on a disabled key.",
            "innererror": {"code": "KeyDisabled"},
        }
    listed = vault.call("GET", "/keys/k/versions").json()["value"]
    assert [item["attributes"]["enabled"] for item in listed] == [False]
    on = vault.call("PATCH", f"/keys/k/{version}", {"attributes": {"enabled": True}})
    assert on.json()["attributes"]["enabled"] is True
    assert fake.versions("k")[0].enabled is True
    assert vault.call("GET", f"/keys/k/{version}").json()["attributes"]["enabled"] is True


def test_patch_unknown_version_is_404(fake: AzureKeyVaultFake, vault: Vault) -> None:
    vault.call("POST", "/keys/k/create", {"kty": "EC"})
    response = vault.call("PATCH", f"/keys/k/{'0' * 32}", {"attributes": {"enabled": False}})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "KeyNotFound"


def test_delete_is_a_soft_delete(fake: AzureKeyVaultFake, vault: Vault) -> None:
    vault.call("POST", "/keys/k/create", {"kty": "EC", "crv": "P-384"})
    deleted = vault.call("DELETE", "/keys/k")
    assert deleted.status_code == 200
    body = deleted.json()
    assert body["recoveryId"] == f"{fake.vault_url}/deletedkeys/k"
    assert body["scheduledPurgeDate"] > body["deletedDate"]
    assert fake.keys() == [] and fake.deleted_keys() == ["k"]
    assert len(fake.versions("k")) == 1  # still inspectable while soft-deleted
    assert vault.call("GET", "/keys/k/").status_code == 404
    conflict = vault.call("POST", "/keys/k/create", {"kty": "EC"})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "Conflict"
    assert vault.call("GET", "/deletedkeys/k").status_code == 200
    assert vault.call("POST", "/deletedkeys/k/recover").status_code == 200
    assert fake.keys() == ["k"]
    vault.call("DELETE", "/keys/k")
    assert vault.call("DELETE", "/deletedkeys/k").status_code == 204
    assert fake.deleted_keys() == []
    assert vault.call("POST", "/keys/k/create", {"kty": "EC"}).status_code == 200


def test_key_names_are_case_insensitive(fake: AzureKeyVaultFake, vault: Vault) -> None:
    vault.call("POST", "/keys/MixedCase/create", {"kty": "EC"})
    vault.call("POST", "/keys/mixedcase/create", {"kty": "EC"})
    assert fake.keys() == ["MixedCase"] and len(fake.versions("MIXEDCASE")) == 2
    assert "/keys/MixedCase/" in vault.call("GET", "/keys/mixedCASE/").json()["key"]["kid"]
    vault.call("DELETE", "/keys/MIXEDCASE")
    assert vault.call("POST", "/keys/mixedcase/create", {"kty": "EC"}).status_code == 409


def test_list_versions_pages_through_next_link(fake: AzureKeyVaultFake, vault: Vault) -> None:
    for _ in range(3):
        vault.call("POST", "/keys/k/create", {"kty": "EC"})
    first = vault.call("GET", "/keys/k/versions", maxresults=2).json()
    assert len(first["value"]) == 2
    rest = vault.http.get(first["nextLink"]).json()
    kids = [item["kid"].rsplit("/", 1)[1] for item in first["value"] + rest["value"]]
    assert kids == [v.version for v in fake.versions("k")]
    assert "nextLink" not in rest


def test_rotate_makes_a_new_generated_version(fake: AzureKeyVaultFake, vault: Vault) -> None:
    vault.call("POST", "/keys/k/create", {"kty": "RSA-HSM", "key_size": 3072, "key_ops": ["sign"]})
    assert vault.call("POST", "/keys/k/rotate").status_code == 200
    old, new = fake.versions("k")
    assert new.private_key.key_size == 3072 and new.key_ops == ["sign"]
    assert new.private_key.private_numbers() != old.private_key.private_numbers()


# -- strictness --------------------------------------------------------------


SPEC_VIOLATIONS: dict[str, tuple[str, str, Any, dict[str, Any]]] = {
    "unsupported api-version": ("POST", "/keys/k/create", {"kty": "EC"}, {"api_version": "7.5"}),
    "missing api-version": ("POST", "/keys/k/create", {"kty": "EC"}, {"api_version": None}),
    "kty not in enum": ("POST", "/keys/k/create", {"kty": "RSA-2048"}, {}),
    "key_ops item not in enum": ("POST", "/keys/k/create", {"kty": "RSA", "key_ops": ["wrap"]}, {}),
    "crv not in enum": ("POST", "/keys/k/create", {"kty": "EC", "crv": "P-192"}, {}),
    "missing required kty": ("POST", "/keys/k/create", {"key_size": 2048}, {}),
    "missing required key": ("PUT", "/keys/k", {"Hsm": False}, {}),
    "unknown top-level field": ("POST", "/keys/k/create", {"kty": "EC", "exportable": False}, {}),
    "unknown nested field": ("PUT", "/keys/k", {"key": {"kty": "RSA", "alg": "RS256"}}, {}),
    "key_size as a string": ("POST", "/keys/k/create", {"kty": "RSA", "key_size": "2048"}, {}),
    "read-only attribute": ("POST", "/keys/k/create", {"kty": "EC", "attributes": {"created": 1}}, {}),
    "hsm spelled lower-case": ("PUT", "/keys/k", {"hsm": True, "key": {"kty": "RSA"}}, {}),
    "key name outside the pattern": ("POST", "/keys/bad_name/create", {"kty": "EC"}, {}),
    "padded base64url": ("PUT", "/keys/k", {"key": {"kty": "RSA-HSM", "key_hsm": "abc="}}, {}),
    "null instead of omitted": ("POST", "/keys/k/create", {"kty": "EC", "tags": None}, {}),
    "GET without the version segment": ("GET", "/keys/k", None, {}),
    "PATCH without a version": ("PATCH", "/keys/k/", {"attributes": {"enabled": False}}, {}),
    "maxresults above 25": ("GET", "/keys/k/versions", None, {"maxresults": 26}),
    "unknown query parameter": ("GET", "/keys/k/", None, {"expand": "all"}),
    "body on a body-less call": ("POST", "/keys/k/rotate", {"kty": "EC"}, {}),
}


@pytest.mark.parametrize("case", list(SPEC_VIOLATIONS))
def test_spec_violations_are_rejected_and_recorded(lax_fake: AzureKeyVaultFake, lax_vault: Vault, case: str) -> None:
    method, path, body, query = SPEC_VIOLATIONS[case]
    response = lax_vault.call(method, path, body, **query)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BadParameter"
    [failure] = lax_fake.validation_failures
    assert failure.source == "spec" and failure.service == "vault"
    assert (failure.method, failure.path) == (method, path)
    assert lax_fake.keys() == []


def test_form_encoded_body_is_rejected(lax_fake: AzureKeyVaultFake, lax_vault: Vault) -> None:
    response = lax_vault.http.post(lax_fake.vault_url + "/keys/k/create", params={"api-version": API},
                                   data={"kty": "EC"})
    assert response.status_code == 400
    assert "Content-Type" in lax_fake.validation_failures[0].message


@pytest.mark.parametrize(("body", "fragment"), [
    ({"kty": "RSA", "key_size": 1024}, "key_size"),
    ({"kty": "oct-HSM"}, "Managed HSM"),
    ({"kty": "RSA-HSM", "key_ops": ["import", "sign"]}, "import"),
    ({"kty": "RSA", "key_ops": ["import"]}, "import"),
    ({"kty": "EC", "key_ops": ["encrypt"]}, "not valid"),
])
def test_key_vault_rules_are_enforced(lax_fake: AzureKeyVaultFake, lax_vault: Vault, body: dict[str, Any], fragment: str) -> None:
    response = lax_vault.call("POST", "/keys/k/create", body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert [f.source for f in lax_fake.validation_failures] == ["service"]


def test_strict_context_manager_fails_on_violations() -> None:
    with pytest.raises(AssertionError, match="kty"):
        with FakeKeyVault() as fake:
            Vault(fake).call("POST", "/keys/k/create", {"kty": "nope"})


def test_logs_never_hold_secrets(fake: AzureKeyVaultFake, vault: Vault) -> None:
    kek = vault.create_kek()
    key_hsm = byok_blob(kek, pkcs8(ec_key()))
    vault.call("PUT", "/keys/t", byok_body("EC-HSM", key_hsm, crv="P-256"))
    token = vault.http.headers["Authorization"].split()[1]
    logged = repr(fake.requests) + repr(fake.validation_failures)
    for secret in (fake.client_secret, token, key_hsm[:40]):
        assert secret not in logged
    assert [r.operation for r in fake.requests if r.service == "vault"] == ["CreateKey", "ImportKey"]


# -- fault injection ---------------------------------------------------------


def test_429_then_success(fake: AzureKeyVaultFake, vault: Vault) -> None:
    fake.inject("POST", r"^/keys/k/create$", "429")
    throttled = vault.call("POST", "/keys/k/create", {"kty": "EC"})
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["code"] == "Throttled"
    assert fake.keys() == []
    assert vault.call("POST", "/keys/k/create", {"kty": "EC"}).status_code == 200
    statuses = [r.status for r in fake.requests if r.path == "/keys/k/create"]
    assert statuses == [429, 200]


def test_faults_fire_in_order_and_only_on_matches(fake: AzureKeyVaultFake, vault: Vault) -> None:
    fake.inject("PUT", "/keys/", "500", times=2)
    fake.inject("*", "/keys/", "503")
    assert vault.call("POST", "/keys/k/create", {"kty": "EC"}).status_code == 503
    assert vault.call("PUT", "/keys/k", {"key": ec_jwk(ec_key(), "P-256")}).status_code == 500
    assert vault.call("PUT", "/keys/k", {"key": ec_jwk(ec_key(), "P-256")}).status_code == 500
    assert vault.call("PUT", "/keys/k", {"key": ec_jwk(ec_key(), "P-256")}).status_code == 200


def test_delay_and_drop(fake: AzureKeyVaultFake, vault: Vault) -> None:
    fake.inject("POST", "/create$", "delay:0.5")
    started = time.monotonic()
    assert vault.call("POST", "/keys/k/create", {"kty": "EC"}).status_code == 200
    assert time.monotonic() - started >= 0.5
    fake.inject("GET", "/keys/k/$", "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        vault.call("GET", "/keys/k/")
    assert vault.call("GET", "/keys/k/").status_code == 200


def test_token_endpoint_faults(fake: AzureKeyVaultFake) -> None:
    fake.inject("POST", "/oauth2/v2.0/token$", "503")
    assert token_request(fake).status_code == 503
    assert token_request(fake).status_code == 200


def test_unknown_fault_kind_is_refused(fake: AzureKeyVaultFake) -> None:
    with pytest.raises(ValueError):
        fake.inject("GET", ".*", "418")


def test_unmodelled_operations_answer_501_and_are_recorded(lax_fake: AzureKeyVaultFake, lax_vault: Vault) -> None:
    response = lax_vault.call("POST", f"/keys/k/{'0' * 32}/sign", {"alg": "RS256", "value": "AA"})
    assert response.status_code == 501
    [failure] = lax_fake.validation_failures
    assert (failure.source, failure.operation) == ("unsupported", "sign")


def test_duplicate_json_members_are_rejected(lax_fake: AzureKeyVaultFake, lax_vault: Vault) -> None:
    response = lax_vault.http.post(
        lax_fake.vault_url + "/keys/k/create", params={"api-version": API},
        data=b'{"kty": "EC", "kty": "RSA"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "duplicate" in lax_fake.validation_failures[0].message


def test_chunked_request_bodies_are_read(fake: AzureKeyVaultFake, vault: Vault) -> None:
    body = json.dumps({"kty": "EC", "crv": "P-521"}).encode()
    response = vault.http.post(fake.vault_url + "/keys/k/create", params={"api-version": API},
                               data=iter([body[:5], body[5:]]), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    stored = fake.current_version("k").private_key
    assert isinstance(stored, ec.EllipticCurvePrivateKey) and stored.curve.name == "secp521r1"


def test_response_self_check_is_not_vacuous() -> None:
    spec = SwaggerSpec.load(SPEC_PATH)
    get_key = next(op for op in spec.operations if op.operation_id == "GetKey")
    assert spec.validate_response(get_key, 200, {"key": {"kty": "RSA"}, "attributes": {"enabled": True}}) == []
    assert spec.validate_response(get_key, 200, {"key": {"kty": "RSA2"}, "extra": 1}) != []
