//! What every provider's client needs, kept here once instead of copied
//! per cloud: the retry loop, per-import time accounting, reading the
//! server's environment, extra trusted CA certificates, endpoint URLs, and
//! bounded error details.

pub mod retry;
pub mod timing;

use std::path::Path;

/// A lookup of the server's environment. The real one is [`process_env`];
/// tests pass a map, so that resolution is testable without touching the
/// process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment. Empty values count as unset, as in
/// Vault, so that `AZURE_CLIENT_SECRET=` does not mask a credentials map.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Longest service message kept in an error: cloud errors can be long, and
/// an error must stay readable in a CLI.
const MAX_DETAIL: usize = 400;

/// Cuts `text` to [`MAX_DETAIL`] bytes on a character boundary.
pub fn bounded(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The first line of an error's text, bounded: SDK messages often append
/// troubleshooting links or dumps on later lines.
pub fn first_line(err: &dyn std::fmt::Display) -> String {
    let text = err.to_string();
    bounded(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// An error and its sources on one line: network errors nest their cause.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = first_line(err);
    let mut source = err.source();
    while let Some(s) = source {
        let line = first_line(s);
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    bounded(text)
}

/// What kind of failure a provider's answer is, which decides retries and
/// the status the user sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling (`ThrottlingException`, 429): retried.
    Throttled,
    /// 5xx, `KMSInternalException`, `UNAVAILABLE`: retried.
    Unavailable,
    /// No answer (connection, timeout, a response cut off): retried, but
    /// the request may have taken effect.
    Network,
    /// A missing permission, or bad or expired credentials.
    AccessDenied,
    NotFound,
    AlreadyExists,
    /// The object's state does not allow this (`KMSInvalidStateException`,
    /// `FAILED_PRECONDITION`).
    InvalidState,
    /// Any other refusal.
    Invalid,
}

impl ErrorClass {
    /// Whether another attempt can help.
    pub fn transient(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable | Self::Network)
    }

    /// Whether the request may have taken effect although no success was
    /// seen (a lost response).
    pub fn ambiguous(self) -> bool {
        matches!(self, Self::Network | Self::Unavailable)
    }
}

/// A failed provider call, reduced to what decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub class: ErrorClass,
    /// The service's error code (`AccessDeniedException`,
    /// `PERMISSION_DENIED`), or a description of a failure without an answer.
    pub code: String,
    /// The service's message, bounded.
    pub message: String,
}

impl ApiError {
    pub fn new(class: ErrorClass, code: &str, message: &str) -> Self {
        Self {
            class,
            code: code.to_owned(),
            message: bounded(message.to_owned()),
        }
    }
}

impl ApiError {
    /// The error the user sees for a failed call: a denial names the
    /// permissions the call needs; an outage is a 502; a refusal a 400.
    pub fn to_provider_error(
        &self,
        service: &str,
        what: &str,
        permissions: &str,
    ) -> super::ProviderError {
        use super::ProviderError;
        match self.class {
            ErrorClass::AccessDenied => ProviderError::Permission(format!(
                "{service} denied {what}: {self}; the principal needs {permissions}, or check the provider's credentials"
            )),
            ErrorClass::Throttled | ErrorClass::Unavailable | ErrorClass::Network => {
                ProviderError::Unavailable(format!("{what} failed: {self}"))
            }
            ErrorClass::NotFound
            | ErrorClass::AlreadyExists
            | ErrorClass::InvalidState
            | ErrorClass::Invalid => {
                ProviderError::Rejected(format!("{service} refused {what}: {self}"))
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Reads a PEM file of extra CA certificates named by `variable`, checking
/// that it holds at least one certificate. Returns the file's bytes.
pub fn read_ca_bundle(variable: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("reading {variable} {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{variable} {} holds no PEM certificates",
            path.display()
        ));
    }
    Ok(pem)
}

/// Whether `host` is the local machine. Plain `http://` is allowed only to
/// such hosts (a local proxy or a test double): anywhere else the request
/// signatures and tokens would cross a network in the clear.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL as it may be shown in a message: user information (`user:pw@`)
/// is replaced, since it may hold a secret.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Checks an endpoint URL given by an operator: `https://` with a host,
/// or `http://` to a loopback host; no credentials, query or fragment.
pub fn check_endpoint_url(value: &str) -> Result<(), String> {
    let (scheme, rest) = value.split_once("://").ok_or("must be an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // `[::1]:8443` and `host:443`, but not a bare IPv6 address.
        Some((host, port)) if !host.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    if value.chars().any(char::is_control) || value.contains(char::is_whitespace) {
        return Err("must not contain spaces or control characters".into());
    }
    if host.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("must not carry user information".into());
    }
    if value.contains('?') || value.contains('#') {
        return Err("must not have a query or a fragment".into());
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => {
            Err("must use https (plain http is accepted only for 127.0.0.1 or localhost)".into())
        }
        _ => Err("must be an https:// URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_bounded_on_char_boundaries() {
        let text = bounded("é".repeat(1000));
        assert!(text.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(text.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
        assert_eq!(first_line(&"one\ntwo"), "one");
    }

    #[test]
    fn user_information_is_never_shown() {
        assert_eq!(
            redact_userinfo("https://user:s3cret@kms.example/path@x"),
            "https://<redacted>@kms.example/path@x"
        );
        assert_eq!(
            redact_userinfo("https://kms.example/a@b"),
            "https://kms.example/a@b"
        );
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    #[test]
    fn endpoint_urls() {
        for ok in [
            "https://kms.us-east-1.amazonaws.com",
            "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com/",
            "http://127.0.0.1:4566",
            "http://localhost:4566/",
            "http://[::1]:4566",
            "https://[fd00::1]:8443",
        ] {
            assert!(check_endpoint_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "kms.example.com",
            "http://kms.example.com",
            "ftp://127.0.0.1",
            "https://",
            "https://user:pw@host",
            "https://host/#frag",
            "https://host/?a=b",
            "https://ho st",
            "https://host\n",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad}");
        }
    }
}
