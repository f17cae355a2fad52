//! A small request framework in the manner of Vault's `sdk/framework`:
//! a backend is a list of [`Path`]s, each declaring its pattern, typed
//! fields, operations, existence check and help in one place.

pub mod backend;
pub mod error;
pub mod field;
pub mod help;
pub mod operation;
pub mod path;

pub use backend::{Backend, BackendInfo, Lifecycle};
pub use error::Error;
pub use field::{Field, FieldType, Secret};
pub use operation::Operation;
pub use path::{Path, Request, Response, existence, handler};
