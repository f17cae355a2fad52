"""Self-tests of the PKCS#11 test stack (SoftHSM2 2.6.1, python-pkcs11, pkcs11-tool).

No plugin and no server here: these pin down what the `pkcs11` provider's tests
rely on and what the provider must do to work with SoftHSM (PKCS11.md has the
findings): the token lives in a tmp dir only; the unwrapping key has exactly
the attributes asked for; the two-step import (OAEP-SHA-1 of an ephemeral AES
key, then AES-KWP of the material) works for every key type Vault has, with
explicit attributes, which SoftHSM's defaults show to be needed; and how login,
wrong PINs, mechanisms, object changes and several processes behave.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import Attribute, KeyType, Mechanism, MGF, ObjectClass

import softhsm
from softhsm import CKR, SoftHsmToken, rv_of

T, F = True, False


def pkcs8(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def spki(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def expect_rv(name: str, call: Any, *args: Any, **kwargs: Any) -> None:
    """`call` fails with the CK_RV `name` (python-pkcs11 raises; rv_of maps back)."""
    with pytest.raises(pkcs11.PKCS11Error) as info:
        call(*args, **kwargs)
    assert rv_of(info.value) == CKR[name], f"{softhsm.rv_name(rv_of(info.value))}, expected {name}"


def subset(attrs: dict[Attribute, Any], expected: dict[Attribute, Any]) -> dict[str, tuple[Any, Any]]:
    """The attributes whose value differs from `expected`: name -> (got, expected)."""
    return {a.name: (attrs.get(a, "<absent>"), v) for a, v in expected.items() if attrs.get(a, "<absent>") != v}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """One token for the import cases (each uses its own label)."""
    return SoftHsmToken(tmp_path_factory.mktemp("softhsm"), "keymgmt-shared")


@pytest.fixture
def token(tmp_path: Path) -> SoftHsmToken:
    return SoftHsmToken(tmp_path / "hsm", "keymgmt-test")


# -- the token and its unwrapping key ------------------------------------------------


def test_token_lives_in_its_tmp_dir_only(tmp_path: Path) -> None:
    system_dir = Path("/var/lib/softhsm")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in system_dir.rglob("*")) if system_dir.exists() else []
    tok = SoftHsmToken(tmp_path / "hsm", "keymgmt-tmp")

    assert tok.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert Path(tok.module_path).is_file()
    assert tok.env == {"SOFTHSM2_CONF": str(tmp_path / "hsm" / "softhsm2.conf")}
    assert tok.server_env["KEYMGMT_PKCS11_MODULES"] == tok.module_path
    conf = Path(tok.env["SOFTHSM2_CONF"]).read_text()
    assert f"directories.tokendir = {tmp_path / 'hsm' / 'tokens'}\n" in conf
    assert "objectstore.backend = file\n" in conf and "log.level = ERROR\n" in conf
    # The token is one directory of files under tokens/ (token.object, one file per object).
    (token_dir,) = (tmp_path / "hsm" / "tokens").iterdir()
    names = {p.name for p in token_dir.iterdir()}
    assert {"token.object", "token.lock", "generation"} <= names
    assert len([n for n in names if n.endswith(".object") and n != "token.object"]) == 2  # the key pair
    # Nothing was written to SoftHSM's system token directory, and SOFTHSM2_CONF
    # did not leak into this process's environment (bao servers inherit it).
    after = sorted((str(p), p.stat().st_mtime_ns) for p in system_dir.rglob("*")) if system_dir.exists() else []
    assert after == before
    assert "SOFTHSM2_CONF" not in os.environ
    # Another process finds the token by label with the private configuration only.
    listed = tok.pkcs11_tool("--list-token-slots", login=False).stdout
    assert "keymgmt-tmp" in listed
    default_env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    system = subprocess.run([softhsm.PKCS11_TOOL, "--module", tok.module_path, "--list-token-slots"],
                            env=default_env, capture_output=True, text=True, timeout=60)
    assert "keymgmt-tmp" not in system.stdout
    # Slot ids are not stable (softhsm2-util reassigns the slot on init): find tokens by label.
    (slot,) = [s for s in softhsm.module_for(tok.conf).get_slots(token_present=True)
               if s.get_token().label == "keymgmt-tmp"]
    assert slot.slot_id != 0


@pytest.mark.parametrize("bits", [3072, 4096])
def test_unwrap_key_has_exactly_the_attributes_asked_for(tmp_path: Path, bits: int) -> None:
    tok = SoftHsmToken(tmp_path / "hsm", f"keymgmt-{bits}", unwrap_bits=bits)
    objects = tok.objects()
    assert [(o.object_class, o.label, o.id) for o in objects] == [
        (ObjectClass.PUBLIC_KEY, "keymgmt-unwrap", b"keymgmt-unwrap"),
        (ObjectClass.PRIVATE_KEY, "keymgmt-unwrap", b"keymgmt-unwrap"),
    ]
    public, private = objects
    assert subset(private.attrs, {
        Attribute.KEY_TYPE: KeyType.RSA, Attribute.TOKEN: T, Attribute.PRIVATE: T,
        Attribute.SENSITIVE: T, Attribute.EXTRACTABLE: F,
        # Generated in the token: never extractable, always sensitive, local.
        Attribute.NEVER_EXTRACTABLE: T, Attribute.ALWAYS_SENSITIVE: T, Attribute.LOCAL: T,
        Attribute.UNWRAP: T, Attribute.DECRYPT: F, Attribute.SIGN: F, Attribute.SIGN_RECOVER: F,
        Attribute.DERIVE: F,
    }) == {}
    assert Attribute.MODULUS_BITS not in private.attrs  # a public-key attribute only
    assert subset(public.attrs, {
        Attribute.KEY_TYPE: KeyType.RSA, Attribute.TOKEN: T, Attribute.PRIVATE: F, Attribute.LOCAL: T,
        Attribute.MODULUS_BITS: bits, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
        Attribute.WRAP: T, Attribute.ENCRYPT: T, Attribute.VERIFY: F, Attribute.VERIFY_RECOVER: F,
        Attribute.DERIVE: F,
    }) == {}
    assert tok.unwrap_public_key().key_size == bits
    # The private half never leaves the token: its secret parts are unreadable.
    with tok.session() as s:
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "keymgmt-unwrap"})
        expect_rv("CKR_ATTRIBUTE_SENSITIVE", lambda: key[Attribute.PRIVATE_EXPONENT])
        expect_rv("CKR_ATTRIBUTE_SENSITIVE", lambda: key[Attribute.PRIME_1])
        # CKA_DECRYPT is false: the token itself refuses a direct decryption
        # (python-pkcs11 offers decrypt() only when CKA_DECRYPT is true; forced here).
        ciphertext = tok.unwrap_public_key().encrypt(
            b"x" * 32, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        softhsm.with_operation(key, pkcs11._pkcs11.DecryptMixin, pkcs11._pkcs11.SignMixin)
        expect_rv("CKR_KEY_FUNCTION_NOT_PERMITTED", key.decrypt, ciphertext,
                  mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=softhsm.OAEP_SHA1)
        expect_rv("CKR_KEY_FUNCTION_NOT_PERMITTED", key.sign, b"data", mechanism=Mechanism.SHA256_RSA_PKCS)
    # pkcs11-tool sees the same thing.
    assert sorted((o["kind"], o["label"], sorted(o["usage"])) for o in tok.tool_objects()) == [
        ("Private Key", "keymgmt-unwrap", ["unwrap"]), ("Public Key", "keymgmt-unwrap", ["encrypt", "wrap"]),
    ]


# -- the two-step import, in Python ----------------------------------------------------

CASES = {
    # name: (kind, private key or AES key maker, purposes)
    "rsa-2048": ("rsa", lambda: rsa.generate_private_key(65537, 2048), ("sign", "verify")),
    "rsa-3072": ("rsa", lambda: rsa.generate_private_key(65537, 3072), ("sign", "verify", "encrypt", "decrypt")),
    "rsa-4096": ("rsa", lambda: rsa.generate_private_key(65537, 4096),
                 ("sign", "verify", "encrypt", "decrypt", "wrap", "unwrap")),
    "ecdsa-p256": ("ec", lambda: ec.generate_private_key(ec.SECP256R1()), ("sign", "verify")),
    "ecdsa-p384": ("ec", lambda: ec.generate_private_key(ec.SECP384R1()), ("sign", "verify")),
    "ecdsa-p521": ("ec", lambda: ec.generate_private_key(ec.SECP521R1()), ("sign", "verify")),
    "aes256-gcm96": ("aes", lambda: os.urandom(32), ("encrypt", "decrypt")),
}
EC_OIDS = {"secp256r1": "06082a8648ce3d030107", "secp384r1": "06052b81040022", "secp521r1": "06052b81040023"}


@pytest.mark.parametrize("case", list(CASES))
def test_reference_two_step_import(shared: SoftHsmToken, case: str) -> None:
    kind, make, purposes = CASES[case]
    key = make()
    material = key if kind == "aes" else pkcs8(key)
    label, id = f"{case}-1700000000", b"\x00\x00\x00\x01"
    created = shared.reference_import(material, kind, label, id, purposes)

    found = shared.objects(label=label)
    # (Handles are no identity: SoftHSM hands out new ones after a logout.)
    assert sorted((o.object_class, o.id) for o in found) == sorted((o.object_class, o.id) for o in created)
    # Nothing else was left: the ephemeral AES key was a session object, destroyed.
    assert all(o[Attribute.TOKEN] for o in shared.objects())
    wanted = set(purposes)
    common = {
        Attribute.ID: id, Attribute.TOKEN: T, Attribute.MODIFIABLE: T, Attribute.DERIVE: F,
        # Unwrapped, not generated: SoftHSM sets these false, as PKCS#11 says.
        Attribute.LOCAL: F,
    }
    secret_common = {
        **common, Attribute.PRIVATE: T, Attribute.SENSITIVE: T, Attribute.EXTRACTABLE: F,
        Attribute.NEVER_EXTRACTABLE: F, Attribute.ALWAYS_SENSITIVE: F,
    }
    if kind == "aes":
        (secret,) = found
        assert secret.object_class == ObjectClass.SECRET_KEY
        assert subset(secret.attrs, {
            **secret_common, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.ENCRYPT: "encrypt" in wanted, Attribute.DECRYPT: "decrypt" in wanted,
            Attribute.WRAP: "wrap" in wanted, Attribute.UNWRAP: "unwrap" in wanted,
            Attribute.SIGN: F, Attribute.VERIFY: F,
            # SoftHSM 2.6.1 leaves both unset on an unwrapped secret key (and refuses
            # CKA_VALUE_LEN in the unwrap template): the length is checked by use.
            Attribute.VALUE_LEN: 0, Attribute.CHECK_VALUE: b"",
        }) == {}
        nonce, sealed = shared.encrypt_with(label, id, b"sealed by the token")
        assert softhsm.decrypt_gcm(key, nonce, sealed) == b"sealed by the token"
        return

    public_obj, private_obj = sorted(found, key=lambda o: o.object_class != ObjectClass.PUBLIC_KEY)
    key_type = KeyType.RSA if kind == "rsa" else KeyType.EC
    assert subset(private_obj.attrs, {
        **secret_common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: key_type,
        Attribute.SIGN: "sign" in wanted, Attribute.DECRYPT: "decrypt" in wanted,
        Attribute.UNWRAP: "unwrap" in wanted, Attribute.SIGN_RECOVER: F,
    }) == {}
    assert subset(public_obj.attrs, {
        **common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: key_type, Attribute.PRIVATE: F,
        Attribute.VERIFY: "verify" in wanted, Attribute.ENCRYPT: "encrypt" in wanted,
        Attribute.WRAP: "wrap" in wanted, Attribute.VERIFY_RECOVER: F,
    }) == {}
    # The public key, computed independently from the PKCS#8, is the token's.
    public = serialization.load_der_private_key(material, password=None).public_key()
    assert shared.public_key_der(label, id) == spki(public)
    if kind == "rsa":
        numbers = public.public_numbers()
        assert public_obj[Attribute.MODULUS_BITS] == public.key_size
        assert int.from_bytes(public_obj[Attribute.MODULUS], "big") == numbers.n
        assert int.from_bytes(private_obj[Attribute.MODULUS], "big") == numbers.n
        assert public_obj[Attribute.PUBLIC_EXPONENT] == b"\x01\x00\x01"
    else:
        point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        # CKA_EC_POINT is the DER OCTET STRING of the uncompressed point (04 len 04 X Y);
        # the long form for P-521 (133-byte point: 04 81 85 04 ...).
        length = bytes([len(point)]) if len(point) < 128 else b"\x81" + bytes([len(point)])
        assert public_obj[Attribute.EC_POINT] == b"\x04" + length + point
        assert public_obj[Attribute.EC_PARAMS].hex() == EC_OIDS[public.curve.name]
        assert private_obj[Attribute.EC_PARAMS].hex() == EC_OIDS[public.curve.name]
        assert Attribute.EC_POINT not in private_obj.attrs
    # The token's private key signs for Vault's public key.
    softhsm.verify_token_signature(shared, label, id, public)
    if kind == "rsa":
        # The token's private key decrypts what Vault's public key encrypted, if allowed to.
        sealed = public.encrypt(b"for the token", padding.OAEP(
            mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        if "decrypt" in wanted:
            assert shared.decrypt_with(label, id, sealed) == b"for the token"
        else:
            expect_rv("CKR_KEY_FUNCTION_NOT_PERMITTED", shared.decrypt_with, label, id, sealed)
    # pkcs11-tool, independently, shows the same usage.
    tool = [o for o in shared.tool_objects() if o["label"] == label]
    assert {o["kind"]: o["usage"] for o in tool} == {
        "Private Key": {p for p in ("sign", "decrypt", "unwrap") if p in wanted},
        "Public Key": {p for p in ("verify", "encrypt", "wrap") if p in wanted},
    }
    assert all(o["id"] == id.hex() for o in tool)


def test_softhsm_defaults_would_be_wrong(token: SoftHsmToken) -> None:
    """Unwrapped with only class, key type, token, label and id, a key gets SoftHSM's
    defaults: every usage on (sign, sign-recover, decrypt, unwrap; public: verify,
    verify-recover, encrypt, wrap) and CKA_SENSITIVE false, so its secret is readable.

    A token of its own: its objects are deliberately unsafe (all usage on, not
    sensitive), and in the module's shared token they met the other cases' state."""
    shared = token
    key = rsa.generate_private_key(65537, 2048)
    created = shared.reference_import(pkcs8(key), "rsa", "defaults-rsa", b"\x01", (), explicit=False)
    private = next(o for o in created if o.object_class == ObjectClass.PRIVATE_KEY)
    public = next(o for o in created if o.object_class == ObjectClass.PUBLIC_KEY)
    assert subset(private.attrs, {
        Attribute.PRIVATE: T, Attribute.SENSITIVE: F, Attribute.EXTRACTABLE: F,
        Attribute.SIGN: T, Attribute.SIGN_RECOVER: T, Attribute.DECRYPT: T, Attribute.UNWRAP: T,
        Attribute.DERIVE: F,
    }) == {}
    assert subset(public.attrs, {
        Attribute.PRIVATE: F, Attribute.VERIFY: T, Attribute.VERIFY_RECOVER: T,
        Attribute.ENCRYPT: T, Attribute.WRAP: T, Attribute.DERIVE: F,
    }) == {}
    aes = os.urandom(32)
    (secret,) = shared.reference_import(aes, "aes", "defaults-aes", b"\x01", (), explicit=False)
    assert subset(secret.attrs, {
        Attribute.PRIVATE: T, Attribute.SENSITIVE: F, Attribute.EXTRACTABLE: F,
        Attribute.ENCRYPT: T, Attribute.DECRYPT: T, Attribute.SIGN: T, Attribute.VERIFY: T,
        Attribute.WRAP: T, Attribute.UNWRAP: T, Attribute.DERIVE: F,
    }) == {}
    # All usage on: a key imported for no purpose at all signs, decrypts and encrypts.
    softhsm.verify_token_signature(shared, "defaults-rsa", b"\x01", key.public_key())
    nonce, sealed = shared.encrypt_with("defaults-aes", b"\x01", b"data")
    assert softhsm.decrypt_gcm(aes, nonce, sealed) == b"data"
    # Only SoftHSM's CKA_EXTRACTABLE default (false; PKCS#11 leaves it to the token)
    # keeps the material in: a non-sensitive key's CKA_VALUE is unreadable because it
    # is not extractable, and CKA_EXTRACTABLE cannot be turned on later.
    with shared.session() as s:
        (obj,) = s.get_objects({Attribute.LABEL: "defaults-aes"})
        expect_rv("CKR_ATTRIBUTE_SENSITIVE", lambda: obj[Attribute.VALUE])
    expect_rv("CKR_ATTRIBUTE_READ_ONLY", shared.set_attributes, "defaults-aes", b"\x01", ObjectClass.SECRET_KEY,
              {Attribute.EXTRACTABLE: True})
    # CKA_SENSITIVE can still be turned on (false -> true is allowed, never back).
    shared.set_attributes("defaults-aes", b"\x01", ObjectClass.SECRET_KEY, {Attribute.SENSITIVE: True})
    expect_rv("CKR_ATTRIBUTE_READ_ONLY", shared.set_attributes, "defaults-aes", b"\x01", ObjectClass.SECRET_KEY,
              {Attribute.SENSITIVE: False})


def test_unwrap_templates_softhsm_refuses(shared: SoftHsmToken) -> None:
    aes = os.urandom(32)
    # CKA_VALUE_LEN may not be given for an unwrap (only generate/derive).
    expect_rv("CKR_ATTRIBUTE_READ_ONLY", shared.reference_import, aes, "aes", "refused-1", b"\x01",
              ("encrypt",), template={Attribute.VALUE_LEN: 32})
    # A usage attribute of the other class (CKA_VERIFY on a private key).
    key = pkcs8(ec.generate_private_key(ec.SECP256R1()))
    expect_rv("CKR_ATTRIBUTE_TYPE_INVALID", shared.reference_import, key, "ec", "refused-2", b"\x01",
              ("sign",), template={Attribute.VERIFY: False})
    # SEC1 instead of PKCS#8 for EC, or an RSA PKCS#8 as an EC key: the KWP unwrap
    # decrypts, but the object cannot be built.
    sec1 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    expect_rv("CKR_FUNCTION_FAILED", shared.reference_import, sec1, "ec", "refused-3", b"\x01", ("sign",))
    expect_rv("CKR_FUNCTION_FAILED", shared.reference_import, pkcs8(rsa.generate_private_key(65537, 2048)),
              "ec", "refused-4", b"\x01", ("sign",))
    # A blob wrapped for another RSA key (the OAEP step), or with a corrupted KWP part
    # (the integrity check of RFC 5649): CKR_GENERAL_ERROR, not WRAPPED_KEY_INVALID.
    blob = softhsm.wrap_two_step(rsa.generate_private_key(65537, 3072).public_key(), aes)
    expect_rv("CKR_GENERAL_ERROR", shared.unwrap_blob, blob, aes, "aes", "refused-5", b"\x01", ("encrypt",))
    blob = bytearray(softhsm.wrap_two_step(shared.unwrap_public_key(), aes))
    blob[-1] ^= 1
    expect_rv("CKR_GENERAL_ERROR", shared.unwrap_blob, bytes(blob), aes, "aes", "refused-6", b"\x01", ("encrypt",))
    # The token object needs a R/W session; the session key does not.
    with shared.session() as s:
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: shared.unwrap_label})
        blob = softhsm.wrap_two_step(shared.unwrap_public_key(), aes)
        ephemeral = key.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob[:384], mechanism=Mechanism.RSA_PKCS_OAEP,
                                   mechanism_param=softhsm.OAEP_SHA1, template=softhsm.EPHEMERAL_TEMPLATE)
        expect_rv("CKR_SESSION_READ_ONLY", ephemeral.unwrap_key, ObjectClass.SECRET_KEY, KeyType.AES, blob[384:],
                  mechanism=Mechanism.AES_KEY_WRAP_PAD,
                  template=softhsm.import_template(ObjectClass.SECRET_KEY, KeyType.AES, "refused-7", b"\x01", ()))
        ephemeral.destroy()
    # Nothing of the refused imports is left behind.
    assert not [o for o in shared.objects() if o.label.startswith("refused-")]


def test_usage_toggles_and_removal(shared: SoftHsmToken) -> None:
    """What min_enabled_version and removal do: usage attributes switch off and on
    (C_SetAttributeValue), the protections cannot be undone, objects are destroyed."""
    key = ec.generate_private_key(ec.SECP256R1())
    label = "toggled-1700000000"
    for version in (1, 2):
        shared.reference_import(pkcs8(key), "ec", label, bytes([0, 0, 0, version]), ("sign", "verify"))
    v1 = bytes([0, 0, 0, 1])
    shared.set_usage(label, v1, ObjectClass.PRIVATE_KEY, sign=False)
    shared.set_usage(label, v1, ObjectClass.PUBLIC_KEY, verify=False)
    assert shared.object(label, v1, ObjectClass.PRIVATE_KEY).usage()["sign"] is False
    expect_rv("CKR_KEY_FUNCTION_NOT_PERMITTED", shared.sign_with, label, v1, Mechanism.ECDSA, b"\x00" * 32)
    softhsm.verify_token_signature(shared, label, bytes([0, 0, 0, 2]), key.public_key())  # v2 untouched
    shared.set_usage(label, v1, ObjectClass.PRIVATE_KEY, sign=True)
    softhsm.verify_token_signature(shared, label, v1, key.public_key())
    # Once sensitive, private, a token object, non-extractable: for good.
    for attribute, value in ((Attribute.SENSITIVE, False), (Attribute.EXTRACTABLE, True),
                             (Attribute.PRIVATE, False), (Attribute.TOKEN, False)):
        expect_rv("CKR_ATTRIBUTE_READ_ONLY", shared.set_attributes, label, v1, ObjectClass.PRIVATE_KEY,
                  {attribute: value})
    # Duplicates are not refused: the same label and id again makes a second pair,
    # so an import must look for existing objects (C_FindObjects by label + id) first.
    shared.reference_import(pkcs8(key), "ec", label, v1, ("sign", "verify"))
    assert len(shared.objects(label, v1)) == 4
    # CKA_COPYABLE false (PKCS#11 2.40) is accepted and stops C_CopyObject, which
    # could otherwise clone a disabled version; long labels and ids are fine.
    long_label, long_id = "k" * 200 + "-1700000000", bytes(range(64))
    shared.reference_import(os.urandom(32), "aes", long_label, long_id, ("encrypt",),
                            template={Attribute.COPYABLE: False})
    with shared.session(rw=True) as s:
        (obj,) = s.get_objects({Attribute.LABEL: long_label, Attribute.ID: long_id})
        assert obj[Attribute.COPYABLE] is False and obj[Attribute.DESTROYABLE] is True
        expect_rv("CKR_ACTION_PROHIBITED", obj.copy, {Attribute.LABEL: "copy"})
        obj.destroy()
    # Removal: every object of the distribution, found by label.
    with shared.session(rw=True) as s:
        for obj in list(s.get_objects({Attribute.LABEL: label})):
            obj.destroy()
    assert shared.objects(label) == []


# -- login and PINs ---------------------------------------------------------------------


def test_wrong_pin_and_no_lockout(token: SoftHsmToken) -> None:
    tok = token.token()
    with tok.open() as s:  # a public session; C_Login on it directly, for the raw CK_RV
        assert softhsm.raw_login(s.handle, "wrong-pin-0") == CKR["CKR_PIN_INCORRECT"]
        flags = token.token_flags()
        assert flags & softhsm.CKF_USER_PIN_COUNT_LOW
        # Kept in the token file: another process sees it too.
        assert "user PIN count low" in token.pkcs11_tool("--list-token-slots", login=False).stdout
        # No lockout: fifty more wrong PINs, never CKR_PIN_LOCKED, no final-try or
        # locked flag, and the right PIN still works (and clears the count-low flag).
        rvs = {softhsm.raw_login(s.handle, f"wrong-pin-{n}") for n in range(1, 51)}
        assert rvs == {CKR["CKR_PIN_INCORRECT"]}
        flags = token.token_flags()
        assert not flags & (softhsm.CKF_USER_PIN_FINAL_TRY | softhsm.CKF_USER_PIN_LOCKED)
        assert softhsm.raw_login(s.handle, token.pin) == 0
        assert not token.token_flags() & softhsm.CKF_USER_PIN_COUNT_LOW
        assert softhsm.raw_logout(s.handle) == 0
    # Through python-pkcs11 the same is an exception.
    expect_rv("CKR_PIN_INCORRECT", tok.open, user_pin="wrong-pin-x")


def test_second_login_is_already_logged_in_whatever_the_pin(token: SoftHsmToken) -> None:
    """Login state belongs to the process (the PKCS#11 "application"), not to a session:
    once logged in, C_Login answers CKR_USER_ALREADY_LOGGED_IN before it looks at the
    PIN. A second record with a WRONG PIN cannot be told from one with the right PIN
    by C_Login; treating ALREADY_LOGGED_IN as success would let it use the keys."""
    tok = token.token()
    first = tok.open(rw=True, user_pin=token.pin)  # record A, the right PIN
    try:
        with tok.open(rw=True) as second:  # record B's session
            assert softhsm.raw_login(second.handle, token.pin) == CKR["CKR_USER_ALREADY_LOGGED_IN"]
            assert softhsm.raw_login(second.handle, "wrong-pin-b") == CKR["CKR_USER_ALREADY_LOGGED_IN"]
            assert not token.token_flags() & softhsm.CKF_USER_PIN_COUNT_LOW  # the PIN was never checked
            # ... and B's session, without a login of its own, reaches the private keys.
            assert list(second.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
            # CKU_CONTEXT_SPECIFIC is only for keys with CKA_ALWAYS_AUTHENTICATE.
            assert softhsm.raw_login(second.handle, "wrong-pin-b", user_type=2) == CKR["CKR_OPERATION_NOT_INITIALIZED"]
            # What does check a PIN while logged in: C_SetPIN(candidate, candidate) on a
            # R/W session verifies the old PIN with a fresh key store and keeps the login
            # (a wrong one sets the count-low flag; a right one re-encrypts the token key
            # under the same PIN, a write to token.object).
            expect_rv("CKR_PIN_INCORRECT", second.set_pin, "wrong-pin-b", "wrong-pin-b")
            assert token.token_flags() & softhsm.CKF_USER_PIN_COUNT_LOW
            assert list(second.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))  # still logged in
            second.set_pin(token.pin, token.pin)
            with tok.open() as read_only:
                expect_rv("CKR_SESSION_READ_ONLY", read_only.set_pin, token.pin, token.pin)
            # Or C_Logout + C_Login(candidate): the logout is the process's, every
            # session loses the login (and its handles to private objects).
            assert softhsm.raw_logout(second.handle) == 0
            assert softhsm.raw_login(second.handle, "wrong-pin-b") == CKR["CKR_PIN_INCORRECT"]
            assert list(first.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []
            assert softhsm.raw_login(second.handle, token.pin) == 0
            assert list(first.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        # Closing a session that did not log in keeps the process logged in; closing
        # the last session logs out.
        assert list(first.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
    finally:
        first.close()
    with tok.open() as s:
        assert list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []
    # Another process has its own login state: there the wrong PIN is refused.
    with tok.open(user_pin=token.pin):
        other = subprocess.run(
            [softhsm.PKCS11_TOOL, "--module", token.module_path, "--token-label", token.label,
             "--login", "--pin", "wrong-pin-c", "--list-objects"],
            env={**os.environ, **token.env}, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "CKR_PIN_INCORRECT" in other.stdout + other.stderr


# -- mechanisms -----------------------------------------------------------------------------


def test_mechanisms(token: SoftHsmToken) -> None:
    slot = token.token().slot
    mechanisms = {int(m) for m in slot.get_mechanisms()}
    for present in (Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.RSA_PKCS_OAEP, Mechanism.RSA_PKCS,
                    Mechanism.AES_KEY_WRAP, Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_GCM, Mechanism.AES_CBC_PAD,
                    Mechanism.ECDSA, Mechanism.EC_KEY_PAIR_GEN, Mechanism.SHA256_RSA_PKCS,
                    Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.RSA_PKCS_PSS):
        assert int(present) in mechanisms, present.name
    assert Mechanism.AES_KEY_WRAP_PAD == 0x210A
    for absent in (softhsm.CKM_RSA_AES_KEY_WRAP, softhsm.CKM_AES_KEY_WRAP_KWP, Mechanism.ECDSA_SHA256,
                   Mechanism.ECDSA_SHA384, Mechanism.ECDSA_SHA512, Mechanism.AES_KEY_WRAP_PKCS7):
        assert int(absent) not in mechanisms, hex(absent)
    assert softhsm.raw_mechanism_info(slot.slot_id, softhsm.CKM_RSA_AES_KEY_WRAP)[0] == CKR["CKR_MECHANISM_INVALID"]
    # C_GetMechanismInfo ORs some flags into the caller's buffer (AES-GCM, AES-CBC-PAD,
    # AES-ECB, AES-CTR, DES3-ECB, DES3-CBC-PAD) instead of setting them: zero it first.
    rv, info = softhsm.raw_mechanism_info(slot.slot_id, Mechanism.AES_GCM, fill=0x8000_0000)
    assert rv == 0 and info.flags == 0x8000_0000 | 0x100 | 0x200  # CKF_ENCRYPT | CKF_DECRYPT
    rv, info = softhsm.raw_mechanism_info(slot.slot_id, Mechanism.AES_KEY_WRAP_PAD, fill=0x8000_0000)
    assert rv == 0 and info.flags == 0x20000 | 0x40000  # CKF_WRAP | CKF_UNWRAP, assigned
    rv, info = softhsm.raw_mechanism_info(slot.slot_id, Mechanism.RSA_PKCS_OAEP)
    assert (info.ulMinKeySize, info.ulMaxKeySize) == (512, 16384)
    assert info.flags == 0x100 | 0x200 | 0x20000 | 0x40000


def test_oaep_parameters_softhsm_accepts(token: SoftHsmToken) -> None:
    """Only SHA-1 / MGF1-SHA-1 / CKZ_DATA_SPECIFIED with pSourceData NULL and length 0;
    anything else is CKR_ARGUMENTS_BAD (not MECHANISM_PARAM_INVALID)."""
    public = token.unwrap_public_key()
    ephemeral = os.urandom(32)
    with token.session(rw=True) as s:
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: token.unwrap_label})

        def unwrap(wrapped: bytes, param: Any) -> Any:
            return key.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped, mechanism=Mechanism.RSA_PKCS_OAEP,
                                  mechanism_param=param, template=softhsm.EPHEMERAL_TEMPLATE)

        sha256 = public.encrypt(ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                        algorithm=hashes.SHA256(), label=None))
        sha1 = public.encrypt(ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                      algorithm=hashes.SHA1(), label=None))
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha256, softhsm.OAEP_SHA256)
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha256, (Mechanism.SHA256, MGF.SHA1, None))
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha1, (Mechanism.SHA_1, MGF.SHA256, None))
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha1, (Mechanism.SHA_1, MGF.SHA1, b"label"))
        # Raw CK_RSA_PKCS_OAEP_PARAMS: source 0, and a non-NULL pointer with length 0
        # (what a Rust `&[]` becomes) are refused too; NULL/0 with CKZ_DATA_SPECIFIED works.
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha1, softhsm.oaep_params_raw(0x220, 1, 0, 0, 0))
        buffer = ctypes.create_string_buffer(8)
        expect_rv("CKR_ARGUMENTS_BAD", unwrap, sha1,
                  softhsm.oaep_params_raw(0x220, 1, 1, ctypes.addressof(buffer), 0))
        aes = unwrap(sha1, softhsm.oaep_params_raw(0x220, 1, softhsm.CKZ_DATA_SPECIFIED, 0, 0))
        assert aes[Attribute.TOKEN] is False and aes[Attribute.UNWRAP] is True
        aes.destroy()
        # KWP takes no parameter (no IV) and needs a multiple of 8 bytes, at least 16.
        aes = unwrap(sha1, softhsm.OAEP_SHA1)
        expect_rv("CKR_WRAPPED_KEY_LEN_RANGE", aes.unwrap_key, ObjectClass.SECRET_KEY, KeyType.AES, b"\x00" * 20,
                  mechanism=Mechanism.AES_KEY_WRAP_PAD, template=softhsm.import_template(
                      ObjectClass.SECRET_KEY, KeyType.AES, "x", b"\x01", ("encrypt",)))
        expect_rv("CKR_ARGUMENTS_BAD", aes.unwrap_key, ObjectClass.SECRET_KEY, KeyType.AES, b"\x00" * 40,
                  mechanism=Mechanism.AES_KEY_WRAP_PAD, mechanism_param=b"\xa6\x59\x59\xa6",
                  template=softhsm.import_template(ObjectClass.SECRET_KEY, KeyType.AES, "x", b"\x01", ("encrypt",)))
        aes.destroy()


# -- processes ------------------------------------------------------------------------------

PY = sys.executable


def _child(token: SoftHsmToken, body: str, *args: str, wait: bool = True) -> Any:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
        import softhsm
        lib = pkcs11.lib(softhsm.MODULE_PATH)
        # Three children start at once: each one's login rewrites token.object,
        # which another's token lookup may read half-written (CKR_GENERAL_ERROR).
        tok = softhsm.retry_transient(lambda: lib.get_token(token_label={token.label!r}), reset=lib.reinitialize)
        PIN = {token.pin!r}
    """) + textwrap.dedent(body)
    proc = subprocess.Popen([PY, "-c", script, *args], env={**os.environ, **token.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_several_processes_share_a_token_dir(token: SoftHsmToken) -> None:
    with token.session(rw=True) as s:
        before = len(list(s.get_objects()))
        # An object another process creates shows in a session already open here.
        token.pkcs11_tool("--keygen", "--key-type", "AES:32", "--label", "from-pkcs11-tool", "--id", "0a")
        assert len(list(s.get_objects())) == before + 1
        # A token another process initialises does not: SoftHSM lists tokens in C_Initialize.
        token.softhsm2_util("--init-token", "--free", "--label", "later-token",
                            "--so-pin", "so-pin-later", "--pin", "pin-later-1")
        lib = pkcs11.lib(softhsm.MODULE_PATH)
        assert "later-token" not in [sl.get_token().label for sl in lib.get_slots(token_present=True)]
    softhsm.forget_tokens()  # C_Finalize + C_Initialize
    labels = [sl.get_token().label for sl in softhsm.module_for(token.conf).get_slots(token_present=True)]
    assert "later-token" in labels and "keymgmt-test" in labels
    # Concurrent writers in three processes: every object is stored.
    writer = """
        with softhsm.retry_transient(lambda: tok.open(rw=True, user_pin=PIN)) as s:
            for i in range(20):
                s.generate_key(KeyType.AES, 256, label="writer-%s-%d" % (sys.argv[1], i), store=True)
    """
    procs = [_child(token, writer, str(n), wait=False) for n in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert len([o for o in token.objects() if o.label.startswith("writer-")]) == 60


def test_session_objects_die_with_their_process(token: SoftHsmToken) -> None:
    """A provider killed between the two unwraps leaves nothing: the ephemeral AES key
    is a session object, in that process's memory only, never in the token files."""
    files_before = sorted(p.name for p in token.tokendir.rglob("*.object"))
    step_one = """
        import os
        from cryptography.hazmat.primitives import serialization
        s = tok.open(rw=True, user_pin=PIN, attribute_mapper=softhsm.ExactMapper())
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: softhsm.UNWRAP_LABEL})
        pub = serialization.load_der_public_key(bytes.fromhex(sys.argv[1]))
        blob = softhsm.wrap_two_step(pub, os.urandom(32))
        tmpl = {**softhsm.EPHEMERAL_TEMPLATE, Attribute.LABEL: "ephemeral"}
        key.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob[:384], mechanism=Mechanism.RSA_PKCS_OAEP,
                       mechanism_param=softhsm.OAEP_SHA1, template=tmpl)
        assert len(list(s.get_objects({Attribute.LABEL: "ephemeral"}))) == 1
        print("unwrapped", flush=True)
        os._exit(0)  # no C_DestroyObject, no C_CloseSession, no C_Finalize
    """
    der = spki(token.unwrap_public_key()).hex()
    assert "unwrapped" in _child(token, step_one, der)
    assert sorted(p.name for p in token.tokendir.rglob("*.object")) == files_before
    assert token.objects(label="ephemeral") == []
    # Nor does another process's session object show here while that process lives.
    holder = _child(token, step_one.replace("os._exit(0)", "import time; time.sleep(60)"), der, wait=False)
    try:
        assert holder.stdout.readline().strip() == "unwrapped"
        assert token.objects(label="ephemeral") == []
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_one_module_state_per_process(token: SoftHsmToken) -> None:
    """A module is initialised once per process: the same file under another path is
    the same dlopen handle (CKR_CRYPTOKI_ALREADY_INITIALIZED), and a fork child
    inherits the parent's sessions and login (library.reset_on_fork is false by default)."""
    softhsm.module_for(token.conf)
    assert softhsm.raw_initialize() == CKR["CKR_CRYPTOKI_ALREADY_INITIALIZED"]
    canonical = os.path.realpath(softhsm.MODULE_PATH)
    assert canonical != softhsm.MODULE_PATH
    assert canonical == "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so" or canonical.endswith("/libsofthsm2.so")
    with token.session() as s:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running any cleanup
            try:
                n = len(list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})))
                os.write(write, f"{n} {softhsm.raw_initialize()}".encode())
            finally:
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        report = os.read(read, 100).decode()
        os.close(read)
    assert status == 0
    private_keys, rv = report.split()
    assert private_keys == "1"  # logged in, through the parent's session
    assert int(rv) == CKR["CKR_CRYPTOKI_ALREADY_INITIALIZED"]


def test_bad_configuration_fails_initialize(tmp_path: Path) -> None:
    """What a provider meets with a wrong SOFTHSM2_CONF: C_Initialize fails with
    CKR_GENERAL_ERROR (details go to syslog only), and nothing is created."""
    missing_dir = tmp_path / "no-such-tokendir"
    bad = tmp_path / "bad.conf"
    bad.write_text(f"directories.tokendir = {missing_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    probe = textwrap.dedent(f"""
        import ctypes
        print(ctypes.CDLL({softhsm.MODULE_PATH!r}).C_Initialize(None))
    """)
    for conf in (tmp_path / "no-such.conf", bad):
        result = subprocess.run([PY, "-c", probe], env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) == CKR["CKR_GENERAL_ERROR"], conf
        assert result.stderr == ""
    assert not missing_dir.exists()
