//! Handler errors, and how each reaches the user as an HTTP status.

/// Longest excerpt of user input quoted back in an error message.
const QUOTE_LIMIT: usize = 64;

/// An error a handler returns. The variant decides the HTTP status; the
/// message is shown to the user, so it must never carry a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 400: the request is wrong; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 404: the named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path does not support the operation.
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// 404: no path matches.
    #[error("unsupported path")]
    UnsupportedPath,
    /// 500: our fault or a dependency's (storage).
    #[error("{0}")]
    Internal(String),
    /// 502: a service behind Vault (a KMS provider) could not be reached
    /// or failed; repeating the request may succeed.
    #[error("{0}")]
    BadGateway(String),
    /// This node is an HA standby and the request writes: the host
    /// forwards it to the active node when the error carries
    /// [`READ_ONLY`], so the user never sees it.
    #[error("{READ_ONLY}: this node is a standby; the request is forwarded to the active node")]
    ReadOnly,
}

/// The text the host looks for (`logical.ShouldForward`) to forward a
/// request from a standby to the active node.
pub const READ_ONLY: &str = "cannot write to readonly storage";

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The HTTP status the host answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) | Self::UnsupportedPath => 404,
            Self::UnsupportedOperation => 405,
            Self::Internal(_) | Self::ReadOnly => 500,
            Self::BadGateway(_) => 502,
        }
    }

    /// The same error with `context` in front of its message.
    pub fn context(self, context: &str) -> Self {
        let with = |m: String| format!("{context}: {m}");
        match self {
            Self::BadRequest(m) => Self::BadRequest(with(m)),
            Self::NotFound(m) => Self::NotFound(with(m)),
            Self::Internal(m) => Self::Internal(with(m)),
            Self::BadGateway(m) => Self::BadGateway(with(m)),
            other => other,
        }
    }
}

impl From<crate::runtime::storage::StorageError> for Error {
    fn from(err: crate::runtime::storage::StorageError) -> Self {
        Self::Internal(err.to_string())
    }
}

/// Quotes user input for an error message, shortened so that an oversized
/// value cannot turn the error itself into a huge response.
pub fn quote(input: &str) -> String {
    if input.chars().count() <= QUOTE_LIMIT {
        format!("{input:?}")
    } else {
        let head: String = input.chars().take(QUOTE_LIMIT).collect();
        format!("{head:?}... ({} bytes)", input.len())
    }
}

/// Why a stored JSON record did not decode, without any of its values:
/// serde's own messages quote the value they stopped at (`invalid type:
/// string "..."`, an unknown variant, a custom parser's input), and a stored
/// record holds key material and credentials. The category and the
/// position are enough to find the damage with the server's raw storage
/// tools.
pub fn stored_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match err.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "JSON cut off",
        Category::Data => "a missing field, or a field of the wrong type or value",
        Category::Io => "a read error",
    };
    format!("{what} at line {} column {}", err.line(), err.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_errors_show_no_values() {
        // Found by the storage_entry fuzz target: serde's message for a
        // bad value quotes it, and put key material into a 500.
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA==";
        // (record, serde's own message quotes the secret, what we show)
        let cases = [
            (
                format!(r#"{{"a": "{secret}"}}"#),
                true,
                "a missing field, or a field of the wrong type or value at line 1 column 36",
            ),
            (
                format!(r#"{{"a": 1, "{secret}": 2}}"#),
                true,
                "a missing field, or a field of the wrong type or value at line 1 column 39",
            ),
            (
                format!(r#"{{"b": "{secret}" x"#),
                false,
                "not valid JSON at line 1 column 38",
            ),
            (
                format!(r#"{{"b": "{secret}""#),
                false,
                "JSON cut off at line 1 column 36",
            ),
        ];
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Record {
            a: u32,
            #[serde(default)]
            b: String,
        }
        for (input, serde_shows, want) in cases {
            let err = serde_json::from_str::<Record>(&input).unwrap_err();
            assert_eq!(err.to_string().contains(secret), serde_shows, "{err}");
            let shown = stored_json_error(&err);
            assert_eq!(shown, want, "{input}");
        }
    }

    #[test]
    fn quote_shortens_long_input() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "x".repeat(1 << 20);
        let quoted = quote(&long);
        assert!(quoted.len() < 100, "{quoted}");
        assert!(quoted.ends_with("(1048576 bytes)"));
    }
}
