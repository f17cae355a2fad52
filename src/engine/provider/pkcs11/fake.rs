//! Faults injected into real PKCS#11 calls, for the unit tests.
//!
//! There is no in-memory token: the provider's tests run against SoftHSM2
//! itself (`softhsm.rs`), and this wrapper makes chosen calls fail around
//! it, as a token that drops its session or refuses a call would.

use std::collections::HashMap;
use std::sync::Mutex;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};

use super::client::{Call, TokenSession};
use crate::engine::provider::client::{ApiError, ErrorClass};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `CKR_GENERAL_ERROR` before the call is made.
    Unavailable,
    /// The call is made, then the session is lost (`CKR_DEVICE_ERROR`):
    /// its effect stays, its answer does not arrive.
    Lost,
    /// `CKR_TOKEN_WRITE_PROTECTED` before the call is made.
    Denied,
}

/// Faults per call, each for a number of calls.
#[derive(Default)]
pub struct Faults {
    pending: Mutex<HashMap<Call, (Fault, u32)>>,
    /// Calls made through the wrapper, per call.
    pub calls: Mutex<HashMap<Call, u32>>,
}

impl Faults {
    pub fn inject(&self, call: Call, fault: Fault, times: u32) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(call, (fault, times));
    }

    pub fn clear(&self) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    pub fn count(&self, call: Call) -> u32 {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&call)
            .copied()
            .unwrap_or(0)
    }

    fn take(&self, call: Call) -> Option<Fault> {
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(call)
            .or_default() += 1;
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (fault, times) = pending.get_mut(&call)?;
        let fault = *fault;
        *times -= 1;
        if *times == 0 {
            pending.remove(&call);
        }
        Some(fault)
    }

    /// Runs `body` for `call` with its fault, if any.
    fn around<T>(
        &self,
        call: Call,
        body: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.take(call) {
            None => body(),
            Some(Fault::Unavailable) => Err(ApiError::new(
                ErrorClass::Unavailable,
                "CKR_GENERAL_ERROR",
                call.name(),
            )),
            Some(Fault::Denied) => Err(ApiError::new(
                ErrorClass::AccessDenied,
                "CKR_TOKEN_WRITE_PROTECTED",
                call.name(),
            )),
            Some(Fault::Lost) => {
                body()?;
                Err(ApiError::new(
                    ErrorClass::Network,
                    "CKR_DEVICE_ERROR",
                    call.name(),
                ))
            }
        }
    }
}

/// A session whose calls fail as [`Faults`] says.
pub struct Faulty<'a> {
    pub inner: &'a dyn TokenSession,
    pub faults: &'a Faults,
}

impl TokenSession for Faulty<'_> {
    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>, ApiError> {
        self.faults
            .around(Call::FindObjects, || self.inner.find(template))
    }

    fn attributes(
        &self,
        object: ObjectHandle,
        types: &[AttributeType],
    ) -> Result<Vec<Attribute>, ApiError> {
        self.faults.around(Call::GetAttributeValue, || {
            self.inner.attributes(object, types)
        })
    }

    fn unwrap_key(
        &self,
        call: Call,
        mechanism: &Mechanism,
        key: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, ApiError> {
        self.faults.around(call, || {
            self.inner
                .unwrap_key(call, mechanism, key, wrapped, template)
        })
    }

    fn create(&self, template: &[Attribute]) -> Result<ObjectHandle, ApiError> {
        self.faults
            .around(Call::CreateObject, || self.inner.create(template))
    }

    fn set_attributes(&self, object: ObjectHandle, template: &[Attribute]) -> Result<(), ApiError> {
        self.faults.around(Call::SetAttributeValue, || {
            self.inner.set_attributes(object, template)
        })
    }

    fn destroy(&self, object: ObjectHandle) -> Result<(), ApiError> {
        self.faults
            .around(Call::DestroyObject, || self.inner.destroy(object))
    }

    fn generate_unwrapping_key(
        &self,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<(ObjectHandle, ObjectHandle), ApiError> {
        self.faults.around(Call::GenerateKeyPair, || {
            self.inner.generate_unwrapping_key(public, private)
        })
    }
}
