//! Engine behaviour through the framework, on in-memory storage and the
//! in-process test provider.

use std::sync::Arc;

use serde_json::{Value, json};

use super::KeyManagement;
use super::backend::framework_backend;
use super::provider::testing::TestProvider;
use super::settings::Settings;
use crate::framework::Backend;
use crate::runtime::backend::LogicalBackend;
use crate::runtime::proto::pb;
use crate::runtime::storage::InMemoryStorage;

mod drift;
mod rotation;

struct Harness {
    backend: Backend<super::KeyManagement>,
    provider: TestProvider,
    storage: InMemoryStorage,
}

/// What a request came back as, in HTTP terms.
#[derive(Debug)]
enum Outcome {
    Ok(Value),
    NoContent,
    Status(u16, String),
}

impl Harness {
    /// A mounted backend, initialised as the host does before requests.
    async fn new() -> Self {
        Self::with_settings(Settings::default()).await
    }

    async fn with_settings(settings: Settings) -> Self {
        let storage = InMemoryStorage::new();
        let provider = TestProvider::default();
        let engine = KeyManagement::new(Arc::new(storage.clone()), Arc::new(provider.clone()))
            .with_settings(settings);
        let backend = framework_backend(engine);
        backend.initialize().await.unwrap();
        Self {
            backend,
            provider,
            storage,
        }
    }

    async fn call(&self, operation: &str, path: &str, data: Value) -> Outcome {
        let mut operation = operation.to_owned();
        if operation == "write" {
            let probe = pb::Request {
                operation: "update".into(),
                path: path.into(),
                data: data.to_string(),
                ..Default::default()
            };
            let check = self.backend.existence_check(probe).await;
            operation = if check.check_found && !check.exists {
                "create"
            } else {
                "update"
            }
            .into();
        }
        let request = pb::Request {
            operation,
            path: path.into(),
            data: data.to_string(),
            ..Default::default()
        };
        let reply = self.backend.handle_request(request).await;
        match (reply.response, reply.err) {
            (_, Some(err)) => {
                let status = match err.err_type {
                    3 => err.err_code as u16,
                    5 => 405,
                    6 => 404,
                    _ => 500,
                };
                Outcome::Status(status, err.err_msg)
            }
            (Some(resp), None) => {
                let data: Value = serde_json::from_str(&resp.data).unwrap();
                if let Some(status) = data.get("http_status_code").and_then(Value::as_u64) {
                    use base64::Engine as _;
                    let body = base64::engine::general_purpose::STANDARD
                        .decode(data["http_raw_body"].as_str().unwrap())
                        .unwrap();
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    let message = body["errors"][0].as_str().unwrap_or_default().to_owned();
                    return Outcome::Status(status as u16, message);
                }
                match data.get("error").and_then(Value::as_str) {
                    Some(msg) => Outcome::Status(400, msg.to_owned()),
                    None => Outcome::Ok(data),
                }
            }
            (None, None) => Outcome::NoContent,
        }
    }

    async fn ok(&self, op: &str, path: &str, data: Value) -> Value {
        match self.call(op, path, data).await {
            Outcome::Ok(v) => v,
            Outcome::NoContent => Value::Null,
            other => panic!("{op} {path}: {other:?}"),
        }
    }

    async fn status(&self, op: &str, path: &str, data: Value) -> (u16, String) {
        match self.call(op, path, data).await {
            Outcome::Status(s, m) => (s, m),
            other => panic!("{op} {path}: expected an error, got {other:?}"),
        }
    }

    async fn azure_with(&self, key: &str, key_type: &str) {
        self.ok("write", &format!("key/{key}"), json!({"type": key_type}))
            .await;
        self.ok(
            "write",
            "kms/az",
            json!({"provider": "azurekeyvault", "key_collection": "vault1"}),
        )
        .await;
    }
}

#[tokio::test]
async fn key_create_read_update_and_rules() {
    let h = Harness::new().await;
    h.ok("write", "key/k", json!({"type": "ecdsa-p256"})).await;
    let read = h.ok("read", "key/k", Value::Null).await;
    assert_eq!(read["name"], "k");
    assert_eq!(read["type"], "ecdsa-p256");
    assert_eq!(read["latest_version"], 1);
    assert_eq!(read["min_enabled_version"], 1);
    assert_eq!(read["deletion_allowed"], false);
    let pem = read["versions"]["1"]["public_key"].as_str().unwrap();
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
            && pem.ends_with("-----END PUBLIC KEY-----\n")
    );

    // Default type, CLI string coercion, and ranges.
    h.ok("write", "key/d", Value::Null).await;
    assert_eq!(h.ok("read", "key/d", Value::Null).await["type"], "rsa-2048");
    let (status, msg) = h
        .status("write", "key/k", json!({"min_enabled_version": "2"}))
        .await;
    assert_eq!(status, 400);
    assert!(msg.contains("min_enabled_version"), "{msg}");
    let (status, msg) = h
        .status("write", "key/k", json!({"type": "rsa-2048"}))
        .await;
    assert_eq!((status, msg.contains("cannot be changed")), (400, true));
    let (status, msg) = h.status("write", "key/x", json!({"type": "nope"})).await;
    assert!(
        status == 400 && msg.contains("unsupported key type"),
        "{msg}"
    );
    assert!(matches!(
        h.call("read", "key/x", Value::Null).await,
        Outcome::NoContent
    ));

    // Deletion needs deletion_allowed.
    let (status, msg) = h.status("delete", "key/k", Value::Null).await;
    assert!(status == 400 && msg.contains("deletion_allowed"), "{msg}");
    h.ok("write", "key/k", json!({"deletion_allowed": "true"}))
        .await;
    h.ok("delete", "key/k", Value::Null).await;
    assert!(matches!(
        h.call("read", "key/k", Value::Null).await,
        Outcome::NoContent
    ));
    assert_eq!(
        h.status("write", "key/k/rotate", Value::Null).await,
        (404, "key \"k\" not found".to_owned())
    );
}

#[tokio::test]
async fn min_enabled_version_hides_versions_and_zero_means_all() {
    let h = Harness::new().await;
    h.ok("write", "key/k", json!({"type": "aes256-gcm96"}))
        .await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k", json!({"min_enabled_version": 2}))
        .await;
    let read = h.ok("read", "key/k", Value::Null).await;
    let versions: Vec<&String> = read["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["2", "3"]);
    assert!(read["versions"]["2"].get("public_key").is_none());
    h.ok("write", "key/k", json!({"min_enabled_version": 0}))
        .await;
    let read = h.ok("read", "key/k", Value::Null).await;
    assert_eq!(read["min_enabled_version"], 1);
    assert_eq!(read["versions"].as_object().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_rotations_lose_nothing() {
    let h = Arc::new(Harness::new().await);
    h.ok("write", "key/k", json!({"type": "ecdsa-p256"})).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.ok("write", "key/k/rotate", Value::Null).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = h.ok("read", "key/k", Value::Null).await;
    assert_eq!(read["latest_version"], 21);
    let versions = read["versions"].as_object().unwrap();
    assert_eq!(versions.len(), 21);
    let keys: std::collections::HashSet<&str> = versions
        .values()
        .map(|v| v["public_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 21, "every version has its own material");
}

#[tokio::test]
async fn ten_thousand_keys_list_and_a_hundred_versions_read() {
    let h = Harness::new().await;
    for i in 0..10_000 {
        h.ok(
            "write",
            &format!("key/k{i:05}"),
            json!({"type": "aes256-gcm96"}),
        )
        .await;
    }
    let listed = h.ok("list", "key/", Value::Null).await;
    let names = listed["keys"].as_array().unwrap();
    assert_eq!(names.len(), 10_000);
    assert_eq!(names[0], "k00000");
    assert_eq!(names[9_999], "k09999");
    for _ in 0..99 {
        h.ok("write", "key/k00042/rotate", Value::Null).await;
    }
    let read = h.ok("read", "key/k00042", Value::Null).await;
    assert_eq!(read["latest_version"], 100);
    assert_eq!(read["versions"].as_object().unwrap().len(), 100);
}

#[tokio::test]
async fn providers_are_immutable_and_credentials_write_only() {
    let h = Harness::new().await;
    h.ok(
        "write",
        "kms/az",
        json!({"provider": "azurekeyvault", "key_collection": "vault1",
               "credentials": ["client_id=a0454cd1-e28e-405e-bc50-7477fa8a00b7", "client_secret=s3cr3t", "tenant_id=t"]}),
    )
    .await;
    let read = h.ok("read", "kms/az", Value::Null).await;
    assert_eq!(
        read,
        json!({"provider": "azurekeyvault", "key_collection": "vault1"})
    );
    let (status, msg) = h
        .status("write", "kms/az", json!({"provider": "awskms"}))
        .await;
    assert!(
        status == 400 && msg.contains("provider cannot be changed"),
        "{msg}"
    );
    let (status, msg) = h
        .status("write", "kms/az", json!({"key_collection": "other"}))
        .await;
    assert!(status == 400 && msg.contains("key_collection"), "{msg}");
    let (status, msg) = h
        .status(
            "write",
            "kms/az",
            json!({"credentials": {"password": "hunter2"}}),
        )
        .await;
    assert!(
        status == 400 && msg.contains("credentials") && !msg.contains("hunter2"),
        "{msg}"
    );
    let (status, msg) = h
        .status("write", "kms/new", json!({"key_collection": "x"}))
        .await;
    assert!(status == 400 && msg.contains("\"provider\""), "{msg}");
    let (status, msg) = h
        .status(
            "write",
            "kms/new",
            json!({"provider": "vaultkms", "key_collection": "x"}),
        )
        .await;
    assert!(
        status == 400 && msg.contains("unsupported provider"),
        "{msg}"
    );
    // The stored record holds the credentials; only reads hide them.
    let stored = h.storage_text("kms/az").await;
    assert!(stored.contains("s3cr3t"));
    assert_eq!(
        h.ok("list", "kms/", Value::Null).await["keys"],
        json!(["az"])
    );
}

impl Harness {
    async fn storage_text(&self, key: &str) -> String {
        use crate::runtime::storage::Storage;
        let entry = self.storage.get(key).await.unwrap().unwrap();
        String::from_utf8(entry.value.to_vec()).unwrap()
    }
}

#[tokio::test]
async fn distribution_lifecycle_reaches_the_provider() {
    let h = Harness::new().await;
    h.azure_with("k", "rsa-2048").await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok(
        "write",
        "kms/az/key/k",
        json!({"purpose": "encrypt,decrypt", "protection": "hsm"}),
    )
    .await;

    let read = h.ok("read", "kms/az/key/k", Value::Null).await;
    let name = read["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("k-") && name[2..].parse::<i64>().is_ok(),
        "{name}"
    );
    assert_eq!(read["purpose"], "decrypt,encrypt");
    assert_eq!(read["protection"], "hsm");
    assert!(read["distribution_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        read["versions"],
        json!({"1": format!("{name}-v1"), "2": format!("{name}-v2")})
    );
    {
        let key = h.ok("read", "key/k", Value::Null).await;
        let state = h.provider.state();
        let imported = &state.keys[&name];
        for (i, v) in imported.iter().enumerate() {
            assert_eq!(
                v.public_key.as_deref(),
                key["versions"][(i + 1).to_string()]["public_key"].as_str()
            );
        }
    }
    assert_eq!(
        h.ok("list", "key/k/kms/", Value::Null).await["keys"],
        json!(["az"])
    );
    assert_eq!(
        h.ok("list", "kms/az/key/", Value::Null).await["keys"],
        json!(["k"])
    );

    // Rotation and min_enabled_version are pushed.
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k", json!({"min_enabled_version": 3}))
        .await;
    {
        let state = h.provider.state();
        let enabled: Vec<bool> = state.keys[&name].iter().map(|v| v.enabled).collect();
        assert_eq!(enabled, [false, false, true]);
    }
    // Fixed purpose and protection, deletion rules.
    let (status, msg) = h
        .status("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert!(
        status == 400 && msg.contains("purpose cannot be changed"),
        "{msg}"
    );
    let (status, _) = h
        .status("write", "kms/az/key/k", json!({"protection": "software"}))
        .await;
    assert_eq!(status, 400);
    h.ok("write", "key/k", json!({"deletion_allowed": true}))
        .await;
    let (status, msg) = h.status("delete", "key/k", Value::Null).await;
    assert!(status == 400 && msg.contains("still distributed"), "{msg}");
    let (status, msg) = h.status("delete", "kms/az", Value::Null).await;
    assert!(status == 400 && msg.contains("still has keys"), "{msg}");

    // Removal deletes it in the provider; the key can be distributed again.
    h.ok("delete", "kms/az/key/k", Value::Null).await;
    assert_eq!(h.provider.state().removed, vec![name.clone()]);
    assert!(matches!(
        h.call("read", "kms/az/key/k", Value::Null).await,
        Outcome::NoContent
    ));
    assert!(matches!(
        h.call("list", "key/k/kms/", Value::Null).await,
        Outcome::NoContent
    ));
    h.ok(
        "write",
        "kms/az/key/k",
        json!({"purpose": ["sign", "verify"]}),
    )
    .await;
    h.ok("delete", "kms/az/key/k", Value::Null).await;
    h.ok("delete", "kms/az", Value::Null).await;
    h.ok("delete", "key/k", Value::Null).await;
}

#[tokio::test]
async fn matrix_is_checked_before_any_provider_call() {
    let h = Harness::new().await;
    h.azure_with("aes", "aes256-gcm96").await;
    let (status, msg) = h
        .status("write", "kms/az/key/aes", json!({"purpose": "encrypt"}))
        .await;
    assert!(
        status == 400 && msg.contains("not supported by the azurekeyvault provider"),
        "{msg}"
    );
    h.ok("write", "key/r", json!({"type": "rsa-2048"})).await;
    let (status, msg) = h
        .status(
            "write",
            "kms/az/key/r",
            json!({"purpose": "encrypt,launch"}),
        )
        .await;
    assert!(status == 400 && msg.contains("purpose"), "{msg}");
    let (status, _) = h
        .status(
            "write",
            "kms/az/key/r",
            json!({"purpose": "encrypt", "protection": "cloud"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = h.status("write", "kms/az/key/r", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        h.status("write", "kms/az/key/nokey", json!({"purpose": "sign"}))
            .await
            .0,
        404
    );
    assert_eq!(
        h.status("write", "kms/nokms/key/r", json!({"purpose": "sign"}))
            .await
            .0,
        404
    );
    assert_eq!(h.provider.state().connects, 0, "no provider was contacted");
    assert!(matches!(
        h.call("read", "kms/az/key/aes", Value::Null).await,
        Outcome::NoContent
    ));
}

#[tokio::test]
async fn a_failed_distribution_resumes_without_duplicates() {
    let h = Harness::new().await;
    h.azure_with("k", "ecdsa-p256").await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    // The first import fails.
    h.provider.state().fail_imports = 1;
    let (status, msg) = h
        .status("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert_eq!(status, 502, "{msg}");
    assert!(
        msg.contains("writing to kms/az/key/k again resumes"),
        "{msg}"
    );
    assert_eq!(
        h.provider.state().finished.len(),
        1,
        "a failed run is finished too"
    );
    let partial = h.ok("read", "kms/az/key/k", Value::Null).await;
    assert_eq!(partial["versions"].as_object().unwrap().len(), 0);
    // Repeating (purpose may be omitted now) completes the work.
    h.ok("write", "kms/az/key/k", Value::Null).await;
    let done = h.ok("read", "kms/az/key/k", Value::Null).await;
    assert_eq!(done["versions"].as_object().unwrap().len(), 3);
    let name = done["name"].as_str().unwrap().to_owned();
    assert_eq!(
        h.provider.state().keys[&name].len(),
        3,
        "no duplicate versions"
    );

    // A rotation whose import fails is kept in Vault and retried later.
    h.provider.state().fail_imports = 1;
    let (status, msg) = h.status("write", "key/k/rotate", Value::Null).await;
    assert!(
        status == 502 && msg.contains("rotated to version 4"),
        "{msg}"
    );
    assert_eq!(
        h.ok("read", "key/k", Value::Null).await["latest_version"],
        4
    );
    h.ok("write", "kms/az/key/k", Value::Null).await;
    assert_eq!(h.provider.state().keys[&name].len(), 4);

    // A failed removal keeps the record so it can be retried.
    h.provider.state().fail_remove = 1;
    assert_eq!(h.status("delete", "kms/az/key/k", Value::Null).await.0, 502);
    assert!(matches!(
        h.call("read", "kms/az/key/k", Value::Null).await,
        Outcome::Ok(_)
    ));
    h.ok("delete", "kms/az/key/k", Value::Null).await;
}

#[tokio::test]
async fn a_distribution_refused_before_the_provider_leaves_nothing() {
    let h = Harness::new().await;
    h.azure_with("k", "rsa-2048").await;
    // Refused by the provider (a missing permission), then unreachable
    // configuration: neither leaves a record.
    h.provider.state().fail_connect = true;
    let (status, msg) = h
        .status("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert!(
        status == 400 && msg.contains("credentials.tenant_id"),
        "{msg}"
    );
    h.provider.state().fail_connect = false;
    h.provider.state().deny_imports = 1;
    let (status, msg) = h
        .status("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert_eq!(status, 400, "{msg}");
    assert!(matches!(
        h.call("read", "kms/az/key/k", Value::Null).await,
        Outcome::NoContent
    ));
    assert!(matches!(
        h.call("list", "key/k/kms/", Value::Null).await,
        Outcome::NoContent
    ));
    // purpose was never fixed; the key and the provider can be deleted.
    h.ok("write", "kms/az/key/k", json!({"purpose": "encrypt"}))
        .await;
    h.ok("delete", "kms/az/key/k", Value::Null).await;
    h.ok("write", "key/k", json!({"deletion_allowed": true}))
        .await;
    h.ok("delete", "key/k", Value::Null).await;
    h.ok("delete", "kms/az", Value::Null).await;

    // A failure after the provider was reached keeps the record, with the
    // started version marked, so that the repeat looks for it first.
    h.azure_with("j", "ecdsa-p256").await;
    h.provider.state().fail_imports = 1;
    assert_eq!(
        h.status("write", "kms/az/key/j", json!({"purpose": "sign"}))
            .await
            .0,
        502
    );
    let stored = h.storage_text("distribution/az/j").await;
    assert!(stored.contains("\"started\":[1]"), "{stored}");
    h.ok("write", "kms/az/key/j", Value::Null).await;
    let stored = h.storage_text("distribution/az/j").await;
    assert!(!stored.contains("started"), "{stored}");
}

#[tokio::test]
async fn versions_below_min_enabled_are_imported_disabled() {
    let h = Harness::new().await;
    h.azure_with("k", "ecdsa-p384").await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k", json!({"min_enabled_version": 3}))
        .await;
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign,verify"}))
        .await;
    let state = h.provider.state();
    let (name, versions) = state.keys.iter().next().unwrap();
    let enabled: Vec<bool> = versions.iter().map(|v| v.enabled).collect();
    assert_eq!(enabled, [false, false, true]);
    assert_eq!(state.current, [(name.clone(), 3)], "the latest is current");
}

#[tokio::test]
async fn provider_settings_are_checked_when_written() {
    let h = Harness::new().await;
    let secret = "p4sted-s3cret-value";
    let cases = [
        (
            json!({"provider": "azurekeyvault", "key_collection": "kv\u{1}1"}),
            "key_collection",
        ),
        (
            json!({"provider": "azurekeyvault", "key_collection": "https://kv1.vault.azure.net/#x"}),
            "key_collection",
        ),
        (
            json!({"provider": "azurekeyvault", "key_collection": "kv1", "credentials": {"environment": "Mars"}}),
            "credentials.environment",
        ),
        (
            json!({"provider": "awskms", "key_collection": "mars-north-9a"}),
            "key_collection",
        ),
        (
            json!({"provider": "awskms", "key_collection": "us-east-1", "credentials": {"endpoint": "http://kms.example.com"}}),
            "credentials.endpoint",
        ),
        (
            json!({"provider": "awskms", "key_collection": "us-east-1", "credentials": [format!("{secret}=1")]}),
            "credentials",
        ),
    ];
    for (body, field) in cases {
        let (status, msg) = h.status("write", "kms/p", body.clone()).await;
        assert_eq!(status, 400, "{body}: {msg}");
        assert!(msg.starts_with(&format!("{field}: ")), "{body}: {msg}");
        assert!(!msg.contains(secret), "{msg}");
        assert!(matches!(
            h.call("read", "kms/p", Value::Null).await,
            Outcome::NoContent
        ));
    }
    // An update is checked too, and a refused one changes nothing.
    h.ok(
        "write",
        "kms/p",
        json!({"provider": "awskms", "key_collection": "eu-west-1"}),
    )
    .await;
    let before = h.storage_text("kms/p").await;
    let (status, msg) = h
        .status(
            "write",
            "kms/p",
            json!({"credentials": {"access_key": "AK", "secret_key": "with space"}}),
        )
        .await;
    assert!(
        status == 400 && msg.starts_with("credentials.secret_key"),
        "{msg}"
    );
    assert!(!msg.contains("with space"), "{msg}");
    assert_eq!(h.storage_text("kms/p").await, before);
}

#[tokio::test]
async fn long_names_are_cut_in_messages() {
    let h = Harness::new().await;
    // The longest name there can be: cut in messages.
    let long = "k".repeat(crate::framework::field::MAX_NAME_LEN);
    let (status, msg) = h
        .status("write", &format!("key/{long}/rotate"), Value::Null)
        .await;
    assert_eq!(status, 404);
    assert!(msg.len() < 200, "{}", msg.len());
    h.ok(
        "write",
        &format!("key/{long}"),
        json!({"type": "aes256-gcm96"}),
    )
    .await;
    let (status, msg) = h
        .status("delete", &format!("key/{long}"), Value::Null)
        .await;
    assert!(status == 400 && msg.len() < 200, "{}", msg.len());
}

#[tokio::test]
async fn replication_needs_regions_and_a_replicating_provider() {
    let h = Harness::new().await;
    let (status, msg) = h
        .status(
            "write",
            "key/m",
            json!({"type": "aes256-gcm96", "replica_regions": "eu-west-1,Mars"}),
        )
        .await;
    assert!(
        status == 400 && msg.starts_with("replica_regions: "),
        "{msg}"
    );
    assert!(matches!(
        h.call("read", "key/m", Value::Null).await,
        Outcome::NoContent
    ));
    h.ok(
        "write",
        "key/m",
        json!({"type": "aes256-gcm96", "replica_regions": "eu-west-1, ap-south-1,eu-west-1"}),
    )
    .await;
    let read = h.ok("read", "key/m", Value::Null).await;
    assert_eq!(read["replica_regions"], json!(["eu-west-1", "ap-south-1"]));
    let (status, msg) = h
        .status("write", "key/m", json!({"replica_regions": ["us-west-2"]}))
        .await;
    assert!(status == 400 && msg.contains("cannot be changed"), "{msg}");
    h.ok("write", "key/plain", json!({"type": "aes256-gcm96"}))
        .await;

    h.ok(
        "write",
        "kms/az",
        json!({"provider": "azurekeyvault", "key_collection": "vault1"}),
    )
    .await;
    h.ok(
        "write",
        "kms/aws",
        json!({"provider": "awskms", "key_collection": "us-east-1"}),
    )
    .await;
    let (status, msg) = h
        .status("write", "kms/az/key/m/replicate", Value::Null)
        .await;
    assert!(
        status == 400 && msg.contains("only supported for multi-Region providers"),
        "{msg}"
    );
    h.ok(
        "write",
        "key/r",
        json!({"type": "rsa-2048", "replica_regions": ["eu-west-1"]}),
    )
    .await;
    let (status, msg) = h
        .status("write", "kms/az/key/r", json!({"purpose": "sign"}))
        .await;
    assert!(status == 400 && msg.contains("replica_regions"), "{msg}");

    let (status, msg) = h
        .status("write", "kms/aws/key/m/replicate", Value::Null)
        .await;
    assert!(status == 400 && msg.contains("not distributed"), "{msg}");
    h.ok(
        "write",
        "kms/aws/key/plain",
        json!({"purpose": "encrypt,decrypt"}),
    )
    .await;
    let (status, msg) = h
        .status("write", "kms/aws/key/plain/replicate", Value::Null)
        .await;
    assert!(
        status == 400 && msg.contains("does not have replica_regions"),
        "{msg}"
    );

    h.ok(
        "write",
        "kms/aws/key/m",
        json!({"purpose": "encrypt,decrypt"}),
    )
    .await;
    h.ok("write", "kms/aws/key/m/replicate", Value::Null).await;
    h.ok("write", "key/m/rotate", Value::Null).await;
    let replicated = h.provider.state().replicated.clone();
    assert_eq!(
        replicated.len(),
        2,
        "replicate, then the rotation: {replicated:?}"
    );
    assert_eq!(
        replicated[1].1,
        [1, 2],
        "the rotation replicates every version"
    );
}

#[tokio::test]
async fn names_longer_than_the_limit_are_refused_first() {
    let h = Harness::new().await;
    let too_long = "k".repeat(crate::framework::field::MAX_NAME_LEN + 1);
    for (op, path, body) in [
        (
            "write",
            format!("key/{too_long}"),
            json!({"type": "rsa-4096"}),
        ),
        (
            "write",
            format!("kms/{too_long}"),
            json!({"provider": "awskms", "key_collection": "us-east-1"}),
        ),
        ("read", format!("key/{too_long}"), Value::Null),
    ] {
        let started = std::time::Instant::now();
        let (status, msg) = h.status(op, &path, body).await;
        assert!(
            status == 400 && msg.starts_with("name: names are at most 128"),
            "{msg}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "before any key generation"
        );
        assert!(msg.len() < 200);
    }
    assert!(matches!(
        h.call("list", "key/", Value::Null).await,
        Outcome::NoContent
    ));
}

/// A key with many versions in a provider that can take them in parallel.
async fn parallel_harness(import_concurrency: usize, versions: u32) -> Harness {
    let h = Harness::with_settings(Settings {
        import_concurrency,
        ..Settings::default()
    })
    .await;
    h.azure_with("k", "ecdsa-p256").await;
    for _ in 1..versions {
        h.ok("write", "key/k/rotate", Value::Null).await;
    }
    let mut state = h.provider.state();
    state.concurrency = usize::MAX;
    state.import_delay = std::time::Duration::from_millis(20);
    drop(state);
    h
}

fn imported_order(h: &Harness) -> Vec<u32> {
    let state = h.provider.state();
    let (_, versions) = state.keys.iter().next().unwrap();
    versions.iter().map(|v| v.version).collect()
}

#[tokio::test]
async fn versions_are_imported_in_parallel_and_the_latest_last() {
    let h = parallel_harness(8, 30).await;
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    let order = imported_order(&h);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=30).collect::<Vec<_>>(), "each version once");
    assert_eq!(order.last(), Some(&30), "the latest is imported last");
    {
        let state = h.provider.state();
        assert_eq!(state.max_in_flight, 8, "bounded by the setting");
        assert_eq!(state.current.last().map(|c| c.1), Some(30));
    }
    let read = h.ok("read", "kms/az/key/k", Value::Null).await;
    assert_eq!(read["versions"].as_object().unwrap().len(), 30);

    // Sequential when the setting says so.
    let h = parallel_harness(1, 5).await;
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert_eq!(imported_order(&h), [1, 2, 3, 4, 5]);
    assert_eq!(h.provider.state().max_in_flight, 1);
}

#[tokio::test]
async fn a_new_distribution_checks_its_name_and_the_concurrency_at_once() {
    let h = parallel_harness(8, 10).await;
    h.provider.state().probe_delay = std::time::Duration::from_millis(30);
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    {
        let state = h.provider.state();
        assert_eq!(state.max_probes_in_flight, 2, "both asked together");
        assert_eq!(state.concurrency_asked.len(), 1, "asked once");
        assert_eq!(state.max_in_flight, 8);
    }

    // Renamed because a deleted key holds the name: asked again, about
    // the new name, before any import.
    let h = parallel_harness(8, 10).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    {
        let mut state = h.provider.state();
        state.soft_delete = true;
        state.removed = (now..now + 2).map(|s| format!("k-{s}")).collect();
    }
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    let read = h.ok("read", "kms/az/key/k", Value::Null).await;
    let name = read["name"].as_str().unwrap().to_owned();
    let state = h.provider.state();
    assert!(!state.removed.contains(&name), "{name}");
    assert_eq!(
        state.concurrency_asked.len(),
        2,
        "{:?}",
        state.concurrency_asked
    );
    assert!(state.removed.contains(&state.concurrency_asked[0]));
    assert_eq!(state.concurrency_asked[1], name);
    assert_eq!(state.keys[&name].len(), 10);
    assert_eq!(state.max_in_flight, 8);
}

#[tokio::test]
async fn a_failure_in_a_parallel_batch_keeps_what_landed_and_resumes() {
    let h = parallel_harness(4, 12).await;
    // The sixth import fails; others are in flight then.
    h.provider.state().fail_import_call = Some(6);
    let (status, msg) = h
        .status("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    assert_eq!(status, 502, "{msg}");
    assert!(msg.contains("again resumes"), "{msg}");
    let landed = imported_order(&h);
    assert!(landed.len() < 12 && !landed.contains(&12), "{landed:?}");
    let read = h.ok("read", "kms/az/key/k", Value::Null).await;
    assert_eq!(
        read["versions"].as_object().unwrap().len(),
        landed.len(),
        "every version that landed is recorded"
    );
    h.ok("write", "kms/az/key/k", Value::Null).await;
    let order = imported_order(&h);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=12).collect::<Vec<_>>(), "no duplicates");
    assert_eq!(order.last(), Some(&12));
}

#[tokio::test]
async fn rotation_reaches_every_provider_at_once() {
    let h = Harness::new().await;
    h.azure_with("k", "ecdsa-p256").await;
    for name in ["az2", "az3"] {
        h.ok(
            "write",
            &format!("kms/{name}"),
            json!({"provider": "azurekeyvault", "key_collection": "vault1"}),
        )
        .await;
    }
    for name in ["az", "az2", "az3"] {
        h.ok(
            "write",
            &format!("kms/{name}/key/k"),
            json!({"purpose": "sign"}),
        )
        .await;
    }
    h.provider.state().import_delay = std::time::Duration::from_millis(20);
    h.provider.state().max_in_flight = 0;
    h.ok("write", "key/k/rotate", Value::Null).await;
    let state = h.provider.state();
    assert_eq!(state.max_in_flight, 3, "one import per provider, at once");
    assert!(state.keys.values().all(|v| v.len() == 2));
}

#[tokio::test]
async fn a_name_held_by_a_deleted_key_is_replaced() {
    let h = Harness::new().await;
    h.azure_with("k", "ecdsa-p256").await;
    h.provider.state().soft_delete = true;
    let mut names = Vec::new();
    // Within one second: the same `<key>-<seconds>` each time, taken.
    for _ in 0..3 {
        h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
            .await;
        let read = h.ok("read", "kms/az/key/k", Value::Null).await;
        names.push(read["name"].as_str().unwrap().to_owned());
        h.ok("delete", "kms/az/key/k", Value::Null).await;
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("k-")), "{names:?}");
}

/// Every storage key under `prefix`, walking folders.
async fn all_storage_keys(storage: &InMemoryStorage, prefix: &str) -> Vec<String> {
    use crate::runtime::storage::Storage;
    let mut found = Vec::new();
    let mut folders = vec![prefix.to_owned()];
    while let Some(folder) = folders.pop() {
        for name in storage.list(&folder).await.unwrap() {
            let full = format!("{folder}{name}");
            if name.ends_with('/') {
                folders.push(full);
            } else {
                found.push(full);
            }
        }
    }
    found
}

#[tokio::test]
async fn secrets_are_stored_only_under_seal_wrapped_paths() {
    let h = Harness::new().await;
    h.ok("write", "key/k", json!({"type": "ecdsa-p256"})).await;
    h.ok(
        "write",
        "kms/az",
        json!({"provider": "azurekeyvault", "key_collection": "vault1",
               "credentials": ["client_id=a0454cd1-e28e-405e-bc50-7477fa8a00b7", "client_secret=s3cr3t-seal-test", "tenant_id=t"]}),
    )
    .await;
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    use base64::Engine as _;
    let material = {
        let state = h.provider.state();
        state.keys.values().next().unwrap()[0].secret.clone()
    };
    let encodings = [
        base64::engine::general_purpose::STANDARD.encode(&material),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&material),
        material
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ];
    let sealed = h.backend.special_paths().seal_wrap_storage;
    let keys = all_storage_keys(&h.storage, "").await;
    assert!(
        keys.iter().any(|k| k.starts_with("distribution/")),
        "{keys:?}"
    );
    let mut holders = Vec::new();
    for key in &keys {
        let text = h.storage_text(key).await;
        if text.contains("s3cr3t-seal-test") || encodings.iter().any(|e| text.contains(e.as_str()))
        {
            holders.push(key.clone());
        }
    }
    assert!(holders.contains(&"kms/az".to_owned()), "{holders:?}");
    assert!(holders.contains(&"key/k".to_owned()), "{holders:?}");
    for key in holders {
        assert!(
            sealed.iter().any(|prefix| key.starts_with(prefix.as_str())),
            "{key} holds a secret outside the seal-wrapped paths {sealed:?}"
        );
    }
}

#[tokio::test]
async fn openapi_tells_create_from_update_and_declares_no_content() {
    let h = Harness::new().await;
    let reply = h
        .backend
        .handle_request(pb::Request {
            operation: "help".into(),
            path: String::new(),
            data: r#"{"requestResponsePrefix":"keymgmt"}"#.into(),
            ..Default::default()
        })
        .await;
    let data: Value = serde_json::from_str(&reply.response.unwrap().data).unwrap();
    let paths = &data["openapi"]["paths"];
    let key = &paths["/key/{name}"];
    assert_eq!(key["x-vault-createSupported"], true);
    let post = &key["post"];
    assert_eq!(post["summary"], "Update a key.");
    assert_eq!(post["x-vault-create"]["summary"], "Create a key.");
    assert_eq!(
        post["x-vault-create"]["ignoredFields"],
        json!(["min_enabled_version"])
    );
    let fields = &post["requestBody"]["content"]["application/json"]["schema"]["properties"];
    assert_eq!(fields["type"]["x-vault-createOnly"], true);
    assert_eq!(fields["min_enabled_version"]["x-vault-updateOnly"], true);
    assert!(
        fields["deletion_allowed"]
            .get("x-vault-createOnly")
            .is_none()
    );
    assert!(post["responses"].get("204").is_some(), "{post}");
    assert!(key["get"]["responses"].get("204").is_none());
    assert!(key["delete"]["responses"].get("204").is_some());
    let kms = &paths["/kms/{name}"]["post"]["x-vault-create"];
    assert_eq!(kms["required"], json!(["provider", "key_collection"]));
    let distribute = &paths["/kms/{name}/key/{key_name}"]["post"]["x-vault-create"];
    assert_eq!(distribute["required"], json!(["purpose"]));
    // Writes that answer with data declare 200 only.
    let reconcile = &paths["/kms/{name}/key/{key_name}/reconcile"]["post"];
    assert!(reconcile["responses"].get("204").is_none(), "{reconcile}");
    assert!(reconcile.get("x-vault-create").is_none());
    assert!(
        paths["/key/{name}/rotate"]["post"]["responses"]
            .get("204")
            .is_some()
    );
}
