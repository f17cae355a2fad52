//! The provider's tests against SoftHSM2, the real token the project's
//! test stack uses (`scripts/setup-softhsm`, `plugin-tests/PKCS11.md`).
//!
//! PKCS#11 state belongs to the process, and SoftHSM reads `SOFTHSM2_CONF`
//! (and lists its tokens) only in `C_Initialize`; this crate cannot set
//! environment variables (no unsafe code). So [`softhsm_suite`] makes a
//! token directory with `softhsm2-util`, then runs the tests of [`child`]
//! in a child process of this test binary with `SOFTHSM2_CONF` and
//! `KEYMGMT_PKCS11_MODULES` set, and fails unless every one of them ran
//! and passed. A machine without SoftHSM2 fails it: never a skip.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::client::{Call, Module};
use super::config::Settings;
use super::fake::{Fault, Faults};
use super::{Pkcs11Kms, Spec, bool_of, hex, spki_of};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::material::test_support::TempDir;
use crate::engine::provider::client::process_env;
use crate::engine::provider::client::retry::RetryPolicy;
use crate::engine::provider::conformance::{self, Double, Observed};
use crate::engine::provider::{
    KmsProvider, Protection, ProviderConfig, ProviderKind, Purpose, Target,
};
use crate::framework::Secret;

/// What `scripts/setup-softhsm` installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The tokens the child's tests use, made before the module loads.
/// The conformance runs use one each: their targets have the same names.
const TOKENS: [&str; 5] = ["conformance", "conformance-ec", "pins", "generate", "types"];
/// The user PIN of every test token.
const PIN: &str = "unit-test-pin-4711";
/// Tells a child test it runs under [`softhsm_suite`].
const MARKER: &str = "KEYMGMT_TEST_SOFTHSM";
/// The number of tests in [`child`]: all must run.
const CHILD_TESTS: usize = 10;

fn softhsm2_util(conf: &Path, args: &[&str]) {
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap_or_else(|e| {
            panic!("softhsm2-util could not run ({e}): the pkcs11 tests need SoftHSM2; scripts/setup-softhsm installs it")
        });
    assert!(
        out.status.success(),
        "softhsm2-util {:?} failed: {}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn softhsm_suite() {
    assert!(
        Path::new(MODULE).is_file(),
        "{MODULE} is missing: the pkcs11 tests need SoftHSM2; scripts/setup-softhsm installs it"
    );
    let dir = TempDir::new();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.write(
        "softhsm2.conf",
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        )
        .as_bytes(),
    );
    for label in TOKENS {
        softhsm2_util(
            &conf,
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "unit-test-so-pin",
                "--pin",
                PIN,
            ],
        );
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--test-threads=1",
            "engine::provider::pkcs11::softhsm::child::",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(super::config::ENV_MODULES, MODULE)
        .env(MARKER, "1")
        .output()
        .expect("running the child tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child tests failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("test result: ok. {CHILD_TESTS} passed; 0 failed")),
        "every child test must run:\n{stdout}"
    );
}

/// Settings for `token` from the child's environment (the real
/// resolution, allow-list included), with a fast retry policy.
fn settings(token: &str, pin: &str) -> Settings {
    assert!(
        std::env::var_os(MARKER).is_some(),
        "run by softhsm_suite, which sets SOFTHSM2_CONF"
    );
    let config = ProviderConfig {
        kind: ProviderKind::parse("pkcs11").unwrap(),
        key_collection: token.to_owned(),
        credentials: [("pin".to_owned(), Secret::new(pin.to_owned()))].into(),
    };
    let mut settings = Settings::resolve(&config, &process_env).unwrap();
    settings.retry = RetryPolicy::with_base(Duration::from_millis(1));
    settings
}

fn provider(token: &str, pin: &str, faults: &Arc<Faults>) -> Pkcs11Kms {
    Pkcs11Kms::new(&settings(token, pin))
        .unwrap()
        .with_faults(faults.clone())
}

/// An independent session on `token`: the same process's module (PKCS#11
/// allows one initialisation per process), but no provider code.
struct Inspector {
    ctx: Pkcs11,
    session: Session,
}

impl Inspector {
    fn open(token: &str) -> Self {
        Self::open_as(token, true)
    }

    /// Without logging in: a correct login would clear the token's
    /// count of wrong PINs.
    fn open_as(token: &str, login: bool) -> Self {
        let module = Module::get(&std::fs::canonicalize(MODULE).unwrap()).unwrap();
        let ctx = module.context();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
            .unwrap_or_else(|| panic!("no token {token}"));
        let session = ctx.open_rw_session(slot).unwrap();
        if !login {
            return Self { ctx, session };
        }
        match session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login: {e}"),
        }
        Self { ctx, session }
    }

    fn find(&self, template: &[Attribute]) -> Vec<ObjectHandle> {
        self.session.find_objects(template).unwrap()
    }

    /// Boolean attributes, `None` where the object has none.
    fn bools(&self, object: ObjectHandle, types: &[AttributeType]) -> Vec<Option<bool>> {
        let attrs = self.session.get_attributes(object, types).unwrap();
        types
            .iter()
            .map(|t| {
                attrs
                    .iter()
                    .find_map(|a| match a {
                        Attribute::Token(v) | Attribute::Private(v) | Attribute::Local(v)
                            if a.attribute_type() == *t =>
                        {
                            Some(*v)
                        }
                        _ => None,
                    })
                    .or_else(|| bool_of(&attrs, *t))
            })
            .collect()
    }

    fn class_and_id(&self, object: ObjectHandle) -> (ObjectClass, Vec<u8>) {
        let attrs = self
            .session
            .get_attributes(object, &[AttributeType::Class, AttributeType::Id])
            .unwrap();
        let class = attrs
            .iter()
            .find_map(|a| match a {
                Attribute::Class(c) => Some(*c),
                _ => None,
            })
            .unwrap();
        let id = attrs
            .iter()
            .find_map(|a| match a {
                Attribute::Id(id) => Some(id.clone()),
                _ => None,
            })
            .unwrap_or_default();
        (class, id)
    }

    /// Whether the object's key is `material`, by use: a signature made
    /// by the token verifies with the material's public key, the token's
    /// AES-ECB of a block equals the material's; a key the token will not
    /// use (disabled) is compared by its public key object only.
    fn holds(&self, spec: &Spec, versions: &[ObjectHandle], material: &KeyMaterial) -> bool {
        let data = b"conformance check";
        for &object in versions {
            let (class, _) = self.class_and_id(object);
            if class == ObjectClass::SECRET_KEY {
                let usable = self.bools(object, &[AttributeType::Encrypt])[0] == Some(true);
                if !usable {
                    continue;
                }
                use aes::cipher::{BlockEncrypt, KeyInit};
                let block = [7u8; 16];
                let by_token = self
                    .session
                    .encrypt(&Mechanism::AesEcb, object, &block)
                    .unwrap();
                let cipher = aes::Aes256::new_from_slice(material.as_bytes()).unwrap();
                let mut expected = aes::Block::from(block);
                cipher.encrypt_block(&mut expected);
                if by_token != expected.as_slice() {
                    return false;
                }
            } else if class == ObjectClass::PUBLIC_KEY {
                let types = [
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcPoint,
                ];
                let attrs = self.session.get_attributes(object, &types).unwrap();
                if spki_of(spec.key_type, &attrs) != material.public_key_der() {
                    return false;
                }
            } else if class == ObjectClass::PRIVATE_KEY
                && self.bools(object, &[AttributeType::Sign])[0] == Some(true)
            {
                use sha2::Digest;
                let Some(curve) = spec.key_type.ec_curve() else {
                    continue;
                };
                assert_eq!(curve, crate::engine::key_type::EcCurve::P256);
                let digest = sha2::Sha256::digest(data);
                let signature = self
                    .session
                    .sign(&Mechanism::Ecdsa, object, &digest)
                    .unwrap();
                let spki = material.public_key_der().unwrap();
                let point = &spki[spki.len() - 65..];
                let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                    point,
                );
                if key.verify(data, &signature).is_err() {
                    return false;
                }
            }
        }
        true
    }
}

/// The usage attributes that can be on, per class.
const USAGE: [AttributeType; 6] = [
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
];

/// The provider over SoftHSM, for the conformance suite.
struct SoftHsmDouble {
    token: &'static str,
    key_type: KeyType,
    purposes: &'static [Purpose],
    faults: Arc<Faults>,
}

impl SoftHsmDouble {
    /// The target's objects, by `CKA_ID` (only ids of its distribution).
    fn objects(
        &self,
        inspector: &Inspector,
        target: &Target,
    ) -> BTreeMap<Vec<u8>, Vec<ObjectHandle>> {
        let spec = Spec::new(target);
        let mut by_id: BTreeMap<Vec<u8>, Vec<ObjectHandle>> = BTreeMap::new();
        for object in inspector.find(&[Attribute::Label(spec.label.clone())]) {
            let (_, id) = inspector.class_and_id(object);
            if id.len() == 20 && id.starts_with(&spec.prefix) {
                by_id.entry(id).or_default().push(object);
            }
        }
        by_id
    }

    fn usable(inspector: &Inspector, objects: &[ObjectHandle]) -> bool {
        objects.iter().any(|o| {
            let attrs = inspector.session.get_attributes(*o, &USAGE).unwrap();
            USAGE.iter().any(|t| bool_of(&attrs, *t) == Some(true))
        })
    }
}

impl Double for SoftHsmDouble {
    fn provider(&self) -> Arc<dyn KmsProvider> {
        Arc::new(provider(self.token, PIN, &self.faults))
    }

    fn target(&self, name: &str) -> Target {
        Target::for_test(name, self.key_type, self.purposes, Protection::Hsm)
    }

    fn import_sites(&self) -> &'static [&'static str] {
        if self.key_type.is_asymmetric() {
            &["unwrap", "public", "ephemeral"]
        } else {
            &["unwrap", "ephemeral"]
        }
    }

    fn create_site(&self) -> &'static str {
        "unwrap"
    }

    fn inject(&self, site: &str, fault: conformance::Fault, times: u32) {
        let call = match site {
            "unwrap" => Call::UnwrapKey,
            "public" => Call::CreateObject,
            "ephemeral" => Call::DestroyObject,
            other => panic!("no call site {other}"),
        };
        let fault = match fault {
            conformance::Fault::Unavailable => Fault::Unavailable,
            conformance::Fault::Lost => Fault::Lost,
            conformance::Fault::Denied => Fault::Denied,
        };
        self.faults.inject(call, fault, times);
    }

    fn clear_faults(&self) {
        self.faults.clear();
    }

    fn observe(&self, target: &Target, materials: &BTreeMap<u32, KeyMaterial>) -> Vec<Observed> {
        let inspector = Inspector::open(self.token);
        let spec = Spec::new(target);
        self.objects(&inspector, target)
            .into_iter()
            .map(|(id, objects)| {
                let version = u32::from_be_bytes(id[16..].try_into().unwrap());
                let classes: Vec<ObjectClass> = objects
                    .iter()
                    .map(|o| inspector.class_and_id(*o).0)
                    .collect();
                // A version is its key object (and, for key pairs, exactly
                // one public key object): duplicates fail the suite.
                let complete = if self.key_type.is_asymmetric() {
                    classes.len() == 2 && classes.contains(&ObjectClass::PUBLIC_KEY)
                } else {
                    classes == [ObjectClass::SECRET_KEY]
                };
                Observed {
                    provider_id: hex(&id),
                    vault_version: Some(version),
                    usable: Self::usable(&inspector, &objects),
                    material_matches: complete
                        && materials
                            .get(&version)
                            .is_some_and(|m| inspector.holds(&spec, &objects, m)),
                }
            })
            .collect()
    }

    fn current(&self, target: &Target) -> Option<String> {
        // PKCS#11 has no current version: applications take the highest
        // enabled CKA_ID of the label.
        let inspector = Inspector::open(self.token);
        self.objects(&inspector, target)
            .into_iter()
            .rfind(|(_, objects)| Self::usable(&inspector, objects))
            .map(|(id, _)| hex(&id))
    }

    /// Destroys every object under the label, Vault's and foreign ones.
    fn delete_outside(&self, target: &Target) {
        let inspector = Inspector::open(self.token);
        for object in inspector.find(&[Attribute::Label(Spec::new(target).label)]) {
            inspector.session.destroy_object(object).unwrap();
        }
    }
}

impl SoftHsmDouble {
    /// The objects under the target's label with the provider id `id`.
    fn with_id(&self, inspector: &Inspector, target: &Target, id: &str) -> Vec<ObjectHandle> {
        let spec = Spec::new(target);
        inspector
            .find(&[Attribute::Label(spec.label.clone())])
            .into_iter()
            .filter(|o| hex(&inspector.class_and_id(*o).1) == id)
            .collect()
    }
}

impl conformance::Tamper for SoftHsmDouble {
    /// Writes the usage attributes directly, as an operator with
    /// `pkcs11-tool` would.
    fn set_enabled_outside(&self, target: &Target, provider_id: &str, enabled: bool) {
        let inspector = Inspector::open(self.token);
        let spec = Spec::new(target);
        let objects = self.with_id(&inspector, target, provider_id);
        assert!(!objects.is_empty(), "no objects with id {provider_id}");
        for object in objects {
            let (class, _) = inspector.class_and_id(object);
            inspector
                .session
                .update_attributes(object, &spec.usage(class, enabled))
                .unwrap();
        }
    }

    /// The same label, another distribution's `CKA_ID` prefix: made by
    /// the token's own unwrap, as another client with the PIN could.
    fn add_foreign(&self, target: &Target, material: &KeyMaterial) -> String {
        let other = Target {
            id: format!("foreign-{}", rand::random::<u64>()),
            ..target.clone()
        };
        let job = super::ImportJob {
            spec: Spec::new(&other),
            version: 1,
            material: material.clone(),
            enabled: true,
            token: self.token.to_owned(),
            touched: Arc::default(),
            wrap_micros: Arc::default(),
            oaep_sha1: Arc::default(),
        };
        let inspector = Inspector::open(self.token);
        job.run(&super::client::Live(&inspector.session)).unwrap();
        hex(&job.spec.id(1))
    }

    fn doom_outside(&self, target: &Target, provider_id: &str) -> bool {
        let inspector = Inspector::open(self.token);
        for object in self.with_id(&inspector, target, provider_id) {
            inspector.session.destroy_object(object).unwrap();
        }
        true
    }
}

fn aes_target(name: &str) -> Target {
    Target::for_test(
        name,
        KeyType::Aes256Gcm96,
        &[Purpose::Encrypt, Purpose::Decrypt],
        Protection::Hsm,
    )
}

async fn import_one(
    provider: &Pkcs11Kms,
    target: &Target,
    version: u32,
    material: &KeyMaterial,
) -> Result<String, crate::engine::provider::ProviderError> {
    let session = provider.begin_import(target);
    let result = session
        .import(crate::engine::provider::ImportRequest {
            version,
            material,
            enabled: true,
            resume: false,
            recorded: &[],
        })
        .await;
    session.finish().await;
    result
}

/// Run only by [`softhsm_suite`], in a child process.
mod child {
    use super::*;
    use crate::engine::provider::ProviderError;
    use crate::framework::Error;

    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn conformance_aes() {
        let double = SoftHsmDouble {
            token: "conformance",
            key_type: KeyType::Aes256Gcm96,
            purposes: &[Purpose::Encrypt, Purpose::Decrypt],
            faults: Arc::default(),
        };
        conformance::run(&double, "pkcs11 (AES)").await;
    }

    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn conformance_ec() {
        let double = SoftHsmDouble {
            token: "conformance-ec",
            key_type: KeyType::EcdsaP256,
            purposes: &[Purpose::Sign, Purpose::Verify],
            faults: Arc::default(),
        };
        conformance::run(&double, "pkcs11 (EC P-256)").await;
    }

    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn drift_aes() {
        let double = SoftHsmDouble {
            token: "conformance",
            key_type: KeyType::Aes256Gcm96,
            purposes: &[Purpose::Encrypt, Purpose::Decrypt],
            faults: Arc::default(),
        };
        conformance::run_drift(&double, "pkcs11 (AES)").await;
    }

    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn drift_ec() {
        let double = SoftHsmDouble {
            token: "conformance-ec",
            key_type: KeyType::EcdsaP256,
            purposes: &[Purpose::Sign, Purpose::Verify],
            faults: Arc::default(),
        };
        conformance::run_drift(&double, "pkcs11 (EC P-256)").await;
    }

    /// RSA: the private key object's modulus shows too, so a private key
    /// replaced behind an unchanged public key object is caught.
    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn drift_rsa() {
        let double = SoftHsmDouble {
            token: "types",
            key_type: KeyType::Rsa2048,
            purposes: &[Purpose::Sign, Purpose::Decrypt],
            faults: Arc::default(),
        };
        conformance::run_drift(&double, "pkcs11 (RSA-2048)").await;

        // The private key replaced behind Vault's back, its public key
        // object left as it was: the private key's modulus shows it.
        let kms = provider("types", PIN, &Arc::default());
        let target = double.target("swapped-1700000013");
        let ours = KeyMaterial::generate(KeyType::Rsa2048).unwrap();
        let id = import_one(&kms, &target, 1, &ours).await.unwrap();
        let inspector = Inspector::open("types");
        let spec = Spec::new(&target);
        let private = inspector.find(&spec.find_template(ObjectClass::PRIVATE_KEY, 1));
        inspector.session.destroy_object(private[0]).unwrap();
        let theirs = KeyMaterial::generate(KeyType::Rsa2048).unwrap();
        super::super::ImportJob {
            spec: spec.clone(),
            version: 1,
            material: theirs.clone(),
            enabled: true,
            token: "types".into(),
            touched: Arc::default(),
            wrap_micros: Arc::default(),
            oaep_sha1: Arc::default(),
        }
        .run(&super::super::client::Live(&inspector.session))
        .unwrap();
        let states = [crate::engine::provider::VersionState {
            version: 1,
            provider_id: &id,
            enabled: true,
            material: &ours,
        }];
        let live = kms.inspect(&target, &states).await.unwrap().unwrap();
        assert_eq!(live.versions.len(), 1, "{live:?}");
        assert_eq!(
            live.versions[0].material,
            crate::engine::provider::LiveMaterial::PublicKey(theirs.public_key_der().unwrap())
        );
        double.delete_outside(&target);
    }

    /// Login state is the process's: once logged in, `C_Login` answers
    /// `CKR_USER_ALREADY_LOGGED_IN` whatever the PIN. Another record's
    /// wrong PIN must still be refused, and never be tried twice.
    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn a_wrong_pin_is_refused_while_logged_in_and_never_retried() {
        let faults = Arc::default();
        let right = provider("pins", PIN, &faults);
        let wrong_pin = "wrong-pin-0815-secret";
        let wrong = provider("pins", wrong_pin, &faults);
        let material = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        let target = aes_target("pins-1700000000");
        import_one(&right, &target, 1, &material).await.unwrap();

        let logins_before = faults.count(Call::FindObjects);
        let err = import_one(&wrong, &target, 2, &material).await.unwrap_err();
        assert!(matches!(err, ProviderError::Permission(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("CKR_PIN_INCORRECT"), "{message}");
        assert!(
            !message.contains(wrong_pin) && !message.contains(PIN),
            "{message}"
        );
        assert_eq!(Error::from(err).status(), 400);
        // Nothing ran with the wrong PIN.
        assert_eq!(faults.count(Call::FindObjects), logins_before);
        let inspector = Inspector::open_as("pins", false);
        let slot = inspector.session.get_session_info().unwrap().slot_id();
        let info = inspector.ctx.get_token_info(slot).unwrap();
        assert!(info.user_pin_count_low(), "the token saw one wrong PIN");
        drop(inspector);

        // The right PIN works again (and the token forgets the failure).
        import_one(&right, &target, 2, &material).await.unwrap();
        let inspector = Inspector::open_as("pins", false);
        assert!(
            !inspector
                .ctx
                .get_token_info(slot)
                .unwrap()
                .user_pin_count_low()
        );
        drop(inspector);
        // The wrong PIN is not sent again: the token's count stays clear.
        let err = import_one(&wrong, &target, 3, &material).await.unwrap_err();
        assert!(err.to_string().contains("not tried again"), "{err}");
        let inspector = Inspector::open_as("pins", false);
        assert!(
            !inspector
                .ctx
                .get_token_info(slot)
                .unwrap()
                .user_pin_count_low()
        );
    }

    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn a_missing_token_is_a_configuration_error() {
        let missing = provider("no-such-token", PIN, &Arc::default());
        let material = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        let err = import_one(&missing, &aes_target("missing-1700000000"), 1, &material)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Config(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("no token labelled \"no-such-token\""),
            "{message}"
        );
        assert!(
            message.contains("\"conformance\""),
            "lists the tokens: {message}"
        );
        assert!(!message.contains(PIN));
    }

    /// The ephemeral AES key of the first unwrap is destroyed when the
    /// second unwrap fails (in a session that stays open).
    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn the_ephemeral_key_is_destroyed_even_on_failure() {
        let faults: Arc<Faults> = Arc::default();
        let kms = provider("conformance", PIN, &faults);
        let material = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        let target = aes_target("ephemeral-1700000000");
        import_one(&kms, &target, 1, &material).await.unwrap();
        let destroyed = faults.count(Call::DestroyObject);
        let first_steps = faults.count(Call::UnwrapSessionKey);
        let session_keys = || {
            Inspector::open("conformance")
                .find(&[
                    Attribute::Token(false),
                    Attribute::Class(ObjectClass::SECRET_KEY),
                ])
                .len()
        };
        assert_eq!(session_keys(), 0);
        faults.inject(Call::UnwrapKey, Fault::Denied, 1);
        let err = import_one(&kms, &target, 2, &material).await.unwrap_err();
        assert!(matches!(err, ProviderError::Permission(_)), "{err:?}");
        // The token's OAEP hash is remembered: one first step per import.
        assert_eq!(faults.count(Call::UnwrapSessionKey), first_steps + 1);
        assert_eq!(faults.count(Call::DestroyObject), destroyed + 1);
        assert_eq!(session_keys(), 0, "no session key outlives the import");
    }

    /// A token without the unwrapping key gets one, generated in the
    /// token with CKA_UNWRAP only, once even under concurrent imports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn the_unwrapping_key_is_generated_once() {
        let kms = provider("generate", PIN, &Arc::default());
        let a = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        let b = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        let (t1, t2) = (aes_target("gen-1700000001"), aes_target("gen-1700000002"));
        let (r1, r2) = tokio::join!(import_one(&kms, &t1, 1, &a), import_one(&kms, &t2, 1, &b));
        r1.unwrap();
        r2.unwrap();
        let inspector = Inspector::open("generate");
        let label = Attribute::Label(super::super::UNWRAP_LABEL.as_bytes().to_vec());
        let private = inspector.find(&[label.clone(), Attribute::Class(ObjectClass::PRIVATE_KEY)]);
        let public = inspector.find(&[label, Attribute::Class(ObjectClass::PUBLIC_KEY)]);
        assert_eq!((private.len(), public.len()), (1, 1));
        let types = [
            AttributeType::Unwrap,
            AttributeType::Decrypt,
            AttributeType::Sign,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Local,
        ];
        assert_eq!(
            inspector.bools(private[0], &types),
            [
                Some(true),
                Some(false),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(true)
            ],
        );
        let bits = inspector
            .session
            .get_attributes(public[0], &[AttributeType::ModulusBits])
            .unwrap();
        assert!(
            matches!(bits.as_slice(), [Attribute::ModulusBits(b)] if u64::from(*b) == super::super::GENERATED_UNWRAP_BITS),
            "{bits:?}"
        );
    }

    /// Every key type imports with every attribute explicit.
    #[tokio::test]
    #[ignore = "run by softhsm_suite in a child process with SOFTHSM2_CONF"]
    async fn every_key_type_gets_explicit_attributes() {
        let kms = provider("types", PIN, &Arc::default());
        let inspector = Inspector::open("types");
        for key_type in KeyType::ALL {
            let purposes: &[Purpose] = match (key_type.rsa_bits(), key_type.ec_curve()) {
                (Some(_), _) => &[Purpose::Sign, Purpose::Decrypt],
                (_, Some(_)) => &[Purpose::Sign, Purpose::Verify],
                _ => &[Purpose::Encrypt, Purpose::Unwrap],
            };
            let target = Target::for_test(
                &format!("{}-1700000000", key_type.as_str()),
                key_type,
                purposes,
                Protection::Hsm,
            );
            let material = crate::engine::material::test_support::sample(key_type);
            let id = import_one(&kms, &target, 1, material).await.unwrap();
            let spec = Spec::new(&target);
            assert_eq!(id, hex(&spec.id(1)));
            let objects = inspector.find(&[Attribute::Label(spec.label.clone())]);
            assert_eq!(objects.len(), if key_type.is_asymmetric() { 2 } else { 1 });
            for object in objects {
                let (class, object_id) = inspector.class_and_id(object);
                assert_eq!(object_id, spec.id(1));
                let [token, private, sensitive, extractable] = inspector.bools(
                    object,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )[..] else {
                    unreachable!()
                };
                assert_eq!(token, Some(true));
                let usage = inspector.bools(object, &USAGE);
                let on: Vec<AttributeType> = USAGE
                    .iter()
                    .zip(&usage)
                    .filter(|(_, v)| **v == Some(true))
                    .map(|(t, _)| *t)
                    .collect();
                if class == ObjectClass::PUBLIC_KEY {
                    assert_eq!(private, Some(false), "{key_type}");
                    let expected: &[AttributeType] = if key_type.ec_curve().is_some() {
                        &[AttributeType::Verify]
                    } else {
                        &[]
                    };
                    assert_eq!(on, expected, "{key_type} public");
                    let attrs = inspector
                        .session
                        .get_attributes(
                            object,
                            &[
                                AttributeType::Modulus,
                                AttributeType::PublicExponent,
                                AttributeType::EcPoint,
                            ],
                        )
                        .unwrap();
                    assert_eq!(spki_of(key_type, &attrs), material.public_key_der());
                } else {
                    assert_eq!(
                        (private, sensitive, extractable),
                        (Some(true), Some(true), Some(false))
                    );
                    let expected: &[AttributeType] = match class {
                        c if c == ObjectClass::SECRET_KEY => {
                            &[AttributeType::Encrypt, AttributeType::Unwrap]
                        }
                        _ if key_type.rsa_bits().is_some() => {
                            &[AttributeType::Sign, AttributeType::Decrypt]
                        }
                        _ => &[AttributeType::Sign],
                    };
                    assert_eq!(on, expected, "{key_type} key");
                }
            }
        }
    }
}
