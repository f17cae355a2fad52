//! The PKCS#11 side: loaded modules, tokens, their sessions and login.
//!
//! PKCS#11 state belongs to the process, which shapes everything here
//! (findings in `plugin-tests/PKCS11.md`):
//!
//! - a module is initialised once per process, so there is one context per
//!   canonical module path, initialised with `CKF_OS_LOCKING_OK` (SoftHSM
//!   turns its own locking off without it);
//! - login is per token for the whole process, and closing a token's last
//!   session logs out: each token keeps an *anchor* session that holds the
//!   login, and a small pool of working sessions;
//! - `C_Login` while logged in answers `CKR_USER_ALREADY_LOGGED_IN` whatever
//!   the PIN, so the process remembers a salted hash of the PIN it logged in
//!   with; another record's different PIN logs out and in again (with no
//!   operation in flight on the token), and a PIN the token refused is
//!   remembered and never tried again, since HSMs lock a PIN after a few
//!   failures;
//! - a module lists its tokens in `C_Initialize`: a token created later is
//!   found by initialising the module again (with no operation in flight);
//! - `C_GetTokenInfo` fails now and then (`CKR_GENERAL_ERROR`, or the token
//!   missing) while another process logs in to the token, since SoftHSM
//!   rewrites its token file on every login: the slot is looked up once
//!   and kept, such a lookup is repeated, and when the token stays
//!   unreadable the module is initialised again once (as for a new token).
//!
//! Blocking calls only: the provider runs them on tokio's blocking pool.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

use super::super::client::{ApiError, ErrorClass};
use crate::framework::error::quote;

/// Working sessions kept open per token, beyond the anchor.
pub const POOL: usize = 4;
/// How often a slot lookup is repeated after `CKR_GENERAL_ERROR`.
const LOOKUP_TRIES: u32 = 5;
/// Shortest time between two re-initialisations of a module.
const REINIT_EVERY: Duration = Duration::from_secs(2);

/// One PKCS#11 function, for errors, logs and injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Initialize,
    GetSlotList,
    GetTokenInfo,
    GetMechanismInfo,
    OpenSession,
    Login,
    Logout,
    FindObjects,
    GetAttributeValue,
    /// `C_UnwrapKey` of the ephemeral AES key (a session object).
    UnwrapSessionKey,
    /// `C_UnwrapKey` of the key material into a token object.
    UnwrapKey,
    CreateObject,
    SetAttributeValue,
    DestroyObject,
    GenerateKeyPair,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Self::Initialize => "C_Initialize",
            Self::GetSlotList => "C_GetSlotList",
            Self::GetTokenInfo => "C_GetTokenInfo",
            Self::GetMechanismInfo => "C_GetMechanismInfo",
            Self::OpenSession => "C_OpenSession",
            Self::Login => "C_Login",
            Self::Logout => "C_Logout",
            Self::FindObjects => "C_FindObjects",
            Self::GetAttributeValue => "C_GetAttributeValue",
            Self::UnwrapSessionKey | Self::UnwrapKey => "C_UnwrapKey",
            Self::CreateObject => "C_CreateObject",
            Self::SetAttributeValue => "C_SetAttributeValue",
            Self::DestroyObject => "C_DestroyObject",
            Self::GenerateKeyPair => "C_GenerateKeyPair",
        }
    }
}

/// `CKR_PIN_INCORRECT` from `PinIncorrect`: the names PKCS#11 documents.
pub fn rv_name(rv: &RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED(0x{code:x})"),
        RvError::UnknownErrorCode(code) => format!("CK_RV 0x{code:x}"),
        other => {
            let camel = format!("{other:?}");
            let mut name = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// Whether the session, or the login it had, is gone: reopen and log in
/// again before the next attempt.
pub fn session_lost(rv: &RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
    )
}

/// What a return value means for retries and for the user.
pub fn classify(rv: &RvError) -> ErrorClass {
    use RvError as R;
    match rv {
        // The call may have been carried out before the session went.
        r if session_lost(r) => ErrorClass::Network,
        // An object vanished between the search and its use: look again.
        R::ObjectHandleInvalid | R::KeyHandleInvalid => ErrorClass::Unavailable,
        R::GeneralError | R::FunctionFailed | R::HostMemory | R::CantLock | R::FunctionCanceled => {
            ErrorClass::Unavailable
        }
        R::PinIncorrect
        | R::PinLocked
        | R::PinExpired
        | R::PinInvalid
        | R::PinLenRange
        | R::UserPinNotInitialized
        | R::KeyFunctionNotPermitted
        | R::ActionProhibited
        | R::TokenWriteProtected
        | R::SessionReadOnly
        | R::UserTypeInvalid
        | R::UserAnotherAlreadyLoggedIn => ErrorClass::AccessDenied,
        _ => ErrorClass::Invalid,
    }
}

/// A failed call as the retry loop and the provider see it: the code is
/// the `CKR_` name, the message which call failed and what it meant.
pub fn call_error(call: Call, err: &CkError) -> ApiError {
    match err {
        CkError::Pkcs11(rv, _) => ApiError::new(classify(rv), &rv_name(rv), call.name()),
        other => ApiError::new(
            ErrorClass::Invalid,
            "cryptoki error",
            &format!("{}: {other}", call.name()),
        ),
    }
}

/// A refusal of ours, with a message that says what to fix.
pub fn refusal(class: ErrorClass, code: &str, message: String) -> ApiError {
    ApiError::new(class, code, &message)
}

/// The calls an operation makes on a session: the seam where tests inject
/// faults. Object handles are valid only in the session they came from.
pub trait TokenSession {
    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>, ApiError>;
    fn attributes(
        &self,
        object: ObjectHandle,
        types: &[AttributeType],
    ) -> Result<Vec<Attribute>, ApiError>;
    /// `C_UnwrapKey`; `call` says whether a session or a token object is made.
    fn unwrap_key(
        &self,
        call: Call,
        mechanism: &Mechanism,
        key: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, ApiError>;
    fn create(&self, template: &[Attribute]) -> Result<ObjectHandle, ApiError>;
    fn set_attributes(&self, object: ObjectHandle, template: &[Attribute]) -> Result<(), ApiError>;
    fn destroy(&self, object: ObjectHandle) -> Result<(), ApiError>;
    /// `C_GenerateKeyPair` of the RSA unwrapping key: (public, private).
    fn generate_unwrapping_key(
        &self,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<(ObjectHandle, ObjectHandle), ApiError>;
}

/// A real session.
pub struct Live<'a>(pub &'a Session);

impl TokenSession for Live<'_> {
    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>, ApiError> {
        self.0
            .find_objects(template)
            .map_err(|e| call_error(Call::FindObjects, &e))
    }

    fn attributes(
        &self,
        object: ObjectHandle,
        types: &[AttributeType],
    ) -> Result<Vec<Attribute>, ApiError> {
        self.0
            .get_attributes(object, types)
            .map_err(|e| call_error(Call::GetAttributeValue, &e))
    }

    fn unwrap_key(
        &self,
        call: Call,
        mechanism: &Mechanism,
        key: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, ApiError> {
        self.0
            .unwrap_key(mechanism, key, wrapped, template)
            .map_err(|e| call_error(call, &e))
    }

    fn create(&self, template: &[Attribute]) -> Result<ObjectHandle, ApiError> {
        self.0
            .create_object(template)
            .map_err(|e| call_error(Call::CreateObject, &e))
    }

    fn set_attributes(&self, object: ObjectHandle, template: &[Attribute]) -> Result<(), ApiError> {
        self.0
            .update_attributes(object, template)
            .map_err(|e| call_error(Call::SetAttributeValue, &e))
    }

    fn destroy(&self, object: ObjectHandle) -> Result<(), ApiError> {
        self.0
            .destroy_object(object)
            .map_err(|e| call_error(Call::DestroyObject, &e))
    }

    fn generate_unwrapping_key(
        &self,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<(ObjectHandle, ObjectHandle), ApiError> {
        self.0
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, public, private)
            .map_err(|e| call_error(Call::GenerateKeyPair, &e))
    }
}

/// A loaded, initialised module.
pub struct Module {
    path: PathBuf,
    /// Read-held by every operation; written to initialise the module again.
    state: RwLock<ModuleState>,
    tokens: Mutex<HashMap<String, Arc<TokenState>>>,
    last_reinit: Mutex<Option<Instant>>,
}

struct ModuleState {
    ctx: Pkcs11,
    /// Incremented by each initialisation: sessions and slots of an
    /// earlier one are gone.
    generation: u64,
}

static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = LazyLock::new(Mutex::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process initialised it (PKCS#11 state is
        // per process): it is usable as it is.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        other => other,
    }
}

impl Module {
    /// The module at `path` (canonical), loaded and initialised on first use.
    pub fn get(path: &Path) -> Result<Arc<Module>, ApiError> {
        let mut modules = lock(&MODULES);
        if let Some(module) = modules.get(path) {
            return Ok(module.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| {
            refusal(
                ErrorClass::Invalid,
                "module not loadable",
                format!(
                    "loading the PKCS#11 module {}: {e}",
                    quote(&path.display().to_string())
                ),
            )
        })?;
        initialize(&ctx).map_err(|e| {
            let mut err = call_error(Call::Initialize, &e);
            err.class = ErrorClass::Invalid;
            err.message = format!(
                "{} of {} failed (check the module's own configuration, such as SOFTHSM2_CONF)",
                err.message,
                path.display()
            );
            err
        })?;
        let module = Arc::new(Module {
            path: path.to_owned(),
            state: RwLock::new(ModuleState { ctx, generation: 1 }),
            tokens: Mutex::default(),
            last_reinit: Mutex::default(),
        });
        modules.insert(path.to_owned(), module.clone());
        Ok(module)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> RwLockReadGuard<'_, ModuleState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of the token labelled `label`, made on first use.
    pub fn token(self: &Arc<Self>, label: &str) -> Arc<TokenState> {
        lock(&self.tokens)
            .entry(label.to_owned())
            .or_insert_with(|| {
                Arc::new(TokenState {
                    label: label.to_owned(),
                    users: RwLock::new(()),
                    inner: Mutex::new(Inner::default()),
                    bad_pins: Mutex::default(),
                })
            })
            .clone()
    }

    /// `C_Finalize` and `C_Initialize`, so that tokens created since show,
    /// with no operation in flight. Returns whether it ran (it runs at most
    /// every [`REINIT_EVERY`]).
    fn reinitialize(&self) -> Result<bool, ApiError> {
        let mut last = lock(&self.last_reinit);
        if last.is_some_and(|t| t.elapsed() < REINIT_EVERY) {
            return Ok(false);
        }
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every session is idle now: close them while the module is up.
        for token in lock(&self.tokens).values() {
            *lock(&token.inner) = Inner::default();
        }
        let ctx = state.ctx.clone();
        if let Err(e) = ctx.finalize() {
            log::warn!(
                "pkcs11: C_Finalize of {}: {}",
                self.path.display(),
                call_error(Call::Initialize, &e)
            );
        }
        initialize(&state.ctx).map_err(|e| call_error(Call::Initialize, &e))?;
        state.generation += 1;
        *last = Some(Instant::now());
        log::info!(
            "pkcs11: initialised {} again to list new tokens",
            self.path.display()
        );
        Ok(true)
    }

    /// A session of `token` logged in with `pin`, for `body`. The token is
    /// looked up (and the module initialised again once, when it is not
    /// there); the session goes back to the pool unless it was lost.
    pub fn run<R>(
        &self,
        token: &TokenState,
        pin: &str,
        body: impl FnOnce(&Session) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let mut body = Some(body);
        for attempt in 0..2 {
            let state = self.read();
            match token.acquire(&state, pin) {
                Ok((guard, session)) => {
                    let body = body.take().ok_or_else(|| {
                        refusal(ErrorClass::Unavailable, "internal", "body ran twice".into())
                    })?;
                    let result = body(&session);
                    token.release(session, &result, state.generation);
                    drop(guard);
                    return result;
                }
                Err(Acquire::Missing(labels)) => {
                    drop(state);
                    if attempt == 0 && self.reinitialize()? {
                        continue;
                    }
                    return Err(refusal(
                        ErrorClass::NotFound,
                        "no such token",
                        format!(
                            "the PKCS#11 module {} has no token labelled {} (tokens: {}); initialise it, or correct key_collection",
                            self.path.display(),
                            quote(&token.label),
                            if labels.is_empty() {
                                "none".to_owned()
                            } else {
                                labels
                                    .iter()
                                    .map(|l| quote(l))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                    ));
                }
                Err(Acquire::Unreadable(err)) => {
                    drop(state);
                    if attempt == 0 && self.reinitialize()? {
                        continue;
                    }
                    return Err(err);
                }
                Err(Acquire::Failed(err)) => return Err(err),
            }
        }
        Err(refusal(
            ErrorClass::Unavailable,
            "no such token",
            format!("token {} not found", quote(&token.label)),
        ))
    }

    /// The module's context, for test clients of the same process.
    #[cfg(test)]
    pub fn context(&self) -> Pkcs11 {
        self.read().ctx.clone()
    }
}

/// One token of a module: its slot, its sessions and its login.
pub struct TokenState {
    label: String,
    /// Read-held by every operation; written to change the login.
    users: RwLock<()>,
    inner: Mutex<Inner>,
    /// Hashes of PINs the token refused: never tried again.
    bad_pins: Mutex<HashSet<[u8; 32]>>,
}

#[derive(Default)]
struct Inner {
    /// The module generation the slot and sessions belong to.
    generation: u64,
    slot: Option<Slot>,
    /// Holds the login: closing a token's last session logs out.
    anchor: Option<Session>,
    idle: Vec<Session>,
    /// The hash of the PIN the process is logged in with.
    login: Option<[u8; 32]>,
}

enum Acquire {
    /// The labels the module has instead.
    Missing(Vec<String>),
    /// A token stayed unreadable: SoftHSM keeps a token it read while
    /// another process rewrote its file broken until `C_Initialize`.
    Unreadable(ApiError),
    Failed(ApiError),
}

impl From<ApiError> for Acquire {
    fn from(err: ApiError) -> Self {
        Self::Failed(err)
    }
}

/// A salted hash of a PIN: what the process remembers of it.
fn pin_hash(pin: &str) -> [u8; 32] {
    static SALT: LazyLock<[u8; 32]> = LazyLock::new(rand::random);
    let mut hasher = Sha256::new();
    hasher.update(*SALT);
    hasher.update(pin.as_bytes());
    hasher.finalize().into()
}

fn auth_pin(pin: &str) -> AuthPin {
    AuthPin::from(pin.to_owned())
}

impl TokenState {
    pub fn label(&self) -> &str {
        &self.label
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The token's slot: looked up by label (labels are blank-padded),
    /// repeated while `C_GetTokenInfo` fails transiently.
    fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, Acquire> {
        let mut last = None;
        for try_no in 0..LOOKUP_TRIES {
            if try_no > 0 {
                std::thread::sleep(Duration::from_millis(20 << try_no));
            }
            let slots = ctx
                .get_slots_with_token()
                .map_err(|e| call_error(Call::GetSlotList, &e))?;
            let mut labels = Vec::new();
            let mut failed = None;
            for slot in slots {
                match ctx.get_token_info(slot) {
                    Ok(info) => {
                        let found = info.label().trim_end().to_owned();
                        if found == label {
                            return Ok(slot);
                        }
                        labels.push(found);
                    }
                    Err(e) => failed = Some(call_error(Call::GetTokenInfo, &e)),
                }
            }
            match failed {
                // One token was unreadable: it may be ours.
                Some(err) if err.class.transient() => last = Some(Acquire::Unreadable(err)),
                Some(err) => return Err(Acquire::Failed(err)),
                None => return Err(Acquire::Missing(labels)),
            }
        }
        Err(last.unwrap_or(Acquire::Missing(Vec::new())))
    }

    /// Makes sure the slot is known for this module generation.
    fn ensure_slot(&self, ctx: &Pkcs11, generation: u64) -> Result<Slot, Acquire> {
        let mut inner = self.inner();
        if inner.generation != generation {
            *inner = Inner {
                generation,
                ..Inner::default()
            };
        }
        if let Some(slot) = inner.slot {
            return Ok(slot);
        }
        drop(inner);
        let slot = Self::find_slot(ctx, &self.label)?;
        let mut inner = self.inner();
        if inner.generation == generation {
            inner.slot = Some(slot);
        }
        Ok(slot)
    }

    fn open(ctx: &Pkcs11, slot: Slot) -> Result<Session, ApiError> {
        ctx.open_rw_session(slot)
            .map_err(|e| call_error(Call::OpenSession, &e))
    }

    /// A working session, the token logged in with `pin`.
    fn acquire<'s>(
        &'s self,
        state: &ModuleState,
        pin: &str,
    ) -> Result<(RwLockReadGuard<'s, ()>, Session), Acquire> {
        let hash = pin_hash(pin);
        if lock(&self.bad_pins).contains(&hash) {
            return Err(refusal(
                ErrorClass::AccessDenied,
                "CKR_PIN_INCORRECT",
                format!(
                    "token {} refused this PIN earlier (CKR_PIN_INCORRECT); it is not tried again, because HSMs lock a PIN after failed logins: write the right PIN to credentials.pin (reload the plugin if the token's PIN was changed to this one)",
                    quote(&self.label)
                ),
            )
            .into());
        }
        let slot = self.ensure_slot(&state.ctx, state.generation)?;
        for _ in 0..3 {
            let guard = self
                .users
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            {
                let mut inner = self.inner();
                if inner.generation == state.generation && inner.login == Some(hash) {
                    let session = match inner.idle.pop() {
                        Some(session) => session,
                        None => {
                            drop(inner);
                            Self::open(&state.ctx, slot)?
                        }
                    };
                    return Ok((guard, session));
                }
            }
            drop(guard);
            self.log_in(state, slot, pin, hash)?;
        }
        Err(refusal(
            ErrorClass::Unavailable,
            "busy",
            format!(
                "token {} is in use by another KMS provider record with another PIN; repeat the request",
                quote(&self.label)
            ),
        )
        .into())
    }

    /// Logs the process in with `pin`, logging out another PIN's login
    /// first. Runs with no other operation on the token.
    fn log_in(
        &self,
        state: &ModuleState,
        slot: Slot,
        pin: &str,
        hash: [u8; 32],
    ) -> Result<(), ApiError> {
        let _exclusive = self
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut inner = self.inner();
        if inner.generation != state.generation {
            return Ok(()); // initialised again meanwhile: the caller starts over
        }
        if inner.login == Some(hash) {
            return Ok(());
        }
        if inner.login.is_some() {
            // Another record's PIN: C_Login would answer ALREADY_LOGGED_IN
            // whatever this PIN is, so log out first.
            inner.idle.clear();
            if let Some(anchor) = &inner.anchor
                && let Err(e) = anchor.logout()
            {
                log::debug!("pkcs11: C_Logout: {}", call_error(Call::Logout, &e));
            }
            inner.login = None;
        }
        if inner.anchor.is_none() {
            inner.anchor = Some(Self::open(&state.ctx, slot)?);
        }
        let Some(anchor) = inner.anchor.as_ref() else {
            return Err(refusal(
                ErrorClass::Unavailable,
                "internal",
                "no anchor session".into(),
            ));
        };
        let secret = auth_pin(pin);
        let result = match anchor.login(UserType::User, Some(&secret)) {
            // Logged in outside this bookkeeping (an earlier logout failed):
            // the PIN is unchecked, so log out and check it once.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => anchor
                .logout()
                .and_then(|()| anchor.login(UserType::User, Some(&secret))),
            other => other,
        };
        match result {
            Ok(()) => {
                inner.login = Some(hash);
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                lock(&self.bad_pins).insert(hash);
                Err(refusal(
                    ErrorClass::AccessDenied,
                    "CKR_PIN_INCORRECT",
                    format!(
                        "token {} refused credentials.pin (CKR_PIN_INCORRECT); it will not be tried again",
                        quote(&self.label)
                    ),
                ))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(refusal(
                ErrorClass::AccessDenied,
                "CKR_PIN_LOCKED",
                format!(
                    "token {}'s user PIN is locked (CKR_PIN_LOCKED); the security officer must unlock it",
                    quote(&self.label)
                ),
            )),
            Err(e) => {
                let err = call_error(Call::Login, &e);
                if matches!(&e, CkError::Pkcs11(rv, _) if session_lost(rv)) {
                    inner.anchor = None;
                }
                Err(err)
            }
        }
    }

    /// Returns a session to the pool, or drops it with the login it may
    /// have lost.
    fn release<R>(&self, session: Session, result: &Result<R, ApiError>, generation: u64) {
        let lost = match result {
            Err(err) => err.class == ErrorClass::Network,
            Ok(_) => false,
        };
        let mut inner = self.inner();
        if inner.generation != generation {
            return;
        }
        if lost {
            // Closing it destroys the session objects a lost answer left.
            drop(session);
            inner.idle.clear();
            inner.anchor = None;
            inner.login = None;
            inner.slot = None;
            return;
        }
        if inner.idle.len() < POOL {
            inner.idle.push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_have_their_pkcs11_names_and_classes() {
        assert_eq!(rv_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            rv_name(&RvError::UserAlreadyLoggedIn),
            "CKR_USER_ALREADY_LOGGED_IN"
        );
        assert_eq!(rv_name(&RvError::ArgumentsBad), "CKR_ARGUMENTS_BAD");
        assert_eq!(
            rv_name(&RvError::VendorDefined(0x8000_0001)),
            "CKR_VENDOR_DEFINED(0x80000001)"
        );
        assert_eq!(classify(&RvError::PinIncorrect), ErrorClass::AccessDenied);
        assert_eq!(
            classify(&RvError::SessionHandleInvalid),
            ErrorClass::Network
        );
        assert_eq!(classify(&RvError::GeneralError), ErrorClass::Unavailable);
        assert_eq!(classify(&RvError::MechanismInvalid), ErrorClass::Invalid);
        assert_ne!(pin_hash("1234"), pin_hash("1235"));
    }
}
