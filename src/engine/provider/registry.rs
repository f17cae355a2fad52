//! The registry of providers, and everything derived from it.
//!
//! A provider is described once, in its own folder, by a [`Descriptor`].
//! [`PROVIDERS`] lists them; [`ProviderKind`] can only name a registered
//! provider, and the API's help, `allowed` lists, OpenAPI enums, support
//! checks and error messages are all computed from the descriptors, so
//! that they cannot drift from the code.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{KmsProvider, Protection, ProviderConfig, ProviderError, Purpose};
use crate::engine::key_type::KeyType;
use crate::framework::error::quote;

/// Every provider compiled into this build, in the order help lists them.
pub static PROVIDERS: &[&Descriptor] = &[
    &super::azure::DESCRIPTOR,
    &super::aws::DESCRIPTOR,
    &super::gcp::DESCRIPTOR,
    &super::pkcs11::DESCRIPTOR,
];

/// One credential key a provider accepts in `credentials`.
#[derive(Debug)]
pub struct Credential {
    pub key: &'static str,
    /// The environment variable that supplies it, if any.
    pub env: Option<&'static str>,
    /// Whether the value is a secret: such values are never echoed.
    pub secret: bool,
    pub description: &'static str,
}

/// A refused provider configuration: which field, and why. The message
/// never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `key_collection`, or `credentials.<key>`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn credential(key: &str, message: impl Into<String>) -> Self {
        Self::new(format!("credentials.{key}"), message)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Builds a connected provider from its configuration.
pub type Connect = fn(&ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError>;

/// Everything Vault needs to know about one provider.
#[derive(Debug)]
pub struct Descriptor {
    /// The API name: `provider=<name>` on `kms/:name`.
    pub name: &'static str,
    /// The product name, for messages and help.
    pub title: &'static str,
    /// What `key_collection` names in this provider.
    pub key_collection: &'static str,
    pub credentials: &'static [Credential],
    /// The purposes each importable key type may have. A type missing
    /// here cannot be distributed to the provider.
    pub support: &'static [(KeyType, &'static [Purpose])],
    /// Rules on a whole purpose set beyond the per-type list (for example
    /// one purpose per key), checked after `support`.
    pub check_purposes: fn(KeyType, &[Purpose]) -> Result<(), String>,
    pub protections: &'static [Protection],
    /// How material reaches the provider, for help and documentation.
    pub import_spec: &'static str,
    /// Whether `kms/:name/key/:key_name/replicate` applies.
    pub replicates: bool,
    /// Checks `key_collection` and the credential values with the
    /// provider's own rules when `kms/:name` is written.
    pub validate: fn(&ProviderConfig) -> Result<(), ConfigError>,
    /// Checks, before any call, that a Vault key can be created in the
    /// provider under `<key>-<unix seconds>` (its naming rules).
    pub check_key_name: fn(&str) -> Result<(), String>,
    pub connect: Connect,
}

/// No rules beyond the per-type list.
pub fn any_purposes(_: KeyType, _: &[Purpose]) -> Result<(), String> {
    Ok(())
}

impl Descriptor {
    /// The purposes `key_type` may have here, or `None` when the provider
    /// cannot import the type.
    pub fn purposes_for(&self, key_type: KeyType) -> Option<&'static [Purpose]> {
        self.support
            .iter()
            .find(|(t, _)| *t == key_type)
            .map(|(_, purposes)| *purposes)
    }

    pub fn supported_types(&self) -> impl Iterator<Item = KeyType> + '_ {
        self.support.iter().map(|(t, _)| *t)
    }

    pub fn credential(&self, key: &str) -> Option<&'static Credential> {
        self.credentials.iter().find(|c| c.key == key)
    }

    pub fn credential_keys(&self) -> Vec<&'static str> {
        self.credentials.iter().map(|c| c.key).collect()
    }

    /// Whether the provider can import `key_type` with these purposes and
    /// protection; the error names the field and what is allowed.
    pub fn check_support(
        &self,
        key_type: KeyType,
        purposes: &[Purpose],
        protection: Protection,
    ) -> Result<(), String> {
        let provider = self.name;
        let Some(allowed) = self.purposes_for(key_type) else {
            return Err(format!(
                "key type {key_type} is not supported by the {provider} provider; supported types: {}",
                join(self.supported_types().map(KeyType::as_str))
            ));
        };
        if let Some(bad) = purposes.iter().find(|p| !allowed.contains(p)) {
            return Err(format!(
                "purpose: {bad:?} is not supported for {key_type} keys by the {provider} provider; allowed: {}",
                join(allowed.iter().map(|p| p.as_str())),
                bad = bad.as_str(),
            ));
        }
        (self.check_purposes)(key_type, purposes).map_err(|m| format!("purpose: {m}"))?;
        if !self.protections.contains(&protection) {
            return Err(format!(
                "protection: the {provider} provider supports only {}",
                join(self.protections.iter().map(|p| format!("{:?}", p.as_str())))
            ));
        }
        Ok(())
    }

    /// The generic checks of a credentials map: every key known. The
    /// unknown key is not echoed: `credentials=<secret>=1`, a pasted secret
    /// whose key name was forgotten, must not end up in an error.
    pub fn check_credential_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let unknown = keys
            .into_iter()
            .filter(|k| self.credential(k).is_none())
            .count();
        if unknown > 0 {
            return Err(ConfigError::new(
                "credentials",
                format!(
                    "{unknown} unknown key{} for the {} provider (not shown: it may be a secret); allowed keys: {}",
                    if unknown == 1 { "" } else { "s" },
                    self.name,
                    self.credential_keys().join(", ")
                ),
            ));
        }
        Ok(())
    }
}

fn join<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    items
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A registered provider. It can only be made from a name in
/// [`PROVIDERS`], and is stored and shown by that name.
#[derive(Clone, Copy)]
pub struct ProviderKind(&'static Descriptor);

impl ProviderKind {
    pub fn parse(name: &str) -> Option<Self> {
        PROVIDERS.iter().find(|d| d.name == name).map(|d| Self(d))
    }

    /// Like [`Self::parse`], with the error the API gives.
    pub fn parse_field(field: &str, name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            format!(
                "{field}: unsupported provider {}; must be one of {}",
                quote(name),
                names().join(", ")
            )
        })
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    pub fn descriptor(self) -> &'static Descriptor {
        self.0
    }
}

impl PartialEq for ProviderKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ProviderKind {}

impl std::fmt::Debug for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for ProviderKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for ProviderKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("provider {} is not in this build", quote(&name)))
        })
    }
}

/// The API names of every provider, in registry order.
pub fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| PROVIDERS.iter().map(|d| d.name).collect())
}

/// The help text of `key_collection`, one sentence per provider.
pub fn key_collection_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let per_provider: Vec<String> = PROVIDERS
            .iter()
            .map(|d| format!("{}: {}", d.name, d.key_collection))
            .collect();
        format!(
            "Where keys go in the provider. {}. Cannot be changed after creation.",
            per_provider.join("; ")
        )
    })
}

/// The help text of `credentials`: every provider's keys.
pub fn credentials_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let per_provider: Vec<String> = PROVIDERS
            .iter()
            .map(|d| {
                let keys: Vec<String> = d
                    .credentials
                    .iter()
                    .map(|c| match c.env {
                        Some(env) => format!("{} ({env})", c.key),
                        None => c.key.to_owned(),
                    })
                    .collect();
                format!("{}: {}", d.name, keys.join(", "))
            })
            .collect();
        format!(
            "Provider credentials as key=value pairs. Write-only: never returned. {}.",
            per_provider.join("; ")
        )
    })
}

/// A Markdown table of what each provider imports, for the README and the
/// backend help; a test keeps the README's copy identical.
pub fn support_table() -> String {
    let mut table = String::from(
        "| Provider | Key types and purposes | Protection | Import specification |\n|---|---|---|---|\n",
    );
    for d in PROVIDERS {
        let types: Vec<String> = d
            .support
            .iter()
            .map(|(t, purposes)| {
                format!(
                    "{t} ({})",
                    purposes
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        let protections: Vec<&str> = d.protections.iter().map(|p| p.as_str()).collect();
        table.push_str(&format!(
            "| {} (`{}`) | {} | {} | {} |\n",
            d.title,
            d.name,
            types.join("<br>"),
            protections.join(", "),
            d.import_spec
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for d in PROVIDERS {
            assert!(seen.insert(d.name), "duplicate provider {}", d.name);
            let kind = ProviderKind::parse(d.name).unwrap();
            assert_eq!(kind.as_str(), d.name);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<ProviderKind>(&json).unwrap(), kind);
            assert!(!d.support.is_empty() && !d.protections.is_empty());
            assert!(d.credentials.iter().all(|c| !c.description.is_empty()));
        }
        assert!(ProviderKind::parse("nope").is_none());
        let err = ProviderKind::parse_field("provider", "nope").unwrap_err();
        assert!(
            err.starts_with("provider: unsupported provider \"nope\""),
            "{err}"
        );
        assert!(serde_json::from_str::<ProviderKind>("\"nope\"").is_err());
    }

    #[test]
    fn unknown_credentials_are_counted_never_echoed() {
        let azure = ProviderKind::parse("azurekeyvault").unwrap().descriptor();
        let secret = "s3cr3t-pasted-value";
        let err = azure
            .check_credential_keys(["tenant_id", secret])
            .unwrap_err();
        assert_eq!(err.field, "credentials");
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(err.message.contains("1 unknown key"), "{err}");
        assert!(err.message.contains("tenant_id, client_id"), "{err}");
        assert!(azure.check_credential_keys(["tenant_id"]).is_ok());
    }

    #[test]
    fn the_readme_table_is_the_registry() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&support_table()),
            "README.md must contain the table from registry::support_table():\n{}",
            support_table()
        );
    }
}
