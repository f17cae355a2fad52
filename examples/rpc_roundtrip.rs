//! Measures the plugin's own share of a host call: the round trip of a
//! trivial RPC (`PluginVersion/Version`) over the same Unix socket, mutual
//! TLS and HTTP/2 that the host uses, from a client in this process.
//!
//! Run: `cargo run --release --example rpc_roundtrip [-- N]` after
//! `cargo build --release`. Used by `scripts/bench-runtime`.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use vault_plugin_secrets_keymgmt::runtime::broker;
use vault_plugin_secrets_keymgmt::runtime::handshake::{COOKIE_KEY, COOKIE_VALUE};
use vault_plugin_secrets_keymgmt::runtime::proto::{logical, plugin};
use vault_plugin_secrets_keymgmt::runtime::tls::{PluginIdentity, client_config};

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let host = PluginIdentity::generate()?;
    let tmp = std::env::temp_dir();
    let mut child = Command::new("target/release/vault-plugin-secrets-keymgmt")
        .env(COOKIE_KEY, COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5")
        .env("PLUGIN_CLIENT_CERT", pem(&host.certificate))
        .env("TMPDIR", &tmp)
        .env("KEYMGMT_LOG_LEVEL", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let fields: Vec<&str> = line.trim().split('|').collect();
    let plugin_cert = base64::engine::general_purpose::STANDARD_NO_PAD.decode(fields[5])?;
    let info = plugin::ConnInfo {
        service_id: 0,
        network: fields[2].to_owned(),
        address: fields[3].to_owned(),
        knock: None,
    };
    let tls = Arc::new(client_config(&host, &plugin_cert.into())?);
    let channel = broker::dial(&info, tls).await?;
    let mut client = logical::plugin_version_client::PluginVersionClient::new(channel);
    for _ in 0..200 {
        client.version(logical::Empty {}).await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.version(logical::Empty {}).await?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "plugin RPC round trip (Version, {n} calls, one client): p50 {:.0} us, p99 {:.0} us",
        at(0.5),
        at(0.99)
    );
    // SIGTERM: the plugin exits and removes its socket.
    drop(client);
    Command::new("kill").arg(child.id().to_string()).status()?;
    child.wait()?;
    Ok(())
}
