//! Which PKCS#11 module, which token, which PIN.
//!
//! Loading a shared library runs its code in the plugin, so the module is
//! the operator's choice, never an API caller's: the server's environment
//! lists the modules that may be loaded (`KEYMGMT_PKCS11_MODULES`, absolute
//! paths separated by `:`), and a provider record may only pick one of
//! them (`credentials.module`, compared in canonical form), else the first.
//! A bare file name, which the dynamic loader would look up on its search
//! path, is refused; without the variable nothing is loaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use super::super::client::Env;
use super::super::client::retry::RetryPolicy;
use super::super::registry::ConfigError;
use super::super::{ProviderConfig, ProviderError};
use crate::framework::error::quote;

/// The modules that may be loaded: absolute paths separated by `:`.
pub const ENV_MODULES: &str = "KEYMGMT_PKCS11_MODULES";
/// Base delay of the retry backoff in milliseconds (default 100).
pub const ENV_RETRY_BASE_MS: &str = "KEYMGMT_PKCS11_RETRY_BASE_MS";

/// A token label is at most 32 bytes (`CK_TOKEN_INFO.label`).
pub const MAX_LABEL_LEN: usize = 32;
/// Longest PIN accepted (SoftHSM's limit; HSMs have shorter ones).
pub const MAX_PIN_LEN: usize = 255;
const MAX_MODULE_LEN: usize = 4096;

/// Everything a connection needs, resolved and checked.
pub struct Settings {
    /// The module's canonical path.
    pub module: PathBuf,
    /// The token label (`key_collection`).
    pub token: String,
    pub pin: Zeroizing<String>,
    pub retry: RetryPolicy,
}

/// Redacted: never shows the PIN.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("module", &self.module)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn credential<'a>(config: &'a ProviderConfig, key: &str) -> Option<&'a str> {
    config
        .credentials
        .get(key)
        .map(|s| s.expose())
        .filter(|v| !v.is_empty())
}

/// The allow-list, each entry canonical. Entries that are not absolute
/// paths make the whole list unusable: a typo must not widen it.
pub fn allowed_modules(env: Env) -> Result<Vec<(String, PathBuf)>, String> {
    let Some(list) = env(ENV_MODULES) else {
        return Err(format!(
            "{ENV_MODULES} is not set in the server's environment, so no PKCS#11 module may be loaded; the operator lists the allowed module paths there"
        ));
    };
    let mut entries = Vec::new();
    for entry in list.split(':').map(str::trim).filter(|e| !e.is_empty()) {
        if !Path::new(entry).is_absolute() {
            return Err(format!(
                "{ENV_MODULES} entry {} is not an absolute path",
                quote(entry)
            ));
        }
        let canonical = std::fs::canonicalize(entry).map_err(|e| {
            format!(
                "{ENV_MODULES} entry {}: the module cannot be found: {e}",
                quote(entry)
            )
        })?;
        entries.push((entry.to_owned(), canonical));
    }
    if entries.is_empty() {
        return Err(format!("{ENV_MODULES} lists no module"));
    }
    Ok(entries)
}

/// The module a record uses: `requested` if it is in the allow-list (in
/// canonical form), else the list's first entry.
pub fn choose_module(requested: Option<&str>, env: Env) -> Result<PathBuf, String> {
    if let Some(module) = requested {
        check_module_syntax(module)?;
    }
    let allowed = allowed_modules(env)?;
    let Some(module) = requested else {
        return Ok(allowed[0].1.clone());
    };
    // A path that does not resolve is not in the list either; the answer
    // is the same, so that callers cannot probe which files exist.
    let canonical = std::fs::canonicalize(module).ok();
    allowed
        .iter()
        .find(|(_, c)| Some(c) == canonical.as_ref())
        .map(|(_, c)| c.clone())
        .ok_or_else(|| {
            format!(
                "{} is not in the server's {ENV_MODULES} allow-list ({})",
                quote(module),
                allowed
                    .iter()
                    .map(|(e, _)| e.as_str())
                    .collect::<Vec<_>>()
                    .join(":")
            )
        })
}

fn check_module_syntax(module: &str) -> Result<(), String> {
    if module.len() > MAX_MODULE_LEN || module.chars().any(char::is_control) {
        return Err(format!(
            "must be a path of at most {MAX_MODULE_LEN} bytes without control characters"
        ));
    }
    if !Path::new(module).is_absolute() {
        return Err(format!(
            "{} is not an absolute path; a bare file name would be looked up on the library search path",
            quote(module)
        ));
    }
    Ok(())
}

/// The token label's rules: what `CK_TOKEN_INFO.label` can hold.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
        return Err(format!(
            "{} is not a PKCS#11 token label (1 to {MAX_LABEL_LEN} bytes, no control characters)",
            quote(label)
        ));
    }
    if label != label.trim_end() {
        return Err(format!(
            "{} ends in spaces, which PKCS#11 pads labels with",
            quote(label)
        ));
    }
    Ok(())
}

/// The checks of `kms/:name` writes. The module is checked against the
/// server's allow-list here too, so that a record naming another module
/// is refused when it is written, not at its first use.
pub fn validate(config: &ProviderConfig) -> Result<(), ConfigError> {
    validate_with(config, &super::super::client::process_env)
}

pub fn validate_with(config: &ProviderConfig, env: Env) -> Result<(), ConfigError> {
    check_label(&config.key_collection).map_err(|m| ConfigError::new("key_collection", m))?;
    match credential(config, "pin") {
        None => {
            return Err(ConfigError::credential(
                "pin",
                "is required: the user PIN of the token",
            ));
        }
        Some(pin) if pin.len() > MAX_PIN_LEN || pin.chars().any(char::is_control) => {
            return Err(ConfigError::credential(
                "pin",
                format!("must be at most {MAX_PIN_LEN} bytes, without control characters"),
            ));
        }
        Some(_) => {}
    }
    let module = credential(config, "module");
    if let Some(module) = module {
        check_module_syntax(module).map_err(|m| ConfigError::credential("module", m))?;
    }
    choose_module(module, env).map_err(|m| {
        if module.is_some() {
            ConfigError::credential("module", m)
        } else {
            ConfigError::new("provider", m)
        }
    })?;
    Ok(())
}

impl Settings {
    pub fn resolve(config: &ProviderConfig, env: Env) -> Result<Self, ProviderError> {
        validate_with(config, env).map_err(|e| ProviderError::Config(e.to_string()))?;
        let module = choose_module(credential(config, "module"), env)
            .map_err(|m| ProviderError::Config(format!("credentials.module: {m}")))?;
        let pin = Zeroizing::new(credential(config, "pin").unwrap_or_default().to_owned());
        let retry = match env(ENV_RETRY_BASE_MS) {
            None => RetryPolicy::with_base(Duration::from_millis(100)),
            Some(_) => {
                RetryPolicy::from_env(ENV_RETRY_BASE_MS, env).map_err(ProviderError::Config)?
            }
        };
        Ok(Self {
            module,
            token: config.key_collection.clone(),
            pin,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Secret;

    fn config(label: &str, pairs: &[(&str, &str)]) -> ProviderConfig {
        ProviderConfig {
            kind: super::super::super::ProviderKind::parse("pkcs11").unwrap(),
            key_collection: label.into(),
            credentials: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new((*v).to_owned())))
                .collect(),
        }
    }

    fn fixture() -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("keymgmt-p11cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("libreal.so");
        std::fs::write(&real, b"not a library").unwrap();
        let link = dir.join("liblink.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let other = dir.join("libother.so");
        std::fs::write(&other, b"x").unwrap();
        (real, link, other)
    }

    #[test]
    fn the_allow_list_decides_which_module_loads() {
        let (real, link, other) = fixture();
        let list = format!("{}:{}", link.display(), other.display());
        let env = move |name: &str| (name == ENV_MODULES).then(|| list.clone());
        let canonical = std::fs::canonicalize(&real).unwrap();
        // The default is the first entry; another spelling of it is accepted.
        assert_eq!(choose_module(None, &env).unwrap(), canonical);
        assert_eq!(
            choose_module(Some(real.to_str().unwrap()), &env).unwrap(),
            canonical
        );
        let pin = ("pin", "1234");
        assert!(
            validate_with(
                &config("tok", &[pin, ("module", other.to_str().unwrap())]),
                &env
            )
            .is_ok()
        );
        let err = validate_with(
            &config("tok", &[pin, ("module", "/usr/lib/libc.so.6")]),
            &env,
        )
        .unwrap_err();
        assert_eq!(err.field, "credentials.module");
        assert!(err.message.contains("not in the server's"), "{err}");
        let err =
            validate_with(&config("tok", &[pin, ("module", "libsofthsm2.so")]), &env).unwrap_err();
        assert!(err.message.contains("not an absolute path"), "{err}");
        // Unset: nothing is loaded.
        let none = |_: &str| None;
        let err = validate_with(&config("tok", &[pin]), &none).unwrap_err();
        assert!(err.message.contains("is not set"), "{err}");
        let bare = |name: &str| (name == ENV_MODULES).then(|| "libsofthsm2.so".to_owned());
        assert!(
            allowed_modules(&bare)
                .unwrap_err()
                .contains("not an absolute path")
        );
    }

    #[test]
    fn labels_and_pins() {
        let (real, _, _) = fixture();
        let list = real.display().to_string();
        let env = move |name: &str| (name == ENV_MODULES).then(|| list.clone());
        let field = |c: ProviderConfig| validate_with(&c, &env).unwrap_err().field;
        assert_eq!(field(config("", &[("pin", "1")])), "key_collection");
        assert_eq!(
            field(config(&"x".repeat(33), &[("pin", "1")])),
            "key_collection"
        );
        assert_eq!(field(config("tok ", &[("pin", "1")])), "key_collection");
        assert_eq!(field(config("tok", &[])), "credentials.pin");
        assert_eq!(field(config("tok", &[("pin", "a\nb")])), "credentials.pin");
        let secret = "s3cret-pin-value";
        let err =
            validate_with(&config("tok", &[("pin", &format!("{secret}\n"))]), &env).unwrap_err();
        assert!(!err.to_string().contains(secret));
        let s = Settings::resolve(&config("tok", &[("pin", secret)]), &env).unwrap();
        assert!(!format!("{s:?}").contains(secret));
        assert_eq!(s.token, "tok");
    }
}
