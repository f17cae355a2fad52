//! The keymgmt engine: keys, KMS providers and their distribution.

pub mod key_type;
pub mod material;
pub mod wrap;
