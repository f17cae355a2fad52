"""Key material for the Azure Key Vault fake, implemented with `cryptography`.

This is the independent half of every import check: the plugin wraps and
encodes with its Rust crates, and this module undoes that with OpenSSL (via
`cryptography`) following key-transfer.md §1 and §3, so that a test can compare
what arrived in the "vault" with what Vault holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Union

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
    "P-256K": ec.SECP256K1(),
}
BYOK_SCHEMA_VERSION = "1.0.0"
BYOK_ALG = "dir"
BYOK_ENC = "CKM_RSA_AES_KEY_WRAP"
_AES256_KEY_LEN = 32

# DER AlgorithmIdentifiers a PKCS#8 PrivateKeyInfo must carry (key-transfer.md §1.4):
# rsaEncryption + NULL, or id-ecPublicKey + the namedCurve OID.
_ID_EC_PUBLIC_KEY = "06072a8648ce3d0201"
_PKCS8_ALGORITHMS: dict[str, bytes] = {
    "RSA": bytes.fromhex("300d06092a864886f70d0101010500"),
    "P-256": bytes.fromhex("3013" + _ID_EC_PUBLIC_KEY + "06082a8648ce3d030107"),
    "P-384": bytes.fromhex("3010" + _ID_EC_PUBLIC_KEY + "06052b81040022"),
    "P-521": bytes.fromhex("3010" + _ID_EC_PUBLIC_KEY + "06052b81040023"),
    "P-256K": bytes.fromhex("3010" + _ID_EC_PUBLIC_KEY + "06052b8104000a"),
}


class KeyMaterialError(ValueError):
    """The submitted key material is malformed or inconsistent."""


# -- encodings -------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: str, what: str) -> bytes:
    if "=" in value or "+" in value or "/" in value:
        raise KeyMaterialError(f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as error:
        raise KeyMaterialError(f"{what} is not valid base64url: {error}") from None


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, math.ceil(value.bit_length() / 8)), "big")


def _decode_uint(jwk: dict[str, Any], field: str) -> int:
    """RFC 7518 §2 Base64urlUInt: big-endian, minimal length."""
    if field not in jwk:
        raise KeyMaterialError(f"key.{field} is required")
    raw = b64url_decode(jwk[field], f"key.{field}")
    if not raw or (len(raw) > 1 and raw[0] == 0):
        raise KeyMaterialError(f"key.{field} is not a minimal-length Base64urlUInt")
    return int.from_bytes(raw, "big")


def _decode_fixed(jwk: dict[str, Any], field: str, length: int) -> int:
    """RFC 7518 §6.2: EC coordinates and `d` are full-length octet strings."""
    if field not in jwk:
        raise KeyMaterialError(f"key.{field} is required")
    raw = b64url_decode(jwk[field], f"key.{field}")
    if len(raw) != length:
        raise KeyMaterialError(f"key.{field} must be {length} bytes, got {len(raw)}")
    return int.from_bytes(raw, "big")


def curve_name(key: ec.EllipticCurvePrivateKey) -> str:
    for name, curve in CURVES.items():
        if curve.name == key.curve.name:
            return name
    raise KeyMaterialError(f"curve {key.curve.name} is not supported")


def _coordinate_length(curve: ec.EllipticCurve) -> int:
    return math.ceil(curve.key_size / 8)


# -- public JWK ------------------------------------------------------------


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public members Key Vault returns in a KeyBundle."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"n": b64url_encode(_uint_bytes(numbers.n)), "e": b64url_encode(_uint_bytes(numbers.e))}
    point = key.public_key().public_numbers()
    length = _coordinate_length(key.curve)
    return {
        "crv": curve_name(key),
        "x": b64url_encode(point.x.to_bytes(length, "big")),
        "y": b64url_encode(point.y.to_bytes(length, "big")),
    }


def generate(family: str, key_size: int | None, crv: str | None) -> PrivateKey:
    if family == "RSA":
        return rsa.generate_private_key(65537, key_size or 2048)
    return ec.generate_private_key(CURVES[crv or "P-256"])


# -- software (plain JWK) import ------------------------------------------


def private_key_from_jwk(jwk: dict[str, Any], family: str) -> PrivateKey:
    """Build the private key a plain JWK describes, checking every member agrees."""
    if family == "RSA":
        return _rsa_from_jwk(jwk)
    return _ec_from_jwk(jwk)


def _rsa_from_jwk(jwk: dict[str, Any]) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dp, dq, qi = (_decode_uint(jwk, f) for f in ("n", "e", "d", "p", "q", "dp", "dq", "qi"))
    problems = []
    if p * q != n:
        problems.append("n != p*q")
    if (e * d) % math.lcm(p - 1, q - 1) != 1:
        problems.append("d is not the inverse of e mod lcm(p-1, q-1)")
    if dp != d % (p - 1) or dq != d % (q - 1):
        problems.append("dp/dq do not match d")
    if (qi * q) % p != 1:
        problems.append("qi is not q^-1 mod p")
    if problems:
        raise KeyMaterialError("inconsistent RSA JWK: " + ", ".join(problems))
    public = rsa.RSAPublicNumbers(e, n)
    try:
        return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public).private_key()
    except ValueError as error:
        raise KeyMaterialError(f"invalid RSA key: {error}") from None


def _ec_from_jwk(jwk: dict[str, Any]) -> ec.EllipticCurvePrivateKey:
    crv = jwk.get("crv")
    if crv not in CURVES:
        raise KeyMaterialError("key.crv is required for EC keys")
    length = _coordinate_length(CURVES[crv])
    x, y, d = (_decode_fixed(jwk, f, length) for f in ("x", "y", "d"))
    try:
        key = ec.derive_private_key(d, CURVES[crv])
    except ValueError as error:
        raise KeyMaterialError(f"invalid EC private scalar: {error}") from None
    point = key.public_key().public_numbers()
    if (point.x, point.y) != (x, y):
        raise KeyMaterialError("key.x/key.y are not the public point of key.d")
    return key


# -- BYOK (key_hsm) import -------------------------------------------------


@dataclass(frozen=True)
class TransferBlob:
    """The decoded .byok JSON of key-transfer.md §3.3 step 3."""

    kid: str
    ciphertext: bytes
    generator: str


def parse_transfer_blob(key_hsm: str) -> TransferBlob:
    try:
        blob = json.loads(b64url_decode(key_hsm, "key.key_hsm"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyMaterialError("key.key_hsm does not decode to a JSON transfer blob") from None
    expected = {"schema_version", "header", "ciphertext", "generator"}
    if not isinstance(blob, dict) or set(blob) != expected:
        raise KeyMaterialError(f"transfer blob must have exactly the members {sorted(expected)}")
    if blob["schema_version"] != BYOK_SCHEMA_VERSION:
        raise KeyMaterialError(f"transfer blob schema_version must be {BYOK_SCHEMA_VERSION!r}")
    header = blob["header"]
    if not isinstance(header, dict) or set(header) != {"kid", "alg", "enc"}:
        raise KeyMaterialError("transfer blob header must have exactly kid, alg and enc")
    if header["alg"] != BYOK_ALG or header["enc"] != BYOK_ENC:
        raise KeyMaterialError(f"transfer blob header must say alg={BYOK_ALG!r}, enc={BYOK_ENC!r}")
    if not isinstance(header["kid"], str) or not isinstance(blob["ciphertext"], str):
        raise KeyMaterialError("transfer blob kid and ciphertext must be strings")
    if not isinstance(blob["generator"], str) or not blob["generator"]:
        raise KeyMaterialError("transfer blob generator must be a non-empty string")
    return TransferBlob(
        header["kid"], b64url_decode(blob["ciphertext"], "transfer blob ciphertext"), blob["generator"]
    )


def unwrap_rsa_aes_key_wrap(kek: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """CKM_RSA_AES_KEY_WRAP with OAEP-SHA1: RSA part first, then AES-KWP."""
    modulus_len = kek.key_size // 8
    if len(ciphertext) <= modulus_len:
        raise KeyMaterialError("ciphertext is too short to hold an RSA-wrapped key and a KWP part")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    try:
        aes_key = kek.decrypt(ciphertext[:modulus_len], oaep)
    except ValueError:
        raise KeyMaterialError("RSA-OAEP-SHA1 decryption of the ephemeral key failed") from None
    if len(aes_key) != _AES256_KEY_LEN:
        raise KeyMaterialError(f"ephemeral key is {len(aes_key)} bytes, expected 32 (AES-256)")
    try:
        return aes_key_unwrap_with_padding(aes_key, ciphertext[modulus_len:])
    except (InvalidUnwrap, InvalidKey, ValueError):
        raise KeyMaterialError("AES key unwrap with padding (RFC 5649) failed") from None


def load_pkcs8(der: bytes, expected: str) -> PrivateKey:
    """Parse a PKCS#8 PrivateKeyInfo whose algorithm must be `expected` ("RSA" or a curve)."""
    algorithm = _pkcs8_algorithm(der)
    if algorithm != _PKCS8_ALGORITHMS[expected]:
        names = [n for n, a in _PKCS8_ALGORITHMS.items() if a == algorithm]
        found = names[0] if names else f"AlgorithmIdentifier {algorithm.hex()}"
        raise KeyMaterialError(f"wrapped key is {found}, expected {expected}")
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError as error:
        raise KeyMaterialError(f"wrapped PKCS#8 key does not parse: {error}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyMaterialError(f"unsupported key type {type(key).__name__}")
    return key


def _der_element(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, next offset) of one definite-length DER element."""
    if offset + 2 > len(data):
        raise KeyMaterialError("truncated DER")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or offset + count > len(data):
            raise KeyMaterialError("bad DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise KeyMaterialError("truncated DER")
    return tag, data[offset:offset + length], offset + length


def _pkcs8_algorithm(der: bytes) -> bytes:
    """The AlgorithmIdentifier of a v0 PrivateKeyInfo (RFC 5208), as DER."""
    tag, body, end = _der_element(der, 0)
    if tag != 0x30 or end != len(der):
        raise KeyMaterialError("wrapped key is not a single DER SEQUENCE")
    tag, version, offset = _der_element(body, 0)
    if tag != 0x02 or version != b"\x00":
        raise KeyMaterialError("wrapped key is not PKCS#8 PrivateKeyInfo v0 (PKCS#1/SEC1 are not accepted)")
    start = offset
    tag, _, offset = _der_element(body, offset)
    if tag != 0x30:
        raise KeyMaterialError("PKCS#8 AlgorithmIdentifier missing")
    tag, _, _ = _der_element(body, offset)
    if tag != 0x04:
        raise KeyMaterialError("PKCS#8 privateKey OCTET STRING missing")
    return body[start:offset]
