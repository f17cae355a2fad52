//! The keymgmt engine: keys, KMS providers and their distribution.

pub mod backend;
pub mod clock;
pub mod distribution;
pub mod drift;
pub mod key_type;
pub mod keys;
pub mod kms;
pub mod locks;
pub mod material;
pub mod path_distribution;
pub mod path_keys;
pub mod path_kms;
pub mod pending;
pub mod periodic;
pub mod propagate;
pub mod provider;
pub mod schedule;
pub mod settings;
pub mod state;
pub mod wrap;

pub use backend::{Factory, backend};
pub use state::KeyManagement;

#[cfg(test)]
mod tests;
