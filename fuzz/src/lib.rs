//! What the fuzz targets share: one generated key per type, a runtime for
//! the async stores, and unwrapping done by implementations other than the
//! ones our builders use (AWS-LC for RSA-OAEP and AES-KWP, and RustCrypto's
//! `rsa` for OAEP), so that a bug in a builder cannot cancel itself out.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use vault_plugin_secrets_keymgmt::engine::key_type::KeyType;
use vault_plugin_secrets_keymgmt::engine::material::KeyMaterial;
use vault_plugin_secrets_keymgmt::engine::wrap::OaepHash;
use zeroize::Zeroizing;

/// The fixture keys (`fuzz/keys/`, made by `fuzz/gen-seeds`), in the
/// order of [`KeyType::ALL`]: fixed, so that seeds can hold their public
/// halves, and no input pays for an RSA-4096 generation.
const FIXTURES: [&[u8]; KeyType::ALL.len()] = [
    include_bytes!("../keys/aes256-gcm96.bin"),
    include_bytes!("../keys/rsa-2048.der"),
    include_bytes!("../keys/rsa-3072.der"),
    include_bytes!("../keys/rsa-4096.der"),
    include_bytes!("../keys/ecdsa-p256.der"),
    include_bytes!("../keys/ecdsa-p384.der"),
    include_bytes!("../keys/ecdsa-p521.der"),
];

/// The fixture key of `key_type`, loaded (and canonicalised) once.
pub fn sample(key_type: KeyType) -> &'static KeyMaterial {
    static SAMPLES: [OnceLock<KeyMaterial>; KeyType::ALL.len()] =
        [const { OnceLock::new() }; KeyType::ALL.len()];
    let idx = KeyType::ALL
        .iter()
        .position(|t| *t == key_type)
        .expect("type in ALL");
    SAMPLES[idx].get_or_init(|| {
        KeyMaterial::from_bytes(key_type, Zeroizing::new(FIXTURES[idx].to_vec()))
            .expect("fixture key loads")
    })
}

/// A single-threaded runtime for the async stores and the backend.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// The RSA key types, which serve as key-encryption keys in the targets.
pub const RSA_TYPES: [KeyType; 3] = [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096];

/// RSA-OAEP decryption by AWS-LC with the private half of `kek`.
pub fn oaep_decrypt_aws_lc(kek: &KeyMaterial, hash: OaepHash, ct: &[u8]) -> Option<Vec<u8>> {
    let key = PrivateDecryptingKey::from_pkcs8(kek.as_bytes()).ok()?;
    let key = OaepPrivateDecryptingKey::new(key).ok()?;
    let alg = match hash {
        OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
        OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
    };
    let mut out = vec![0u8; ct.len()];
    let pt = key.decrypt(alg, ct, &mut out, None).ok()?;
    Some(pt.to_vec())
}

/// RSA-OAEP decryption by RustCrypto's `rsa`. Slow (pure Rust private
/// operation), so the targets use it on RSA-2048 key-encryption keys only.
pub fn oaep_decrypt_rustcrypto(kek: &KeyMaterial, hash: OaepHash, ct: &[u8]) -> Option<Vec<u8>> {
    use rsa::pkcs8::DecodePrivateKey;
    let private = rsa::RsaPrivateKey::from_pkcs8_der(kek.as_bytes()).ok()?;
    let padding = match hash {
        OaepHash::Sha1 => rsa::Oaep::new::<sha1::Sha1>(),
        OaepHash::Sha256 => rsa::Oaep::new::<sha2::Sha256>(),
    };
    private.decrypt(padding, ct).ok()
}

/// AES-256 key unwrap with padding (RFC 5649) by AWS-LC.
pub fn kwp_unwrap_aws_lc(kek: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let kek = AesKek::new(&AES_256, kek).ok()?;
    let mut out = Zeroizing::new(vec![0u8; ct.len()]);
    let len = kek.unwrap_with_padding(ct, &mut out).ok()?.len();
    out.truncate(len);
    Some(out)
}

/// The same unwrap by RustCrypto's `aes-kw`.
pub fn kwp_unwrap_aes_kw(kek: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let kek: [u8; 32] = kek.try_into().ok()?;
    aes_kw::KekAes256::from(kek)
        .unwrap_with_padding_vec(ct)
        .ok()
}

/// Unwraps a `CKM_RSA_AES_KEY_WRAP` blob (`OAEP(k) || KWP(k, pt)`) under
/// `kek`, checking that both OAEP decryptors (the second on RSA-2048 only)
/// and both KWP unwrappers agree. Panics on any disagreement or failure.
pub fn unwrap_rsa_aes(kek: &KeyMaterial, hash: OaepHash, blob: &[u8]) -> Zeroizing<Vec<u8>> {
    let k = modulus_len(kek);
    assert!(
        blob.len() > k,
        "blob of {} bytes has no KWP part",
        blob.len()
    );
    let (rsa_part, kwp_part) = blob.split_at(k);
    let aes_key = Zeroizing::new(oaep_decrypt_aws_lc(kek, hash, rsa_part).expect("OAEP decrypt"));
    assert_eq!(aes_key.len(), 32, "ephemeral key is not AES-256");
    if kek.key_type() == KeyType::Rsa2048 {
        let again = oaep_decrypt_rustcrypto(kek, hash, rsa_part).expect("OAEP decrypt (rsa)");
        assert_eq!(again, *aes_key, "OAEP decryptors disagree");
    }
    let pt = kwp_unwrap_aws_lc(&aes_key, kwp_part).expect("KWP unwrap");
    let again = kwp_unwrap_aes_kw(&aes_key, kwp_part).expect("KWP unwrap (aes-kw)");
    assert_eq!(again, *pt, "KWP unwrappers disagree");
    pt
}

/// The modulus length in bytes of an RSA key's material.
pub fn modulus_len(kek: &KeyMaterial) -> usize {
    kek.key_type()
        .rsa_bits()
        .map(|b| b.modulus_len())
        .expect("an RSA key")
}
