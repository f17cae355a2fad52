//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, which
//! only they enable): the few crate-private items they drive, re-exported
//! as they are, so that the targets test the code production runs.
//! Everything else they use is public already.

/// Azure BYOK: the key-exchange key out of Key Vault's answer, the transfer
/// blob built under it, and the resume check's public-key comparison.
pub mod azure_byok {
    pub use crate::engine::provider::azure::byok::{
        GENERATOR, Kek, public_key_matches, transfer_blob,
    };
}
