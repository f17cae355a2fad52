//! Request decoding end to end: sequences of protocol requests (operation,
//! path, JSON data, as the host sends a gRPC HandleRequest) through the
//! real keymgmt backend (routing, field coercion, handlers, stores) on
//! in-memory storage, with in-process providers that always succeed, and
//! one provider (`kms/down`) that cannot be reached.
//!
//! Input: up to 8 lines, each `<operation> <path> <data>`. `write` is done
//! as the host does it: an existence check, then create or update.
//! Storage starts with a key of every type, a provider of every kind and
//! some distributions. Requests that would generate an RSA key are skipped
//! (50 ms to seconds each would starve the fuzzer); AES and EC keys are
//! generated for real.
//!
//! Properties: no panic; never a 500 (storage never fails here); every
//! reply is well formed (JSON data, or an error with a status and a
//! message); a refused write and any read change nothing in storage; no
//! reply holds a credential (values marked `S3CR3T`) or key material.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keymgmt_fuzz::{runtime, sample};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vault_plugin_secrets_keymgmt::engine::backend;
use vault_plugin_secrets_keymgmt::engine::key_type::KeyType;
use vault_plugin_secrets_keymgmt::engine::keys::{Key, KeyStore, KeyVersion};
use vault_plugin_secrets_keymgmt::engine::material::{KeyMaterial, PrivateJwk};
use vault_plugin_secrets_keymgmt::engine::provider::{
    ImportRequest, ImportSession, KmsProvider, NewId, ProviderConfig, ProviderConnector,
    ProviderError, Target, VersionState,
};
use vault_plugin_secrets_keymgmt::framework::path::is_name;
use vault_plugin_secrets_keymgmt::runtime::backend::LogicalBackend;
use vault_plugin_secrets_keymgmt::runtime::proto::pb;
use vault_plugin_secrets_keymgmt::runtime::storage::{InMemoryStorage, Storage, StorageEntry};
use zeroize::Zeroizing;

/// Marks credential values: no reply may contain it unless the fuzzer put
/// it somewhere that is not a credential.
const SECRET_MARK: &str = "S3CR3T";

struct Session;

#[async_trait::async_trait]
impl ImportSession for Session {
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError> {
        Ok(format!("fake-{}", request.version))
    }
    fn touched(&self) -> bool {
        true
    }
    async fn finish(self: Box<Self>) {}
}

struct Provider;

#[async_trait::async_trait]
impl KmsProvider for Provider {
    fn begin_import<'a>(&'a self, _target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(Session)
    }
    async fn set_enabled(
        &self,
        _target: &Target,
        _versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        Ok(Vec::new())
    }
    async fn remove(
        &self,
        _target: &Target,
        _versions: &[VersionState<'_>],
        _unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn replicate(
        &self,
        _target: &Target,
        _versions: &[VersionState<'_>],
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

struct Connector;

impl ProviderConnector for Connector {
    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
        if config.key_collection == "unreachable" {
            return Err(ProviderError::Unavailable("fuzz: unreachable".into()));
        }
        Ok(Arc::new(Provider))
    }
}

type Dump = BTreeMap<String, Vec<u8>>;

async fn dump(storage: &InMemoryStorage) -> Dump {
    let mut out = Dump::new();
    let mut folders = vec![String::new()];
    while let Some(prefix) = folders.pop() {
        for child in storage.list(&prefix).await.unwrap() {
            let path = format!("{prefix}{child}");
            if child.ends_with('/') {
                folders.push(path);
            } else if let Some(entry) = storage.get(&path).await.unwrap() {
                out.insert(path, entry.value.to_vec());
            }
        }
    }
    out
}

/// What a reply is, in HTTP terms; panics on a malformed or 500 reply.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Status(u16),
}

fn classify(reply: &pb::HandleRequestReply, visible: &mut String) -> Outcome {
    match (&reply.response, &reply.err) {
        (Some(_), Some(_)) => panic!("a reply with both a response and an error"),
        (None, Some(err)) => {
            visible.push_str(&err.err_msg);
            match err.err_type {
                5 => Outcome::Status(405),
                6 => Outcome::Status(404),
                _ => panic!("a 500 (err_type {}): {}", err.err_type, err.err_msg),
            }
        }
        (None, None) => Outcome::Ok,
        (Some(resp), None) => {
            visible.push_str(&resp.data);
            resp.warnings.iter().for_each(|w| visible.push_str(w));
            let data: Value = serde_json::from_str(&resp.data).expect("reply data is JSON");
            let data = data.as_object().expect("reply data is an object");
            if let Some(status) = data.get("http_status_code") {
                let status = status.as_u64().expect("numeric status");
                assert!(
                    matches!(status, 404 | 405 | 502),
                    "unexpected raw status {status}"
                );
                let body = STANDARD
                    .decode(data["http_raw_body"].as_str().expect("raw body"))
                    .expect("raw body is base64");
                let body: Value = serde_json::from_slice(&body).expect("raw body is JSON");
                let message = body["errors"][0].as_str().expect("an error message");
                assert!(!message.is_empty(), "empty error message");
                visible.push_str(message);
                Outcome::Status(status as u16)
            } else if let Some(error) = data.get("error") {
                let message = error.as_str().expect("error is a string");
                assert!(!message.is_empty(), "empty error message");
                Outcome::Status(400)
            } else {
                Outcome::Ok
            }
        }
    }
}

fn request(operation: &str, path: &str, data: &str) -> pb::Request {
    pb::Request {
        operation: operation.into(),
        path: path.into(),
        data: data.into(),
        ..Default::default()
    }
}

/// Sends one request as the host would; returns the operation used.
async fn send(
    backend: &dyn LogicalBackend,
    operation: &str,
    path: &str,
    data: &str,
    visible: &mut String,
) -> (String, pb::HandleRequestReply) {
    let mut operation = operation.to_owned();
    if operation == "write" {
        let check = backend.existence_check(request("update", path, data)).await;
        if let Some(err) = &check.err {
            panic!("existence check failed (a 500): {}", err.err_msg);
        }
        visible.push_str(&format!("{check:?}"));
        operation = if check.check_found && !check.exists {
            "create"
        } else {
            "update"
        }
        .into();
    }
    let reply = backend
        .handle_request(request(&operation, path, data))
        .await;
    (operation, reply)
}

/// Whether the request would generate an RSA key (see the module docs).
fn generates_rsa(state: &Dump, operation: &str, path: &str, data: &str) -> bool {
    if !matches!(operation, "create" | "update" | "write") {
        return false;
    }
    let stored_type = |name: &str| {
        state
            .get(&format!("key/{name}"))
            .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
            .and_then(|v| v["type"].as_str().map(str::to_owned))
    };
    let rsa = |t: &str| t.starts_with("rsa-") && t.parse::<KeyType>().is_ok();
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["key", name] if is_name(name) && stored_type(name).is_none() => {
            let body = if data.trim().is_empty() {
                Value::Null
            } else {
                match serde_json::from_str::<Value>(data) {
                    Ok(v) => v,
                    Err(_) => return false,
                }
            };
            match body.get("type") {
                None => body.is_null() || body.is_object(),
                Some(Value::String(s)) => rsa(s),
                Some(_) => false,
            }
        }
        ["key", name, "rotate"] => stored_type(name).is_some_and(|t| rsa(&t)),
        _ => false,
    }
}

/// The request data with credentials removed: what may show in replies.
fn public_part(data: &str) -> String {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(mut map)) => {
            map.remove("credentials");
            Value::Object(map).to_string()
        }
        _ => data.to_owned(),
    }
}

/// Strings that would reveal a key's private material if a reply held
/// them: base64 (both alphabets, all three alignments) and hex of a slice
/// of every private JWK member.
fn needles(m: &KeyMaterial) -> Vec<String> {
    let members: Vec<Vec<u8>> = match m.private_jwk().expect("private JWK") {
        PrivateJwk::Rsa(j) => [&j.d, &j.p, &j.q]
            .iter()
            .map(|s| URL_SAFE_NO_PAD.decode(s.as_str()).unwrap())
            .collect(),
        PrivateJwk::Ec(j) => vec![URL_SAFE_NO_PAD.decode(&j.d).unwrap()],
        PrivateJwk::Oct(j) => vec![URL_SAFE_NO_PAD.decode(&j.k).unwrap()],
    };
    let mut out = Vec::new();
    for bytes in members {
        for shift in 0..3 {
            let chunk = &bytes[4 + shift..4 + shift + 24];
            out.push(STANDARD.encode(chunk));
            out.push(URL_SAFE_NO_PAD.encode(chunk));
        }
        out.push(bytes[4..20].iter().map(|b| format!("{b:02x}")).collect());
    }
    out
}

/// The key material in a storage dump, by its stored (base64) form.
fn materials(state: &Dump) -> Vec<(KeyType, String)> {
    let mut out = Vec::new();
    for (path, raw) in state {
        if !path.starts_with("key/") {
            continue;
        }
        let record: Value = serde_json::from_slice(raw).expect("key record is JSON");
        let key_type: KeyType = record["type"].as_str().unwrap().parse().unwrap();
        for version in record["versions"].as_object().unwrap().values() {
            out.push((key_type, version["material"].as_str().unwrap().to_owned()));
        }
    }
    out
}

struct Initial {
    state: Dump,
    needles: BTreeMap<String, Vec<String>>,
}

const SEEDED: [(&str, &str); 6] = [
    (
        "kms/aws",
        r#"{"provider":"awskms","key_collection":"us-east-1","credentials":{"access_key":"AKIAFUZZEXAMPLE","secret_key":"S3CR3T-aws-secret-key"}}"#,
    ),
    (
        "kms/azure",
        r#"{"provider":"azurekeyvault","key_collection":"vault1","credentials":{"tenant_id":"11111111-2222-3333-4444-555555555555","client_id":"00000000-0000-0000-0000-000000000001","client_secret":"S3CR3T-azure-client-secret"}}"#,
    ),
    (
        "kms/gcp",
        r#"{"provider":"gcpckms","key_collection":"projects/p/locations/global/keyRings/r"}"#,
    ),
    (
        "kms/down",
        r#"{"provider":"azurekeyvault","key_collection":"unreachable"}"#,
    ),
    (
        "kms/aws/key/k-aes256-gcm96",
        r#"{"purpose":"encrypt,decrypt"}"#,
    ),
    (
        "kms/azure/key/k-ecdsa-p256",
        r#"{"purpose":"sign,verify","protection":"hsm"}"#,
    ),
];

/// Storage as the fuzz inputs find it, made once with the engine itself.
fn initial() -> &'static Initial {
    static INITIAL: OnceLock<Initial> = OnceLock::new();
    INITIAL.get_or_init(|| {
        runtime().block_on(async {
            let storage = InMemoryStorage::new();
            let keys = KeyStore::new(Arc::new(storage.clone()));
            for t in KeyType::ALL {
                let m = sample(t);
                let version = KeyVersion {
                    creation_time: "2026-01-01T00:00:00Z".into(),
                    material: m.clone(),
                    public_key: m.public_key_pem(),
                };
                keys.put(Key {
                    name: format!("k-{t}"),
                    key_type: t,
                    deletion_allowed: false,
                    min_enabled_version: 1,
                    latest_version: 1,
                    versions: [(1, Arc::new(version))].into(),
                    replica_regions: Vec::new(),
                    auto_rotate_period: 0,
                })
                .await
                .unwrap();
            }
            let backend = backend(Arc::new(storage.clone()), Arc::new(Connector));
            backend.initialize().await.unwrap();
            let mut ignored = String::new();
            for (path, data) in SEEDED.into_iter().chain([
                ("kms/gcp/key/k-rsa-2048", r#"{"purpose":"decrypt"}"#),
                ("key/k-aes256-gcm96/rotate", ""),
                ("key/k-aes256-gcm96", r#"{"min_enabled_version":2}"#),
            ]) {
                let (_, reply) = send(&backend, "write", path, data, &mut ignored).await;
                assert_eq!(
                    classify(&reply, &mut ignored),
                    Outcome::Ok,
                    "seeding {path}: {reply:?}"
                );
            }
            let state = dump(&storage).await;
            let needles = materials(&state)
                .into_iter()
                .map(|(t, b64)| {
                    let m =
                        KeyMaterial::from_bytes(t, Zeroizing::new(STANDARD.decode(&b64).unwrap()))
                            .unwrap();
                    (b64, needles(&m))
                })
                .collect();
            Initial { state, needles }
        })
    })
}

async fn run(initial: &Initial, text: &str) {
    let storage = InMemoryStorage::new();
    for (key, value) in &initial.state {
        storage
            .put(StorageEntry {
                key: key.clone(),
                value: Zeroizing::new(value.clone()),
            })
            .await
            .unwrap();
    }
    let backend = backend(Arc::new(storage.clone()), Arc::new(Connector));
    backend.initialize().await.unwrap();
    let mut public = String::new();
    let mut replies = Vec::new();
    for line in text.lines().take(8) {
        let (operation, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (path, data) = rest.split_once(' ').unwrap_or((rest, ""));
        let before = dump(&storage).await;
        if generates_rsa(&before, operation, path, data) {
            continue;
        }
        public.push_str(path);
        public.push_str(&public_part(data));
        let mut visible = String::new();
        let (operation, reply) = send(&backend, operation, path, data, &mut visible).await;
        let outcome = classify(&reply, &mut visible);
        let writes = matches!(operation.as_str(), "create" | "update" | "delete");
        if operation != "rollback" && (!writes || outcome != Outcome::Ok) {
            let after = dump(&storage).await;
            assert!(
                before == after,
                "{operation} {path} ({outcome:?}) changed storage: {:?}",
                after.keys().collect::<Vec<_>>()
            );
        }
        if !public.contains(SECRET_MARK) {
            assert!(
                !visible.contains(SECRET_MARK),
                "a credential in a reply: {visible}"
            );
        }
        replies.push(visible);
    }
    let state = dump(&storage).await;
    for (t, b64) in materials(&state) {
        let found;
        let needles = match initial.needles.get(&b64) {
            Some(n) => n,
            None => {
                let m = KeyMaterial::from_bytes(t, Zeroizing::new(STANDARD.decode(&b64).unwrap()))
                    .expect("stored material loads");
                found = needles(&m);
                &found
            }
        };
        // A needle the input itself holds may come back in an echo of the
        // input (an unknown field's name, say): that reveals nothing.
        for needle in needles.iter().filter(|n| !text.contains(n.as_str())) {
            for reply in &replies {
                assert!(
                    !reply.contains(needle.as_str()),
                    "key material in a reply: {reply}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Made outside the runtime: `initial` blocks on it the first time.
    let initial = initial();
    runtime().block_on(run(initial, text));
});
