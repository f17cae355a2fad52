//! AutoMTLS: our own certificate, and verifiers that pin the host's.
//!
//! The host's certificate is a self-signed P-521 CA certificate, which
//! webpki refuses as an end entity (`CaUsedAsEndEntity`). There is no chain
//! to build anyway: the host hands us its exact certificate in
//! `PLUGIN_CLIENT_CERT`, so both verifiers compare the presented DER byte for
//! byte and then check the handshake signature with aws-lc-rs, which (unlike
//! ring) verifies `ecdsa_secp521r1_sha512`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Both sides of go-plugin negotiate HTTP/2 by ALPN; grpc-go ≥ 1.67 drops
/// connections without it.
const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("generating the plugin certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate this process presents everywhere: as the server on its
/// own listener and as the client on brokered connections to the host.
pub struct PluginIdentity {
    pub certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl PluginIdentity {
    /// A fresh self-signed P-256 certificate for `localhost`, with both
    /// server and client EKUs, as Go's verifier requires for each role.
    pub fn generate() -> Result<Self, TlsSetupError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "HashiCorp");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
        ];
        // Backdated like go-plugin's own certificates, to absorb clock skew.
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(30);
        params.not_after = now + time::Duration::days(365 * 30);
        let certificate = params.self_signed(&key)?;
        Ok(Self {
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// TLS for the listener the host dials: client certificate mandatory and
/// pinned to the host's.
pub fn server_config(
    identity: &PluginIdentity,
    host_certificate: &CertificateDer<'static>,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeer::new(host_certificate.clone(), &provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// TLS for dialing the host's brokered server: its certificate pinned, ours
/// presented as the client certificate.
pub fn client_config(
    identity: &PluginIdentity,
    host_certificate: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeer::new(host_certificate.clone(), &provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Accepts exactly one certificate, in either role.
#[derive(Debug)]
struct PinnedPeer {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedPeer {
    fn new(pinned: CertificateDer<'static>, provider: &CryptoProvider) -> Self {
        Self {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if presented.as_ref() == self.pinned.as_ref() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ClientCertVerifier for PinnedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Must include ECDSA_NISTP521_SHA512, or Go sends no client certificate.
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A host-like identity: self-signed P-521 CA certificate, as go-plugin makes.
    fn host_like() -> PluginIdentity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        PluginIdentity {
            certificate: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    async fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<Vec<u8>, std::io::Error> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_side = tokio::spawn(async move {
            let mut tls = acceptor.accept(a).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf.to_vec())
        });
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, b).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));
        server_side.await.unwrap()
    }

    #[tokio::test]
    async fn host_p521_and_plugin_p256_authenticate_each_other() {
        let host = host_like();
        let plugin = PluginIdentity::generate().unwrap();
        // Plugin listener, host dials (host presents its P-521 client cert).
        let server = server_config(&plugin, &host.certificate).unwrap();
        let client = client_config(&host, &plugin.certificate).unwrap();
        assert_eq!(handshake(server, client).await.unwrap(), b"ping");
        // Host's broker listener, plugin dials.
        let server = server_config(&host, &plugin.certificate).unwrap();
        let client = client_config(&plugin, &host.certificate).unwrap();
        assert_eq!(handshake(server, client).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn any_other_certificate_is_refused() {
        let host = host_like();
        let impostor = host_like();
        let plugin = PluginIdentity::generate().unwrap();
        let server = server_config(&plugin, &host.certificate).unwrap();
        let client = client_config(&impostor, &plugin.certificate).unwrap();
        assert!(handshake(server, client).await.is_err());
    }

    #[test]
    fn p521_is_advertised() {
        let host = host_like();
        let verifier = PinnedPeer::new(host.certificate, &aws_lc_rs::default_provider());
        assert!(
            ClientCertVerifier::supported_verify_schemes(&verifier)
                .contains(&SignatureScheme::ECDSA_NISTP521_SHA512)
        );
    }
}
