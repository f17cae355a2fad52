"""The pkcs11 provider under a real OpenBao server, against a SoftHSM2 token.

The plugin imports every version into the token (the two-step unwrap SoftHSM
needs); after each documented CLI step the token is inspected by independent
PKCS#11 clients in this process and in `pkcs11-tool` (softhsm.py): the objects
of each distribution (label `<key>-<unix seconds>`, one CKA_ID per version),
every attribute the provider must set, a signature made by the token that
verifies with the public key `vault read keymgmt/key/<k>` shows, RSA-OAEP
ciphertext from Vault's public key that the token decrypts, and AES-GCM data
sealed by the token that opens with Vault's key (read through `sys/raw`, not
through the plugin). Versions below min_enabled_version must be refused by the
token itself (CKR_KEY_FUNCTION_NOT_PERMITTED).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pkcs11 import Attribute, KeyType, ObjectClass

import harness
import softhsm
from harness import MOUNT, BaoServer, cli, http, install_plugin, kill_plugins, plugin_pids, read_key, stored_material
from softhsm import SoftHsmToken

KMS = "hsm"
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68

# Every Vault key type, with purposes that exercise each usage attribute.
TYPES = [
    ("aes256-gcm96", "encrypt,decrypt"),
    ("rsa-2048", "sign,verify"),
    ("rsa-3072", "decrypt,encrypt,sign"),
    ("rsa-4096", "sign,verify,wrap,unwrap"),
    ("ecdsa-p256", "sign,verify"),
    ("ecdsa-p384", "sign"),
    ("ecdsa-p521", "sign,verify"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    return SoftHsmToken(tmp_path_factory.mktemp("hsm"), "vault-keys")


@pytest.fixture(scope="module")
def server(tok: SoftHsmToken, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    srv = BaoServer(tmp_path_factory.mktemp("bao-pkcs11"),
                    env={**tok.server_env, "KEYMGMT_LOG_LEVEL": "debug"}, raw_storage=True)
    try:
        install_plugin(srv)
        configure(srv, KMS, tok.label, tok.pin)
        yield srv
    finally:
        srv.stop()
        kill_plugins(srv)


_counter = iter(range(10**6))


@pytest.fixture
def key() -> str:
    return f"p11k{next(_counter)}-{time.monotonic_ns() % 10**6}"


def configure(server: BaoServer, kms: str, label: str, pin: str, *extra: str, check: bool = True) -> Any:
    return cli(server, "write", f"{MOUNT}/kms/{kms}", "provider=pkcs11", f"key_collection={label}",
               f"credentials=pin={pin}", *extra, check=check)


def distribution(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}").stdout)["data"]


def vault_public_key(server: BaoServer, key: str, data: dict[str, Any], version: int) -> Any:
    """The version's public key as `vault read keymgmt/key/<k>` shows it (`data`); versions
    the read hides (below min_enabled_version) from the stored PKCS#8, read through sys/raw."""
    shown = data["versions"].get(str(version))
    if shown is not None:
        return serialization.load_pem_public_key(shown["public_key"].encode())
    return serialization.load_der_private_key(stored_material(server, key, version), password=None).public_key()


def refused(call: Any, *args: Any) -> bool:
    """Whether the token itself refuses the operation (CKR_KEY_FUNCTION_NOT_PERMITTED)."""
    try:
        call(*args)
    except pkcs11.PKCS11Error as e:
        return softhsm.rv_of(e) == CKR_KEY_FUNCTION_NOT_PERMITTED
    return False


def check_token(server: BaoServer, tok: SoftHsmToken, kms: str, key: str, key_type: str, purpose: str,
                *, tool: bool = False) -> dict[str, Any]:
    """The token holds exactly the recorded versions of the distribution, each with the
    attributes the README promises, usable as min_enabled_version says, holding Vault's key;
    with `tool`, pkcs11-tool agrees."""
    record = distribution(server, kms, key)
    label = record["name"]
    key_data = read_key(server, key)
    min_enabled = max(int(key_data["min_enabled_version"]), 1)
    purposes = tuple(purpose.split(","))
    objects = tok.objects(label=label)
    ids = {bytes.fromhex(i) for i in record["versions"].values()}
    assert len(ids) == len(record["versions"]), record
    assert {o.id for o in objects} == ids, [o.describe() for o in objects]
    symmetric = key_type == "aes256-gcm96"
    kind = "aes" if symmetric else ("rsa" if key_type.startswith("rsa") else "ec")
    ck_type = {"aes": KeyType.AES, "rsa": KeyType.RSA, "ec": KeyType.EC}[kind]
    data = os.urandom(48)
    for n, hex_id in record["versions"].items():
        version, id_ = int(n), bytes.fromhex(hex_id)
        enabled = version >= min_enabled
        mine = [o for o in objects if o.id == id_]
        classes = [ObjectClass.SECRET_KEY] if symmetric else [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY]
        assert sorted(int(o.object_class) for o in mine) == sorted(int(c) for c in classes), label
        for obj in mine:
            expected = softhsm.import_template(obj.object_class, ck_type, label, id_,
                                               purposes if enabled else ())
            wrong = {a.name: (obj.get(a), v) for a, v in expected.items() if obj.get(a) != v}
            assert wrong == {}, f"version {version}: {obj.describe()}"
            assert obj.get(Attribute.DERIVE) is False
        if symmetric:
            material = stored_material(server, key, version)
            if enabled:
                nonce, sealed = tok.encrypt_with(label, id_, data)
                assert softhsm.decrypt_gcm(material, nonce, sealed) == data, f"version {version}"
            else:
                assert refused(tok.encrypt_with, label, id_, data), f"version {version} must be disabled"
            continue
        public = vault_public_key(server, key, key_data, version)
        (pub_obj,) = [o for o in mine if o.object_class == ObjectClass.PUBLIC_KEY]
        assert tok.public_key_der(label, id_) == public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), f"version {version}"
        if kind == "ec":
            point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            assert pub_obj[Attribute.EC_POINT] == OctetString(point).dump(), "CKA_EC_POINT is a DER OCTET STRING"
        if "sign" in purposes:
            if enabled:
                softhsm.verify_token_signature(tok, label, id_, public, data)
            else:
                assert refused(softhsm.verify_token_signature, tok, label, id_, public, data)
        if "decrypt" in purposes:
            assert isinstance(public, rsa.RSAPublicKey)
            sealed = public.encrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                      label=None))
            if enabled:
                assert tok.decrypt_with(label, id_, sealed) == data
            else:
                assert refused(tok.decrypt_with, label, id_, sealed)
    if tool:
        # pkcs11-tool, a second independent client, sees the same objects and usage.
        listed = [o for o in tok.tool_objects() if o["label"] == label]
        assert sorted(o["id"] for o in listed) == sorted(o.id.hex() for o in objects), listed
        for o in listed:
            if o["kind"] != "Public Key":
                assert {"sensitive"} <= o["access"] and "extractable" not in o["access"], o
            wanted = {u for u in purposes if softhsm.PURPOSE_ATTRIBUTE[u][0] in (
                ObjectClass.PUBLIC_KEY if o["kind"] == "Public Key" else ObjectClass.PRIVATE_KEY,
            ) or o["kind"] == "Secret Key"}
            if int(min_enabled) <= 1:
                assert o["usage"] == wanted, o
    return record


@pytest.mark.parametrize(("key_type", "purpose"), TYPES)
def test_lifecycle(server: BaoServer, tok: SoftHsmToken, key: str, key_type: str, purpose: str) -> None:
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    # Distribute: both versions, as the documented command.
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", f"purpose={purpose}", "protection=hsm")
    record = check_token(server, tok, KMS, key, key_type, purpose, tool=True)
    assert record["name"].startswith(f"{key}-") and len(record["versions"]) == 2
    first_ids = dict(record["versions"])
    # Distributing again changes nothing (objects are found by label and id).
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", f"purpose={purpose}", "protection=hsm")
    assert check_token(server, tok, KMS, key, key_type, purpose)["versions"] == first_ids

    # Rotate: the new version is imported.
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    record = check_token(server, tok, KMS, key, key_type, purpose)
    assert len(record["versions"]) == 3 and {k: record["versions"][k] for k in first_ids} == first_ids

    # min_enabled_version switches the lower versions' usage off, and back on.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=3")
    check_token(server, tok, KMS, key, key_type, purpose, tool=True)
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    check_token(server, tok, KMS, key, key_type, purpose)

    # Remove: every object of the distribution is destroyed.
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")
    assert tok.objects(label=record["name"]) == []
    assert http(server, "GET", f"{MOUNT}/kms/{KMS}/key/{key}").status_code == 404

    # Redistribute: a new label, every version again.
    time.sleep(1.1)
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", f"purpose={purpose}", "protection=hsm")
    again = check_token(server, tok, KMS, key, key_type, purpose)
    assert again["name"] != record["name"] and len(again["versions"]) == 3
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")
    assert tok.objects(label=again["name"]) == []


def test_disabled_versions_are_never_usable(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    """A version below min_enabled_version is imported with every usage off."""
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p256")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", "purpose=sign,verify")
    record = check_token(server, tok, KMS, key, "ecdsa-p256", "sign,verify")
    (private,) = tok.objects(record["name"], bytes.fromhex(record["versions"]["1"]), ObjectClass.PRIVATE_KEY)
    assert private.usage() == {"sign": False, "sign_recover": False, "decrypt": False, "unwrap": False,
                               "derive": False}
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")


def test_objects_deleted_outside_vault_are_made_again(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    """Safe to repeat: a private key whose public object is gone (a crash between the two)
    gets its public object back on the next write; nothing is duplicated."""
    cli(server, "write", f"{MOUNT}/key/{key}", "type=rsa-2048")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", "purpose=sign,verify")
    record = distribution(server, KMS, key)
    id_ = bytes.fromhex(record["versions"]["1"])
    with tok.session(rw=True) as s:
        (public,) = s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: record["name"]})
        public.destroy()
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    check_token(server, tok, KMS, key, "rsa-2048", "sign,verify")
    assert len(tok.objects(record["name"], id_)) == 2
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")


def test_the_plugin_logs_in_again_after_a_restart(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", "purpose=encrypt,decrypt")
    before = plugin_pids(server)
    kill_plugins(server)
    assert harness.wait_for(lambda: not set(before) & set(plugin_pids(server)), timeout=10)
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    assert set(plugin_pids(server)).isdisjoint(before), "a new plugin process"
    record = check_token(server, tok, KMS, key, "aes256-gcm96", "encrypt,decrypt")
    assert len(record["versions"]) == 2
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")


def test_a_new_token_gets_its_unwrapping_key(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    """A token made after the plugin loaded the module (SoftHSM lists tokens in C_Initialize)
    and without an unwrapping key: the provider finds it and generates the key in it,
    RSA-3072, sensitive, never extractable, CKA_UNWRAP its only private usage."""
    fresh = tok.sibling("fresh-token", unwrap_bits=None)
    configure(server, "fresh", fresh.label, fresh.pin)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p384")
    cli(server, "write", f"{MOUNT}/kms/fresh/key/{key}", "purpose=sign")
    check_token(server, fresh, "fresh", key, "ecdsa-p384", "sign")
    public, private = fresh.objects(label=softhsm.UNWRAP_LABEL)
    assert public.object_class == ObjectClass.PUBLIC_KEY and public[Attribute.MODULUS_BITS] == 3072
    assert private.id == softhsm.UNWRAP_ID
    assert {a: private.get(a) for a in (Attribute.UNWRAP, Attribute.DECRYPT, Attribute.SIGN, Attribute.SENSITIVE,
                                         Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL)} == {
        Attribute.UNWRAP: True, Attribute.DECRYPT: False, Attribute.SIGN: False, Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False, Attribute.NEVER_EXTRACTABLE: True, Attribute.LOCAL: True}
    cli(server, "delete", f"{MOUNT}/kms/fresh/key/{key}")


def test_an_unwrapping_key_that_can_decrypt_is_refused(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    """pkcs11-tool's key pairs have CKA_DECRYPT and CKA_SIGN on: anyone with the PIN could
    decrypt a captured wrapped key with it, so the provider refuses it (before any import)."""
    loose = tok.sibling("loose-token", unwrap_bits=None)
    loose.pkcs11_tool("--keypairgen", "--key-type", "rsa:3072", "--label", softhsm.UNWRAP_LABEL,
                      "--id", softhsm.UNWRAP_ID.hex(), "--usage-wrap", "--sensitive", "--private")
    configure(server, "loose", loose.label, loose.pin)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    bad = cli(server, "write", f"{MOUNT}/kms/loose/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr, bad.stderr
    assert "CKA_DECRYPT false" in bad.stderr, bad.stderr
    assert [o.label for o in loose.objects()] == [softhsm.UNWRAP_LABEL] * 2
    assert http(server, "GET", f"{MOUNT}/kms/loose/key/{key}").status_code == 404


# -- refusals ---------------------------------------------------------------------


def assert_400(result: Any, *fragments: str, secrets: tuple[str, ...] = ()) -> None:
    assert result.returncode == 2 and "Code: 400" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    for secret in secrets:
        assert secret not in result.stderr and secret not in result.stdout


def test_a_wrong_pin_is_refused_although_the_plugin_is_logged_in(
    server: BaoServer, tok: SoftHsmToken, key: str
) -> None:
    """The plugin process is logged in to the token with the right PIN (the `hsm` record):
    a second record's wrong PIN would get CKR_USER_ALREADY_LOGGED_IN from C_Login; it
    must be a 400 anyway, name CKR_PIN_INCORRECT, never show a PIN, and leave the right
    record working."""
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", "purpose=encrypt,decrypt")
    wrong = harness.register_secret("wrong-" + os.urandom(8).hex())
    configure(server, "wrong-pin", tok.label, wrong)
    bad = cli(server, "write", f"{MOUNT}/kms/wrong-pin/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert_400(bad, "CKR_PIN_INCORRECT", tok.label, secrets=(wrong, tok.pin))
    assert http(server, "GET", f"{MOUNT}/kms/wrong-pin/key/{key}").status_code == 404
    # Never tried twice: hardware tokens lock a PIN after a few failures.
    again = cli(server, "write", f"{MOUNT}/kms/wrong-pin/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert_400(again, "not tried again", secrets=(wrong, tok.pin))
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    assert len(check_token(server, tok, KMS, key, "aes256-gcm96", "encrypt,decrypt")["versions"]) == 2
    # The PIN is write-only.
    shown = cli(server, "read", "-format=json", f"{MOUNT}/kms/{KMS}").stdout
    assert tok.pin not in shown and "credentials" not in json.loads(shown)["data"]
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")


def test_a_missing_token_is_a_400(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    configure(server, "missing", "no-such-token", tok.pin)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    bad = cli(server, "write", f"{MOUNT}/kms/missing/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert_400(bad, 'no token labelled "no-such-token"', '"vault-keys"', secrets=(tok.pin,))
    assert http(server, "GET", f"{MOUNT}/kms/missing/key/{key}").status_code == 404


def test_only_allow_listed_modules_load(server: BaoServer, tok: SoftHsmToken) -> None:
    canonical = str(Path(softhsm.MODULE_PATH).resolve())
    assert canonical != softhsm.MODULE_PATH
    # Another spelling of the allowed module is the same file: accepted.
    configure(server, "spelled", tok.label, tok.pin, f"credentials=module={canonical}")
    for module, fragment in [
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "not in the server's KEYMGMT_PKCS11_MODULES allow-list"),
        ("/nonexistent/libpkcs11.so", "not in the server's KEYMGMT_PKCS11_MODULES allow-list"),
        ("libsofthsm2.so", "not an absolute path"),
    ]:
        bad = configure(server, "other-module", tok.label, tok.pin, f"credentials=module={module}", check=False)
        assert_400(bad, "credentials.module", fragment, secrets=(tok.pin,))
        assert http(server, "GET", f"{MOUNT}/kms/other-module").status_code == 404
    bad = cli(server, "write", f"{MOUNT}/kms/no-pin", "provider=pkcs11", f"key_collection={tok.label}", check=False)
    assert_400(bad, "credentials.pin")


def test_without_an_allow_list_nothing_loads(tok: SoftHsmToken, tmp_path: Path) -> None:
    srv = BaoServer(tmp_path / "bao", env={**tok.env, "KEYMGMT_PKCS11_MODULES": None})
    try:
        install_plugin(srv)
        bad = configure(srv, KMS, tok.label, tok.pin, check=False)
        assert_400(bad, "KEYMGMT_PKCS11_MODULES is not set", secrets=(tok.pin,))
        bad = configure(srv, KMS, tok.label, tok.pin, f"credentials=module={softhsm.MODULE_PATH}", check=False)
        assert_400(bad, "KEYMGMT_PKCS11_MODULES is not set", secrets=(tok.pin,))
    finally:
        srv.stop()
        kill_plugins(srv)


# -- drift: status and reconcile against the token itself ------------------------------


def status(server: BaoServer, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{KMS}/key/{key}/status").stdout)["data"]


def reconcile(server: BaoServer, key: str, *args: str) -> dict[str, Any]:
    return json.loads(cli(server, "write", "-format=json", *(() if args else ("-f",)),
                          f"{MOUNT}/kms/{KMS}/key/{key}/reconcile", *args).stdout)["data"]


def kinds(data: dict[str, Any]) -> set[tuple[str, Any]]:
    return {(d["kind"], d.get("version", d.get("provider_id"))) for d in data["drift"]}


def snapshot(tok: SoftHsmToken, label: str) -> list[str]:
    return [o.describe() for o in tok.objects(label=label)]


def spki_fingerprint(tok: SoftHsmToken, label: str, id_: bytes) -> str:
    """sha256 of the SubjectPublicKeyInfo `cryptography` builds from the public-key object
    python-pkcs11 reads: independent of the plugin's own encoding."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(tok.public_key_der(label, id_))
    return "sha256:" + digest.finalize().hex()


def test_drift_is_seen_and_repaired_in_the_token(server: BaoServer, tok: SoftHsmToken, key: str) -> None:
    """Fingerprints match the token's public keys; usage switched on and off, a foreign
    object under the label and a destroyed version show as drift; a dry run changes
    nothing in the token; reconcile repairs (the destroyed version imported again under
    its CKA_ID), disable_foreign switches the foreign object's usage off without
    destroying it; with every object gone the key is missing and reconcile a 400."""
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p256")
    for _ in range(2):
        cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", "purpose=sign,verify")
    record = distribution(server, KMS, key)
    label, ids = record["name"], {int(n): bytes.fromhex(i) for n, i in record["versions"].items()}
    fresh = status(server, key)
    assert fresh["in_sync"] is True and fresh["drift"] == [] and fresh["key_exists"] is True, fresh
    assert fresh["current_provider_id"] is None  # PKCS#11 has no current version
    read = read_key(server, key)["versions"]
    for n, id_ in ids.items():
        shown = fresh["versions"][str(n)]
        assert shown["provider_fingerprint"] == read[str(n)]["fingerprint"] == spki_fingerprint(tok, label, id_)
        assert shown["material"] == "matches" and shown["enabled"] is True, shown

    # Behind Vault's back: version 3 can no longer sign, version 1 (below
    # min_enabled_version) signs again, version 2 is destroyed, and another client
    # imports a key of its own under the label.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    assert tok.objects(label, ids[1], ObjectClass.PRIVATE_KEY)[0].get(Attribute.SIGN) is False
    tok.set_usage(label, ids[3], ObjectClass.PRIVATE_KEY, sign=False)
    tok.set_usage(label, ids[1], ObjectClass.PRIVATE_KEY, sign=True)
    with tok.session(rw=True) as s:
        for obj in s.get_objects({Attribute.LABEL: label, Attribute.ID: ids[2]}):
            obj.destroy()
    foreign_id = os.urandom(8)
    theirs = ec.generate_private_key(ec.SECP256R1())
    tok.reference_import(theirs.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()),
                         "ec", label, foreign_id, ("sign", "verify"))
    drifted = status(server, key)
    assert kinds(drifted) == {("enabled_when_disabled", 1), ("disabled_when_enabled", 3),
                              ("version_missing", 2), ("foreign_version", foreign_id.hex())}, drifted["drift"]
    assert drifted["in_sync"] is False
    assert drifted["versions"]["3"]["state"] == "CKA_VERIFY on", drifted["versions"]["3"]
    (foreign,) = drifted["foreign_versions"]
    assert foreign["provider_id"] == foreign_id.hex() and foreign["enabled"] is True, foreign
    assert foreign["vault_version"] is None
    assert foreign["provider_fingerprint"] == spki_fingerprint(tok, label, foreign_id)

    # A dry run says what it would do and leaves the token as it is.
    before = snapshot(tok, label)
    planned = reconcile(server, key, "dry_run=true", "disable_foreign=true")
    assert set(planned["actions"]) == {"disable version 1", "enable version 3", "import version 2",
                                       f"disable foreign version {foreign_id.hex()}"}, planned["actions"]
    assert snapshot(tok, label) == before

    # Reconcile: version 2 is imported again (same CKA_ID), the usage attributes are
    # Vault's again; the foreign object is left alone without disable_foreign.
    repaired = reconcile(server, key)
    assert kinds(repaired) == {("foreign_version", foreign_id.hex())}, repaired["drift"]
    assert distribution(server, KMS, key)["versions"] == record["versions"]
    ours = [o for o in tok.objects(label=label) if o.id != foreign_id]
    assert sorted(o.id for o in ours) == sorted([*ids.values()] * 2), [o.describe() for o in ours]
    for n, id_ in ids.items():
        for obj in (o for o in ours if o.id == id_):
            expected = softhsm.import_template(obj.object_class, KeyType.EC, label, id_,
                                               ("sign", "verify") if n >= 2 else ())
            assert {a: obj.get(a) for a in expected} == expected, f"version {n}: {obj.describe()}"
    public = serialization.load_pem_public_key(read_key(server, key)["versions"]["2"]["public_key"].encode())
    softhsm.verify_token_signature(tok, label, ids[2], public)
    assert spki_fingerprint(tok, label, ids[2]) == read["2"]["fingerprint"]
    assert tok.objects(label, foreign_id, ObjectClass.PRIVATE_KEY)[0].get(Attribute.SIGN) is True

    # disable_foreign: every usage attribute of the foreign objects off, both still there.
    done = reconcile(server, key, "disable_foreign=true")
    assert done["in_sync"] is True and kinds(done) == {("foreign_disabled", foreign_id.hex())}, done["drift"]
    mine = tok.objects(label, foreign_id)
    assert sorted(int(o.object_class) for o in mine) == [int(ObjectClass.PUBLIC_KEY), int(ObjectClass.PRIVATE_KEY)]
    assert all(not any(o.usage().values()) for o in mine), [o.describe() for o in mine]

    # Every object destroyed outside Vault: the key is missing, reconcile refuses.
    with tok.session(rw=True) as s:
        for obj in s.get_objects({Attribute.LABEL: label}):
            obj.destroy()
    gone = status(server, key)
    assert gone["key_exists"] is False and kinds(gone) == {("key_missing", None)}, gone
    bad = cli(server, "write", "-f", f"{MOUNT}/kms/{KMS}/key/{key}/reconcile", check=False)
    assert_400(bad, f'cannot reconcile key "{key}"', label)
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")


@pytest.mark.parametrize(("key_type", "purpose"), [("rsa-2048", "sign,decrypt"), ("aes256-gcm96", "encrypt")])
def test_drift_status_shows_what_the_token_can_prove(server: BaoServer, tok: SoftHsmToken, key: str,
                                                      key_type: str, purpose: str) -> None:
    """RSA: the fingerprint is the token's public key's. AES: SoftHSM gives no
    CKA_CHECK_VALUE for an unwrapped key, so the material is unverifiable, and said so; a
    key object made with C_CreateObject has one (SoftHSM computes it), which is compared:
    Vault's key matches, another key is material_differs."""
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    cli(server, "write", f"{MOUNT}/kms/{KMS}/key/{key}", f"purpose={purpose}")
    record = distribution(server, KMS, key)
    data = status(server, key)
    assert data["in_sync"] is True and data["drift"] == [], data
    shown = data["versions"]["1"]
    if key_type == "aes256-gcm96":
        assert shown["material"] == "unverifiable" and shown["provider_fingerprint"] is None, shown
        assert "CKA_CHECK_VALUE" in shown["material_detail"]
        label, id_ = record["name"], bytes.fromhex(record["versions"]["1"])
        for value, expected in [(stored_material(server, key, 1), "matches"), (os.urandom(32), "differs")]:
            with tok.session(rw=True) as s:
                for obj in s.get_objects({Attribute.LABEL: label, Attribute.ID: id_}):
                    obj.destroy()
                s.create_object({**softhsm.import_template(ObjectClass.SECRET_KEY, KeyType.AES, label, id_,
                                                           ("encrypt",)), Attribute.VALUE: value})
            encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()
            kcv = "kcv:" + (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex()
            data = status(server, key)
            shown = data["versions"]["1"]
            assert shown["material"] == expected and shown["provider_fingerprint"] == kcv, shown
            assert kinds(data) == ({("material_differs", 1)} if expected == "differs" else set()), data["drift"]
            assert (kcv == read_key(server, key)["versions"]["1"]["fingerprint"]) == (expected == "matches")
    else:
        assert shown["material"] == "matches", shown
        assert shown["provider_fingerprint"] == read_key(server, key)["versions"]["1"]["fingerprint"] == \
            spki_fingerprint(tok, record["name"], bytes.fromhex(record["versions"]["1"]))
    cli(server, "delete", f"{MOUNT}/kms/{KMS}/key/{key}")
