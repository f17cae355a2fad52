//! The operations a request can carry.

use std::fmt;

/// Vault's `logical.Operation`, as strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Create,
    Read,
    Update,
    Delete,
    List,
    Help,
    /// Sent by the rollback manager every minute.
    Rollback,
    /// Sent by OpenBao before every request, to let a plugin rewrite paths.
    ResolvePath,
    /// Anything else (`patch`, `renew`, `revoke`, `header`, `scan`, ...).
    Other,
}

impl Operation {
    pub fn parse(wire: &str) -> Self {
        match wire {
            "create" => Self::Create,
            "read" => Self::Read,
            "update" => Self::Update,
            "delete" => Self::Delete,
            "list" => Self::List,
            "help" => Self::Help,
            "rollback" => Self::Rollback,
            "resolve-path" => Self::ResolvePath,
            _ => Self::Other,
        }
    }

    /// Whether requests with this operation may write storage.
    pub fn writes(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Delete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Help => "help",
            Self::Rollback => "rollback",
            Self::ResolvePath => "resolve-path",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
