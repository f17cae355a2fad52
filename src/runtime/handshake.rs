//! The go-plugin start-up contract: what the host puts in our environment,
//! and the one line we print on stdout in return.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The magic cookie every Vault/OpenBao backend plugin is launched with.
/// Database plugins get a different cookie; refusing it keeps the host's
/// type probing from mistaking us for a database plugin.
pub const COOKIE_KEY: &str = "VAULT_BACKEND_PLUGIN";
pub const COOKIE_VALUE: &str = "6669da05-b1c8-4f49-97d9-c8e5bed98e20";

/// go-plugin core protocol version (first handshake field).
const CORE_PROTOCOL_VERSION: u32 = 1;
/// Vault backend plugin protocol version: gRPC with AutoMTLS.
pub const APP_PROTOCOL_VERSION: u32 = 5;

/// Why the process refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "this binary is a Vault/OpenBao plugin and is not meant to be run directly; \
         register it with `vault plugin register` and enable it with `vault secrets enable`"
    )]
    NotLaunchedByHost,
    #[error(
        "the host offers plugin protocol versions {offered:?}, but this plugin speaks only version 5"
    )]
    UnsupportedProtocol { offered: String },
    #[error(
        "the host did not enable AutoMTLS (no PLUGIN_CLIENT_CERT); this plugin needs a host with \
         protocol version 5 support (Vault 1.12+ or OpenBao)"
    )]
    MissingClientCertificate,
    #[error("PLUGIN_CLIENT_CERT is not a PEM certificate")]
    InvalidClientCertificate,
}

/// The parts of the launch environment the runtime depends on.
pub struct HostEnvironment {
    /// DER of the host's AutoMTLS certificate: pinned in both TLS directions.
    pub host_certificate: CertificateDer<'static>,
    /// Where to create our listening socket.
    pub socket_dir: std::path::PathBuf,
}

impl HostEnvironment {
    /// Reads and checks the environment the host launched us with.
    pub fn from_env() -> Result<Self, HandshakeError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, HandshakeError> {
        if get(COOKIE_KEY).as_deref() != Some(COOKIE_VALUE) {
            return Err(HandshakeError::NotLaunchedByHost);
        }
        let offered = get("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
        if !offered
            .split(',')
            .any(|v| v.trim().parse::<u32>() == Ok(APP_PROTOCOL_VERSION))
        {
            return Err(HandshakeError::UnsupportedProtocol { offered });
        }
        let pem = get("PLUGIN_CLIENT_CERT")
            .filter(|p| !p.trim().is_empty())
            .ok_or(HandshakeError::MissingClientCertificate)?;
        let host_certificate = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| HandshakeError::InvalidClientCertificate)?;
        let socket_dir = get("PLUGIN_UNIX_SOCKET_DIR")
            .filter(|d| !d.is_empty())
            .or_else(|| get("TMPDIR").filter(|d| !d.is_empty()))
            .unwrap_or_else(|| "/tmp".to_owned())
            .into();
        Ok(Self {
            host_certificate,
            socket_dir,
        })
    }
}

/// The handshake line: `1|5|unix|<path>|grpc|<cert>`. The certificate is
/// the DER in base64 *without padding*: Go decodes it with RawStdEncoding,
/// which rejects `=`.
pub fn handshake_line(socket_path: &std::path::Path, server_cert: &CertificateDer<'_>) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|{}",
        socket_path.display(),
        STANDARD_NO_PAD.encode(server_cert.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    fn lookup<'a>(vars: &'a HashMap<&'a str, String>) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.get(k).cloned()
    }

    fn host_vars() -> HashMap<&'static str, String> {
        HashMap::from([
            (COOKIE_KEY, COOKIE_VALUE.to_owned()),
            ("PLUGIN_PROTOCOL_VERSIONS", "5".to_owned()),
            ("PLUGIN_CLIENT_CERT", cert_pem()),
            ("TMPDIR", "/var/tmp".to_owned()),
        ])
    }

    #[test]
    fn accepts_the_host_environment() {
        let vars = host_vars();
        let env = HostEnvironment::from_lookup(lookup(&vars)).unwrap();
        assert_eq!(env.socket_dir, std::path::PathBuf::from("/var/tmp"));
        assert!(env.host_certificate.len() > 100);
    }

    #[test]
    fn refuses_missing_or_database_cookie() {
        let mut vars = host_vars();
        vars.remove(COOKIE_KEY);
        assert!(matches!(
            HostEnvironment::from_lookup(lookup(&vars)),
            Err(HandshakeError::NotLaunchedByHost)
        ));
        vars.insert(COOKIE_KEY, "926a0820-aea2-be28-51d6-83cdf00e8edb".into());
        assert!(matches!(
            HostEnvironment::from_lookup(lookup(&vars)),
            Err(HandshakeError::NotLaunchedByHost)
        ));
    }

    #[test]
    fn refuses_v4_only_hosts_and_missing_certificates() {
        let mut vars = host_vars();
        vars.insert("PLUGIN_PROTOCOL_VERSIONS", "3,4".into());
        assert!(matches!(
            HostEnvironment::from_lookup(lookup(&vars)),
            Err(HandshakeError::UnsupportedProtocol { .. })
        ));
        vars.insert("PLUGIN_PROTOCOL_VERSIONS", "4, 5".into());
        vars.remove("PLUGIN_CLIENT_CERT");
        assert!(matches!(
            HostEnvironment::from_lookup(lookup(&vars)),
            Err(HandshakeError::MissingClientCertificate)
        ));
        vars.insert("PLUGIN_CLIENT_CERT", "garbage".into());
        assert!(matches!(
            HostEnvironment::from_lookup(lookup(&vars)),
            Err(HandshakeError::InvalidClientCertificate)
        ));
    }

    #[test]
    fn handshake_line_uses_unpadded_base64() {
        let der = CertificateDer::from(vec![0xffu8; 10]);
        let line = handshake_line(std::path::Path::new("/tmp/plugin1"), &der);
        assert_eq!(line, "1|5|unix|/tmp/plugin1|grpc|/////////////w");
    }
}
