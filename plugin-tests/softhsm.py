"""SoftHSM2 tokens for the `pkcs11` provider's tests, and an independent PKCS#11 client.

A `SoftHsmToken` lives entirely under a pytest tmp path: its own SOFTHSM2_CONF
(`objectstore.backend = file`, `log.level = ERROR`) and token directory, a token
initialised with `softhsm2-util --init-token --free`, and in it the RSA
unwrapping key that Vault wraps key material for (generated in the token, the
private half sensitive, non-extractable and usable for CKA_UNWRAP only).

Everything else here checks what the plugin did, without the plugin, through
python-pkcs11 (`pkcs11-tool` is there too, as `SoftHsmToken.pkcs11_tool`): the
objects and their attributes, a signature made by an imported private key, data
encrypted by an imported AES key. `reference_import` does in Python what the
provider does in Rust (the two-step unwrap SoftHSM needs, since it has no
CKM_RSA_AES_KEY_WRAP), as a reference and a self-test of the stack; the
findings are in PKCS11.md.

One PKCS#11 module can be initialised once per process, and SoftHSM reads
SOFTHSM2_CONF (and lists its tokens) only in C_Initialize: this module keeps a
single python-pkcs11 handle and re-initialises it (C_Finalize + C_Initialize)
whenever a different token directory is used, or a token was added to it.
Sessions are opened per call and never outlive it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11._pkcs11
from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, KeyType, Mechanism, MGF, ObjectClass
from pkcs11.attributes import AttributeMapper

import harness

# What scripts/setup-softhsm installs (Debian's libsofthsm2). On amd64 it is a
# symlink to /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so.
MODULE_PATH = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM2_UTIL = "softhsm2-util"
PKCS11_TOOL = "pkcs11-tool"

# The unwrapping key's fixed label and CKA_ID (both halves carry them).
UNWRAP_LABEL = "keymgmt-unwrap"
UNWRAP_ID = b"keymgmt-unwrap"

# Mechanisms and flags python-pkcs11 0.10.1 has no name for.
CKM_RSA_AES_KEY_WRAP = 0x1054
CKM_AES_KEY_WRAP_KWP = 0x210B  # PKCS#11 3.1's name for RFC 5649; SoftHSM 2.6.1 lacks it
CKF_USER_PIN_COUNT_LOW = 0x00010000
CKF_USER_PIN_FINAL_TRY = 0x00020000
CKF_USER_PIN_LOCKED = 0x00040000
CKF_USER_PIN_TO_BE_CHANGED = 0x00080000
CKZ_DATA_SPECIFIED = 0x1

# OAEP parameters SoftHSM accepts: SHA-1, MGF1-SHA-1, source CKZ_DATA_SPECIFIED with
# pSourceData NULL and ulSourceDataLen 0 (python-pkcs11 builds exactly that from None).
OAEP_SHA1 = (Mechanism.SHA_1, MGF.SHA1, None)
OAEP_SHA256 = (Mechanism.SHA256, MGF.SHA256, None)

# The attributes `objects()` reads, where the object has them.
INSPECTED = (
    Attribute.CLASS, Attribute.KEY_TYPE, Attribute.LABEL, Attribute.ID,
    Attribute.TOKEN, Attribute.PRIVATE, Attribute.MODIFIABLE,
    Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
    Attribute.LOCAL,
    Attribute.SIGN, Attribute.SIGN_RECOVER, Attribute.VERIFY, Attribute.VERIFY_RECOVER,
    Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE,
    Attribute.MODULUS_BITS, Attribute.MODULUS, Attribute.PUBLIC_EXPONENT,
    Attribute.EC_PARAMS, Attribute.EC_POINT, Attribute.VALUE_LEN, Attribute.CHECK_VALUE,
)
USAGE = (
    Attribute.SIGN, Attribute.SIGN_RECOVER, Attribute.VERIFY, Attribute.VERIFY_RECOVER,
    Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE,
)
# Usage attributes each class has (SoftHSM refuses the others with CKR_ATTRIBUTE_TYPE_INVALID).
CLASS_USAGE = {
    ObjectClass.PRIVATE_KEY: (Attribute.SIGN, Attribute.SIGN_RECOVER, Attribute.DECRYPT,
                              Attribute.UNWRAP, Attribute.DERIVE),
    ObjectClass.PUBLIC_KEY: (Attribute.VERIFY, Attribute.VERIFY_RECOVER, Attribute.ENCRYPT,
                             Attribute.WRAP, Attribute.DERIVE),
    ObjectClass.SECRET_KEY: (Attribute.SIGN, Attribute.VERIFY, Attribute.ENCRYPT, Attribute.DECRYPT,
                             Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE),
}
# keymgmt purpose -> the attribute it turns on, and on which half of a key pair.
PURPOSE_ATTRIBUTE = {
    "sign": (ObjectClass.PRIVATE_KEY, Attribute.SIGN),
    "verify": (ObjectClass.PUBLIC_KEY, Attribute.VERIFY),
    "decrypt": (ObjectClass.PRIVATE_KEY, Attribute.DECRYPT),
    "encrypt": (ObjectClass.PUBLIC_KEY, Attribute.ENCRYPT),
    "unwrap": (ObjectClass.PRIVATE_KEY, Attribute.UNWRAP),
    "wrap": (ObjectClass.PUBLIC_KEY, Attribute.WRAP),
}

CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
}
CURVE_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512,
}


class ExactMapper(AttributeMapper):
    """An attribute mapper that adds nothing: a template holds exactly what the caller wrote.

    python-pkcs11's own mapper fills every template with CKA_TOKEN, CKA_PRIVATE,
    CKA_SENSITIVE, an empty CKA_ID and CKA_LABEL and all seven usage flags; that
    would hide SoftHSM's defaults, which are what a test must see."""

    def __init__(self) -> None:
        super().__init__()
        self.default_secret_key_template = {}
        self.default_public_key_template = {}
        self.default_private_key_template = {}

    def public_key_template(self, **_: Any) -> dict[Attribute, Any]:
        return {}

    def private_key_template(self, **_: Any) -> dict[Attribute, Any]:
        return {}

    def secret_key_template(self, **_: Any) -> dict[Attribute, Any]:
        return {}

    def generic_key_template(self, base_template: dict[Attribute, Any], **_: Any) -> dict[Attribute, Any]:
        return dict(base_template)


# -- the process's one module handle ------------------------------------------------

_current_conf: Path | None = None
_stale = False
# (conf, token label) -> sessions of SoftHsmToken.session() open in the user's login state.
_LOGINS: dict[tuple[str, str], int] = {}


@contextlib.contextmanager
def _conf_env(conf: Path) -> Iterator[None]:
    # SoftHSM reads SOFTHSM2_CONF in C_Initialize only; keep it out of os.environ
    # afterwards, or every process the tests start later (bao) would inherit it.
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


def module_for(conf: Path) -> Any:
    """The python-pkcs11 `lib`, initialised with `conf`: re-initialised (C_Finalize,
    which closes every session of the process, then C_Initialize) if it was
    initialised with another configuration or a token was added since."""
    global _current_conf, _stale
    conf = Path(conf)
    with _conf_env(conf):
        loaded = MODULE_PATH in pkcs11._loaded
        lib = pkcs11.lib(MODULE_PATH)  # the first call loads and initialises
        if loaded and (_current_conf != conf or _stale):
            lib.reinitialize()
    if _current_conf != conf or _stale:
        _LOGINS.clear()  # C_Finalize closed every session
    _current_conf, _stale = conf, False
    return lib


def retry_transient(call: Any, attempts: int = 8, reset: Any = None) -> Any:
    """`call()`, repeated while SoftHSM answers CKR_GENERAL_ERROR (or misses the token).

    Another process that logs in to a token rewrites its token.object (the file
    backend stores the PIN-count flags there), and a C_GetTokenInfo or C_Login in
    this process that reads the file meanwhile fails with CKR_GENERAL_ERROR or does
    not see the token (PKCS11.md, "Processes"); the token then stays unreadable in
    this process until the module is initialised again, which `reset` does before
    the next attempt. Only lookups and logins go through here: an object operation
    is never repeated, so no test can hide a lost write."""
    for attempt in range(attempts):
        try:
            return call()
        except (pkcs11.GeneralError, pkcs11.NoSuchToken):
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.02 * 2 ** attempt, 0.5))
            if reset is not None:
                reset()
    raise AssertionError("unreachable")


def forget_tokens() -> None:
    """The next module_for() re-initialises: SoftHSM lists tokens in C_Initialize only."""
    global _stale
    _stale = True


@dataclass
class TokenObject:
    """One object as python-pkcs11 sees it: its handle and the attributes it has."""

    handle: int
    attrs: dict[Attribute, Any] = field(default_factory=dict)

    @property
    def object_class(self) -> ObjectClass:
        return self.attrs[Attribute.CLASS]

    @property
    def label(self) -> str:
        return self.attrs.get(Attribute.LABEL, "")

    @property
    def id(self) -> bytes:
        return self.attrs.get(Attribute.ID, b"")

    def __getitem__(self, attribute: Attribute) -> Any:
        return self.attrs[attribute]

    def get(self, attribute: Attribute, default: Any = None) -> Any:
        return self.attrs.get(attribute, default)

    def usage(self) -> dict[str, bool]:
        """The usage attributes the object has, by name (`sign`, `decrypt`, ...)."""
        return {a.name.lower(): bool(self.attrs[a]) for a in USAGE if a in self.attrs}

    def describe(self) -> str:
        return f"{self.object_class.name} label={self.label!r} id={self.id.hex()} " + " ".join(
            f"{a.name}={v}" for a, v in self.attrs.items()
            if isinstance(v, bool)
        )


def read_attributes(obj: Any, attributes: tuple[Attribute, ...] = INSPECTED) -> dict[Attribute, Any]:
    """The attributes of `obj` it has, one C_GetAttributeValue each (absent and sensitive ones left out)."""
    found: dict[Attribute, Any] = {}
    for attribute in attributes:
        try:
            found[attribute] = obj[attribute]
        except (pkcs11.AttributeTypeInvalid, pkcs11.AttributeSensitive):
            continue
    return found


class SoftHsmToken:
    """A SoftHSM2 token under `tmp`, with the RSA unwrapping key generated in it.

    `env` is what the server (and so the plugin) needs in its environment
    (SOFTHSM2_CONF); `server_env` adds KEYMGMT_PKCS11_MODULES. `sibling()` adds
    another token to the same token directory (one SOFTHSM2_CONF, two labels)."""

    def __init__(
        self,
        tmp: Path,
        label: str = "keymgmt-test",
        *,
        pin: str | None = None,
        so_pin: str | None = None,
        unwrap_bits: int | None = 3072,
        _conf: Path | None = None,
    ) -> None:
        self.module_path = MODULE_PATH
        self.label = label
        self.pin = pin or "pin-" + secrets.token_hex(8)
        self.so_pin = so_pin or "so-" + secrets.token_hex(8)
        # No server log or answer may ever contain a PIN (too short to scan for: not registered).
        for value in (self.pin, self.so_pin):
            if len(value) >= harness.SECRET_MIN_LENGTH:
                harness.register_secret(value)
        if _conf is None:
            self.dir = Path(tmp).resolve()
            self.tokendir = self.dir / "tokens"
            self.tokendir.mkdir(parents=True, exist_ok=True)
            self.conf = self.dir / "softhsm2.conf"
            self.conf.write_text(
                f"directories.tokendir = {self.tokendir}\n"
                "objectstore.backend = file\n"
                "log.level = ERROR\n"
                "slots.removable = false\n"
            )
        else:
            self.conf = _conf
            self.dir = _conf.parent
            self.tokendir = self.dir / "tokens"
        self.env = {"SOFTHSM2_CONF": str(self.conf)}
        self.server_env = {**self.env, "KEYMGMT_PKCS11_MODULES": self.module_path}
        self.unwrap_label = UNWRAP_LABEL
        self.unwrap_id = UNWRAP_ID
        self.unwrap_bits = unwrap_bits
        self.softhsm2_util(
            "--init-token", "--free", "--label", label, "--so-pin", self.so_pin, "--pin", self.pin,
        )
        forget_tokens()  # a process initialised earlier does not see the new token
        if unwrap_bits is not None:
            self.generate_unwrap_key(unwrap_bits)

    def sibling(self, label: str, **kwargs: Any) -> SoftHsmToken:
        """Another token in the same token directory (the same SOFTHSM2_CONF)."""
        return SoftHsmToken(self.dir, label, _conf=self.conf, **kwargs)

    # -- the tools, with this token's configuration ----------------------------------

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            shown = " ".join("***" if a in (self.pin, self.so_pin) else a for a in argv)
            raise RuntimeError(f"`{shown}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def softhsm2_util(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([SOFTHSM2_UTIL, *args], check)

    def pkcs11_tool(self, *args: str, login: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        """OpenSC's pkcs11-tool on this token (a second independent client)."""
        argv = [PKCS11_TOOL, "--module", self.module_path, "--token-label", self.label]
        if login:
            argv += ["--login", "--pin", self.pin]
        return self._run([*argv, *args], check)

    # -- sessions ---------------------------------------------------------------------

    def token(self) -> Any:
        def reset() -> None:
            # Initialising again closes the process's sessions: only when none is open.
            if not any(_LOGINS.values()):
                forget_tokens()

        return retry_transient(lambda: module_for(self.conf).get_token(token_label=self.label), reset=reset)

    @contextlib.contextmanager
    def session(self, rw: bool = False, login: bool = True) -> Iterator[Any]:
        """A python-pkcs11 session, in the user's login state unless login=False.

        Login state belongs to the process, not the session (a second C_Login
        is CKR_USER_ALREADY_LOGGED_IN, and C_Logout, which python-pkcs11 calls
        when it closes the session that logged in, logs every session out): a
        session opened while another one of this token is logged in does not
        log in again, and only the outermost one logs out."""
        key = (str(self.conf), self.label)
        nested = login and _LOGINS.get(key, 0) > 0
        token = self.token()
        session = retry_transient(lambda: token.open(rw=rw, user_pin=self.pin if login and not nested else None,
                                                     attribute_mapper=ExactMapper()))
        if login:
            _LOGINS[key] = _LOGINS.get(key, 0) + 1
        try:
            yield session
        finally:
            if login:
                _LOGINS[key] -= 1
            session.close()

    # -- the unwrapping key -------------------------------------------------------------

    def generate_unwrap_key(self, bits: int = 3072) -> None:
        if bits not in (3072, 4096):
            raise ValueError("the unwrapping key is RSA-3072 or RSA-4096")
        if self.objects(label=self.unwrap_label):
            raise ValueError(f"{self.label} already has an unwrapping key")
        with self.session(rw=True) as s:
            s.generate_keypair(
                KeyType.RSA, bits,
                mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                public_template={
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: self.unwrap_label,
                    Attribute.ID: self.unwrap_id,
                    Attribute.MODULUS_BITS: bits,
                    Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
                    # Vault wraps in software with the public key it reads; the
                    # token half may wrap too (C_WrapKey), nothing else.
                    Attribute.WRAP: True,
                    Attribute.ENCRYPT: True,
                    Attribute.VERIFY: False,
                    Attribute.VERIFY_RECOVER: False,
                    Attribute.DERIVE: False,
                },
                private_template={
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.LABEL: self.unwrap_label,
                    Attribute.ID: self.unwrap_id,
                    Attribute.UNWRAP: True,
                    Attribute.DECRYPT: False,
                    Attribute.SIGN: False,
                    Attribute.SIGN_RECOVER: False,
                    Attribute.DERIVE: False,
                },
            )
        self.unwrap_bits = bits

    def unwrap_public_key(self) -> rsa.RSAPublicKey:
        """The unwrapping key's public half, read from the token (what Vault wraps for)."""
        key = serialization.load_der_public_key(self.public_key_der(self.unwrap_label, self.unwrap_id))
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    # -- inspection ---------------------------------------------------------------------

    def objects(self, label: str | None = None, id: bytes | None = None,
                object_class: ObjectClass | None = None, login: bool = True) -> list[TokenObject]:
        """Every object (private ones only when logged in) matching the filters, sorted
        by class, label and id, with the attributes of INSPECTED it has."""
        template: dict[Attribute, Any] = {}
        if label is not None:
            template[Attribute.LABEL] = label
        if id is not None:
            template[Attribute.ID] = id
        if object_class is not None:
            template[Attribute.CLASS] = object_class
        with self.session(login=login) as s:
            found = [TokenObject(o.handle, read_attributes(o)) for o in s.get_objects(template)]
        return sorted(found, key=lambda o: (int(o.object_class), o.label, o.id))

    def object(self, label: str, id: bytes, object_class: ObjectClass) -> TokenObject:
        """The one object with this class, label and id (an AssertionError otherwise)."""
        found = self.objects(label, id, object_class)
        assert len(found) == 1, f"{len(found)} {object_class.name} objects labelled {label!r} with id {id.hex()}"
        return found[0]

    def token_flags(self) -> int:
        return int(self.token().flags)

    @contextlib.contextmanager
    def _key(self, label: str, id: bytes, object_class: ObjectClass, rw: bool = False) -> Iterator[Any]:
        with self.session(rw=rw) as s:
            found = list(s.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label, Attribute.ID: id}))
            assert len(found) == 1, f"{len(found)} {object_class.name} objects labelled {label!r} with id {id.hex()}"
            yield found[0]

    def sign_with(self, label: str, id: bytes, mechanism: Mechanism, data: bytes,
                  mechanism_param: Any = None) -> bytes:
        """A signature by the token's private key (label, id): raw PKCS#11 output
        (ECDSA: r||s, see `verify_token_signature`)."""
        with self._key(label, id, ObjectClass.PRIVATE_KEY) as key:
            # Whatever CKA_SIGN says: a disabled key must be refused by the token itself.
            with_operation(key, pkcs11._pkcs11.SignMixin)
            return key.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)

    def public_key_der(self, label: str, id: bytes) -> bytes:
        """SubjectPublicKeyInfo DER of the public-key object (label, id), built from its
        CKA_MODULUS/CKA_PUBLIC_EXPONENT or CKA_EC_PARAMS/CKA_EC_POINT."""
        obj = self.object(label, id, ObjectClass.PUBLIC_KEY)
        return public_key_from_object(obj).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def encrypt_with(self, label: str, id: bytes, data: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext||tag): AES-GCM (96-bit nonce, 128-bit tag) by the token's
        secret key (label, id); decrypt_gcm() opens it with the key itself."""
        nonce = os.urandom(12)
        with self._key(label, id, ObjectClass.SECRET_KEY) as key:
            with_operation(key, pkcs11._pkcs11.EncryptMixin)
            return nonce, key.encrypt(data, mechanism=Mechanism.AES_GCM,
                                      mechanism_param=pkcs11.GCMParams(nonce, None, 128))

    def decrypt_with(self, label: str, id: bytes, ciphertext: bytes) -> bytes:
        """RSA-OAEP (SHA-1, the only hash SoftHSM has) decryption by the token's private
        key (label, id): for RSA versions with the decrypt purpose."""
        with self._key(label, id, ObjectClass.PRIVATE_KEY) as key:
            with_operation(key, pkcs11._pkcs11.DecryptMixin)
            return key.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP_SHA1)

    def tool_objects(self) -> list[dict[str, Any]]:
        """The objects as `pkcs11-tool --list-objects` (a second, independent client)
        shows them: kind ("Private Key", "Public Key", "Secret Key"), key type, label,
        id (hex) and the Usage and Access words."""
        return parse_tool_objects(self.pkcs11_tool("--list-objects").stdout)

    def set_attributes(self, label: str, id: bytes, object_class: ObjectClass,
                       attributes: dict[Attribute, Any]) -> None:
        """C_SetAttributeValue on the object (label, id), one attribute per call."""
        with self._key(label, id, object_class, rw=True) as key:
            for attribute, value in attributes.items():
                key[attribute] = value

    def set_usage(self, label: str, id: bytes, object_class: ObjectClass, /, **usage: bool) -> None:
        """set_attributes by usage name, e.g. set_usage(label, id, cls, sign=False)."""
        self.set_attributes(label, id, object_class, {Attribute[n.upper()]: v for n, v in usage.items()})

    # -- what the provider does, in Python --------------------------------------------

    def reference_import(
        self,
        material: bytes,
        kind: str,
        label: str,
        id: bytes,
        purposes: tuple[str, ...],
        *,
        template: dict[Attribute, Any] | None = None,
        explicit: bool = True,
    ) -> list[TokenObject]:
        """Wrap `material` (PKCS#8 DER for kind 'rsa'/'ec', the raw key for 'aes') for
        this token's unwrapping key with the two-step scheme and unwrap it in the token.

        Wrapping, in software with `cryptography`: RSA-OAEP (SHA-1, MGF1-SHA-1, no
        label) of an ephemeral AES-256 key, then AES key wrap with padding (RFC 5649)
        of the material; the two concatenated are a CKM_RSA_AES_KEY_WRAP blob.
        Unwrapping, in the token: C_UnwrapKey with CKM_RSA_PKCS_OAEP into a session
        AES key (CKA_TOKEN false, unwrap only), C_UnwrapKey with CKM_AES_KEY_WRAP_PAD
        into a token object, the session key destroyed; for RSA and EC, C_CreateObject
        of the public key. With explicit=False only class, key type, token, label and
        id are given, to show SoftHSM's defaults. Returns the objects created."""
        blob = wrap_two_step(self.unwrap_public_key(), material)
        return self.unwrap_blob(blob, material, kind, label, id, purposes, template=template, explicit=explicit)

    def unwrap_blob(
        self,
        blob: bytes,
        material: bytes,
        kind: str,
        label: str,
        id: bytes,
        purposes: tuple[str, ...],
        *,
        template: dict[Attribute, Any] | None = None,
        explicit: bool = True,
    ) -> list[TokenObject]:
        split = (self.unwrap_bits or 0) // 8
        wrapped_key, wrapped_material = blob[:split], blob[split:]
        key_type = {"rsa": KeyType.RSA, "ec": KeyType.EC, "aes": KeyType.AES}[kind]
        object_class = ObjectClass.SECRET_KEY if kind == "aes" else ObjectClass.PRIVATE_KEY
        attrs = import_template(object_class, key_type, label, id, purposes, explicit=explicit)
        attrs.update(template or {})
        with self.session(rw=True) as s:
            (unwrap_key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                           Attribute.LABEL: self.unwrap_label, Attribute.ID: self.unwrap_id})
            ephemeral = unwrap_key.unwrap_key(
                ObjectClass.SECRET_KEY, KeyType.AES, wrapped_key,
                mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP_SHA1,
                template=EPHEMERAL_TEMPLATE,
            )
            try:
                imported = ephemeral.unwrap_key(
                    object_class, key_type, wrapped_material,
                    mechanism=Mechanism.AES_KEY_WRAP_PAD, template=attrs,
                )
            finally:
                ephemeral.destroy()
            created = [imported]
            if kind != "aes":
                private = serialization.load_der_private_key(material, password=None)
                public_attrs = import_template(ObjectClass.PUBLIC_KEY, key_type, label, id, purposes,
                                               explicit=explicit)
                public_attrs.update(public_key_attributes(private.public_key()))
                created.append(s.create_object(public_attrs))
            return [TokenObject(o.handle, read_attributes(o)) for o in created]


def parse_tool_objects(text: str) -> list[dict[str, Any]]:
    """Parse OpenSC 0.23 `pkcs11-tool --list-objects` output."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith(" ") and " Object; " in line:
            kind, _, rest = line.partition(" Object; ")
            found.append({"kind": kind.strip(), "key_type": rest.split()[0] if rest.split() else "",
                          "heading": line.strip(), "label": "", "id": "", "usage": set(), "access": set()})
        elif found and ":" in line:
            name, _, value = line.strip().partition(":")
            value = value.strip()
            name = name.strip().lower()
            if name in ("usage", "access"):
                found[-1][name] = {w.strip() for w in value.split(",") if w.strip() and w.strip() != "none"}
            elif name in ("label", "id", "ec_point", "ec_params"):
                found[-1][name] = value
    return found


# The ephemeral AES key of the two-step unwrap: a session object that can only unwrap.
EPHEMERAL_TEMPLATE: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.UNWRAP: True,
    Attribute.WRAP: False,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


def import_template(object_class: ObjectClass, key_type: KeyType, label: str, id: bytes,
                    purposes: tuple[str, ...], explicit: bool = True) -> dict[Attribute, Any]:
    """The template of an imported object: a token object, private, sensitive and
    non-extractable (public keys: not private), with every usage attribute of its
    class written out, on for the purposes given and off otherwise."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: object_class,
        Attribute.KEY_TYPE: key_type,
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: id,
    }
    if not explicit:
        return template
    if object_class == ObjectClass.PUBLIC_KEY:
        template[Attribute.PRIVATE] = False
    else:
        template.update({Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    wanted = set()
    for purpose in purposes:
        cls, attribute = PURPOSE_ATTRIBUTE[purpose]
        if object_class == ObjectClass.SECRET_KEY or cls == object_class:
            wanted.add(attribute)
    for attribute in CLASS_USAGE[object_class]:
        template[attribute] = attribute in wanted
    return template


def public_key_attributes(public: Any) -> dict[Attribute, Any]:
    """The key-specific attributes of a public-key object for a `cryptography` public key:
    RSA CKA_MODULUS + CKA_PUBLIC_EXPONENT; EC CKA_EC_PARAMS (the named curve's OID, DER)
    + CKA_EC_POINT (the uncompressed point as a DER OCTET STRING)."""
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {Attribute.MODULUS: _uint(numbers.n), Attribute.PUBLIC_EXPONENT: _uint(numbers.e)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {
            Attribute.EC_PARAMS: ECDomainParameters({"named": public.curve.name}).dump(),
            Attribute.EC_POINT: OctetString(point).dump(),
        }
    raise TypeError(f"no PKCS#11 public key for {type(public).__name__}")


def public_key_from_object(obj: TokenObject) -> Any:
    """A `cryptography` public key from a public-key object's attributes."""
    key_type = obj[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        return rsa.RSAPublicNumbers(
            int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(obj[Attribute.MODULUS], "big"),
        ).public_key()
    if key_type == KeyType.EC:
        curve = ECDomainParameters.load(obj[Attribute.EC_PARAMS]).chosen.native
        point = OctetString.load(obj[Attribute.EC_POINT]).native
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVES[curve](), point)
    raise TypeError(f"no public key for key type {key_type!r}")


def wrap_two_step(wrapping_key: rsa.RSAPublicKey, material: bytes) -> bytes:
    """RSA-OAEP-SHA-1(ephemeral AES-256 key) || AES-KWP(ephemeral key, material):
    the CKM_RSA_AES_KEY_WRAP blob, SoftHSM's OAEP hash (SHA-1, the only one it has)."""
    ephemeral = os.urandom(32)
    wrapped_key = wrapping_key.encrypt(
        ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    return wrapped_key + aes_key_wrap_with_padding(ephemeral, material)


def verify_token_signature(token: SoftHsmToken, label: str, id: bytes, public_key: Any,
                           data: bytes | None = None) -> None:
    """Sign `data` with the token's private key (label, id) and verify the signature
    with `public_key` (a `cryptography` key, e.g. Vault's); raises InvalidSignature.

    RSA: CKM_SHA256_RSA_PKCS. EC: SoftHSM has only CKM_ECDSA (no hashing
    mechanisms), so the digest of the curve's hash is signed and r||s is
    re-encoded as DER for `cryptography`."""
    data = data if data is not None else os.urandom(64)
    if isinstance(public_key, rsa.RSAPublicKey):
        signature = token.sign_with(label, id, Mechanism.SHA256_RSA_PKCS, data)
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = CURVE_HASH[public_key.curve.name]()
        digest = hashes.Hash(algorithm)
        digest.update(data)
        raw = token.sign_with(label, id, Mechanism.ECDSA, digest.finalize())
        half = len(raw) // 2
        der = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        public_key.verify(der, data, ec.ECDSA(algorithm))
    else:
        raise TypeError(f"cannot verify with {type(public_key).__name__}")


def with_operation(obj: Any, *mixins: type) -> Any:
    """`obj` with python-pkcs11 operation mixins it was built without: python-pkcs11
    offers decrypt() only on a key whose CKA_DECRYPT is true, so that a test can
    make the token itself refuse (C_DecryptInit: CKR_KEY_FUNCTION_NOT_PERMITTED)."""
    missing = tuple(m for m in mixins if not isinstance(obj, m))
    if missing:
        obj.__class__ = type(type(obj).__name__, (*missing, type(obj)), {})
    return obj


def decrypt_gcm(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes | None = None) -> bytes:
    """Open what `SoftHsmToken.encrypt_with` sealed, with the AES key itself (Vault's)."""
    return AESGCM(key).decrypt(nonce, ciphertext, aad)


def oaep_params_raw(hash_alg: int, mgf: int, source: int, source_data_ptr: int, source_len: int) -> bytes:
    """A CK_RSA_PKCS_OAEP_PARAMS as raw bytes (python-pkcs11 passes bytes through
    unchanged), to probe what SoftHSM refuses: five CK_ULONG-sized fields on LP64."""
    return struct.pack("=QQQQQ", hash_alg, mgf, source, source_data_ptr, source_len)


# CK_RV of the python-pkcs11 exceptions the tests meet (the module raises an
# "Unmapped error code 0x.." PKCS11Error for the rest, e.g. CKR_KEY_FUNCTION_NOT_PERMITTED).
CKR = {
    "CKR_GENERAL_ERROR": 0x05, "CKR_ACTION_PROHIBITED": 0x1B, "CKR_ARGUMENTS_BAD": 0x07, "CKR_ATTRIBUTE_READ_ONLY": 0x10,
    "CKR_ATTRIBUTE_SENSITIVE": 0x11, "CKR_ATTRIBUTE_TYPE_INVALID": 0x12, "CKR_ATTRIBUTE_VALUE_INVALID": 0x13,
    "CKR_KEY_HANDLE_INVALID": 0x60, "CKR_KEY_TYPE_INCONSISTENT": 0x63, "CKR_KEY_FUNCTION_NOT_PERMITTED": 0x68,
    "CKR_MECHANISM_INVALID": 0x70, "CKR_MECHANISM_PARAM_INVALID": 0x71, "CKR_OBJECT_HANDLE_INVALID": 0x82,
    "CKR_OPERATION_NOT_INITIALIZED": 0x91,
    "CKR_PIN_INCORRECT": 0xA0, "CKR_PIN_LEN_RANGE": 0xA2, "CKR_PIN_LOCKED": 0xA4,
    "CKR_SESSION_HANDLE_INVALID": 0xB3, "CKR_SESSION_READ_ONLY": 0xB5, "CKR_SESSION_READ_ONLY_EXISTS": 0xB7,
    "CKR_FUNCTION_FAILED": 0x06, "CKR_DATA_LEN_RANGE": 0x21, "CKR_ENCRYPTED_DATA_INVALID": 0x40,
    "CKR_OPERATION_ACTIVE": 0x90, "CKR_SIGNATURE_INVALID": 0xC0,
    "CKR_TEMPLATE_INCOMPLETE": 0xD0, "CKR_TEMPLATE_INCONSISTENT": 0xD1, "CKR_TOKEN_NOT_PRESENT": 0xE0,
    "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT": 0xF2, "CKR_USER_ALREADY_LOGGED_IN": 0x100,
    "CKR_USER_NOT_LOGGED_IN": 0x101, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": 0x104,
    "CKR_WRAPPED_KEY_INVALID": 0x110, "CKR_WRAPPED_KEY_LEN_RANGE": 0x112,
    "CKR_CRYPTOKI_ALREADY_INITIALIZED": 0x191,
}
_EXCEPTION_RV = {
    pkcs11.GeneralError: 0x05, pkcs11.ArgumentsBad: 0x07, pkcs11.AttributeReadOnly: 0x10,
    pkcs11.AttributeSensitive: 0x11, pkcs11.AttributeTypeInvalid: 0x12, pkcs11.AttributeValueInvalid: 0x13,
    pkcs11.KeyHandleInvalid: 0x60, pkcs11.KeyTypeInconsistent: 0x63, pkcs11.MechanismInvalid: 0x70,
    pkcs11.MechanismParamInvalid: 0x71, pkcs11.ObjectHandleInvalid: 0x82,
    pkcs11.OperationNotInitialized: 0x91, pkcs11.PinIncorrect: 0xA0,
    pkcs11.PinLenRange: 0xA2, pkcs11.PinLocked: 0xA4, pkcs11.SessionHandleInvalid: 0xB3,
    pkcs11.SessionReadOnly: 0xB5, pkcs11.SessionReadOnlyExists: 0xB7, pkcs11.FunctionFailed: 0x06,
    pkcs11.DataLenRange: 0x21, pkcs11.EncryptedDataInvalid: 0x40, pkcs11.OperationActive: 0x90,
    pkcs11.SignatureInvalid: 0xC0, pkcs11.TemplateIncomplete: 0xD0, pkcs11.TemplateInconsistent: 0xD1,
    pkcs11.TokenNotPresent: 0xE0, pkcs11.UnwrappingKeyTypeInconsistent: 0xF2,
    pkcs11.UserAlreadyLoggedIn: 0x100, pkcs11.UserNotLoggedIn: 0x101,
    pkcs11.AnotherUserAlreadyLoggedIn: 0x104, pkcs11.WrappedKeyInvalid: 0x110,
    pkcs11.WrappedKeyLenRange: 0x112,
}


def rv_of(exc: BaseException) -> int:
    """The CK_RV behind a python-pkcs11 exception."""
    for cls, rv in _EXCEPTION_RV.items():
        if type(exc) is cls:
            return rv
    text = str(exc)
    if text.startswith("Unmapped error code 0x"):
        return int(text.removeprefix("Unmapped error code "), 16)
    raise ValueError(f"no CK_RV known for {type(exc).__name__}: {text}")


def rv_name(rv: int) -> str:
    return next((name for name, value in CKR.items() if value == rv), hex(rv))


# -- raw calls, for what python-pkcs11 does not let a test see -----------------------
#
# ctypes loads the same shared object python-pkcs11 did (dlopen returns the same
# handle), so these calls act on the module state, sessions and login of the process.


class CK_MECHANISM_INFO(ctypes.Structure):
    _fields_ = [("ulMinKeySize", ctypes.c_ulong), ("ulMaxKeySize", ctypes.c_ulong), ("flags", ctypes.c_ulong)]


def raw_module() -> ctypes.CDLL:
    return ctypes.CDLL(MODULE_PATH)


def raw_mechanism_info(slot_id: int, mechanism: int, fill: int = 0) -> tuple[int, CK_MECHANISM_INFO]:
    """C_GetMechanismInfo into a CK_MECHANISM_INFO whose flags hold `fill` beforehand."""
    info = CK_MECHANISM_INFO(0, 0, fill)
    rv = raw_module().C_GetMechanismInfo(ctypes.c_ulong(slot_id), ctypes.c_ulong(mechanism), ctypes.byref(info))
    return rv, info


def raw_login(session_handle: int, pin: str, user_type: int = 1) -> int:
    """C_Login (CKU_USER by default) on a session python-pkcs11 opened; the CK_RV."""
    data = pin.encode()
    return raw_module().C_Login(ctypes.c_ulong(session_handle), ctypes.c_ulong(user_type),
                                ctypes.c_char_p(data), ctypes.c_ulong(len(data)))


def raw_logout(session_handle: int) -> int:
    return raw_module().C_Logout(ctypes.c_ulong(session_handle))


def raw_initialize() -> int:
    """C_Initialize(NULL): no locking arguments (SoftHSM then disables its mutexes)."""
    return raw_module().C_Initialize(None)


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
