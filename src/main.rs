//! `vault-plugin-secrets-keymgmt`: launched by Vault or OpenBao, never by hand.

#![forbid(unsafe_code)]

use std::sync::Arc;

fn main() {
    let code = vault_plugin_secrets_keymgmt::runtime::run(Arc::new(
        vault_plugin_secrets_keymgmt::engine::Factory,
    ));
    std::process::exit(code);
}
