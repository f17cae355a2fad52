//! Key Management secrets engine for HashiCorp Vault and OpenBao.
//!
//! The crate has three layers, each unaware of the one above it:
//! - [`runtime`]: the go-plugin protocol v5 server (handshake, AutoMTLS,
//!   broker, storage and system view clients, logging);
//! - [`framework`]: declarative paths and typed fields, in the manner of
//!   Vault's `framework.Path`, turning protocol requests into handler calls;
//! - [`engine`]: the keymgmt backend itself (keys, KMS providers,
//!   distribution).

#![forbid(unsafe_code)]

pub mod engine;
pub mod failpoints;
pub mod framework;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod runtime;
