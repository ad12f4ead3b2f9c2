//! Object keys and the keys that protect them.
//!
//! An [`ObjectKey`] is built only here, only from a [`TenantId`] and UUIDs
//! the caller already parsed: `tenants/<tenant uuid>/lessons/<lesson uuid>/content`
//! and `tenants/<tenant uuid>/avatars/<user uuid>`. Nothing a client sends
//! becomes a path segment, so there is no `..`, separator or absolute path to
//! refuse.
//!
//! Secrets: the [`MasterKey`] (from configuration, or generated into the data
//! directory) wraps each tenant's random data key; the wrapped key lives in
//! the registry, so deleting it there makes the tenant's objects unreadable.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::id::TenantId;

/// The key of one object in the store, always under `tenants/<tenant uuid>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A lesson's content file. Only the kernel builds keys: outside it, a key
    /// comes from a [`TenantStorage`](super::TenantStorage), for its own tenant.
    pub(crate) fn lesson_content(tenant: TenantId, lesson: Uuid) -> Self {
        Self(format!(
            "{}lessons/{}/content",
            tenant_prefix(tenant),
            lesson.hyphenated()
        ))
    }

    /// A user's avatar.
    pub(crate) fn avatar(tenant: TenantId, user: Uuid) -> Self {
        Self(format!(
            "{}avatars/{}",
            tenant_prefix(tenant),
            user.hyphenated()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key lies under `tenant`'s prefix.
    pub(crate) fn belongs_to(&self, tenant: TenantId) -> bool {
        self.0.starts_with(&tenant_prefix(tenant))
    }

    pub(crate) fn path(&self) -> object_store::path::Path {
        object_store::path::Path::from(self.0.as_str())
    }
}

/// `tenants/<tenant uuid>/`: every object of the tenant, and nothing else.
pub fn tenant_prefix(tenant: TenantId) -> String {
    format!("tenants/{tenant}/")
}

/// A 256-bit secret that never prints.
#[derive(Clone)]
pub struct Secret(pub(crate) [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub(crate) fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }
}

/// The master key: wraps tenants' data keys and derives the link-signing key.
#[derive(Clone, Debug)]
pub struct MasterKey(Secret);

impl MasterKey {
    pub fn random() -> Self {
        Self(Secret::random())
    }

    /// 32 bytes, base64 (standard alphabet, padded or not); surrounding
    /// whitespace is ignored.
    pub fn from_base64(s: &str) -> Result<Self> {
        let s = s.trim();
        let bytes = B64
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
            .map_err(|_| Error::Invalid("the master key is not base64".into()))?;
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Invalid("the master key must be 32 bytes".into()))?;
        Ok(Self(Secret(k)))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.0)
    }

    /// Reads the key at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(s) => Self::from_base64(&s).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the key at `path`, or makes one there (mode 0600) if there is
    /// none: the embedded setup's default.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let key = Self::random();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(key.to_base64().as_bytes())?;
                f.sync_all()?;
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::from_base64(&std::fs::read_to_string(path)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn aead(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0.0).into())
    }

    fn wrap_aad(tenant: TenantId) -> Vec<u8> {
        format!("campus data key v1\0{tenant}").into_bytes()
    }

    /// The tenant's data key, encrypted and bound to the tenant's id: base64
    /// of nonce ‖ ciphertext.
    pub(crate) fn wrap(&self, tenant: TenantId, key: &Secret) -> Result<String> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = Self::wrap_aad(tenant);
        let ct = self
            .aead()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Crypto("wrapping a data key"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    pub(crate) fn unwrap(&self, tenant: TenantId, wrapped: &str) -> Result<Secret> {
        let raw = B64
            .decode(wrapped)
            .map_err(|_| Error::Crypto("a wrapped data key is not base64"))?;
        if raw.len() < 24 {
            return Err(Error::Crypto("a wrapped data key is too short"));
        }
        let (nonce, ct) = raw.split_at(24);
        let aad = Self::wrap_aad(tenant);
        let pt = self
            .aead()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| Error::Crypto("a data key does not unwrap with this master key"))?;
        let k: [u8; 32] = pt
            .try_into()
            .map_err(|_| Error::Crypto("a data key has the wrong length"))?;
        Ok(Secret(k))
    }

    /// The key's check: HMAC-SHA256 of a fixed label under the key, as hex.
    /// Recorded in the registry, it tells whether a node holds the
    /// deployment's key without revealing anything of the key.
    pub fn check(&self) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"campus master key check v1");
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A key for signing links, derived from the master key (so rotating one
    /// rotates the other, and the master key itself never signs anything).
    pub(crate) fn signing_key(&self) -> Secret {
        self.derive(b"campus link signing key v1")
    }

    /// The key's bytes (for a key file read with this parser).
    pub(crate) fn raw(&self) -> Secret {
        self.0.clone()
    }

    /// A key for one purpose, derived from the master key: HMAC-SHA256 of
    /// the purpose's label.
    pub(crate) fn derive(&self, label: &[u8]) -> Secret {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        Secret(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uuid_from(b: [u8; 16]) -> Uuid {
        Uuid::from_bytes(b)
    }

    proptest! {
        #[test]
        fn keys_stay_under_their_tenant(t in any::<[u8; 16]>(), o in any::<[u8; 16]>()) {
            let tenant = TenantId::from(uuid_from(t));
            let prefix = format!("tenants/{}/", uuid_from(t).hyphenated());
            for key in [
                ObjectKey::lesson_content(tenant, uuid_from(o)),
                ObjectKey::avatar(tenant, uuid_from(o)),
            ] {
                prop_assert!(key.as_str().starts_with(&prefix), "{}", key.as_str());
                prop_assert!(!key.as_str().contains(".."));
                prop_assert!(!key.as_str().contains("//"));
                prop_assert!(!key.as_str().contains('\\'));
                // object_store sees exactly the same key: no segment was
                // escaped or dropped.
                let path = key.path();
                prop_assert_eq!(path.as_ref(), key.as_str());
                prop_assert_eq!(
                    key.as_str().split('/').count(),
                    if key.as_str().ends_with("/content") { 5 } else { 4 }
                );
            }
        }
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_tenant() {
        let master = MasterKey::random();
        let a = TenantId::new();
        let b = TenantId::new();
        let key = Secret::random();
        let w = master.wrap(a, &key).unwrap();
        assert_eq!(master.unwrap(a, &w).unwrap().0, key.0);
        assert!(master.unwrap(b, &w).is_err());
        assert!(MasterKey::random().unwrap(a, &w).is_err());
    }

    #[test]
    fn master_key_round_trips_and_never_prints() {
        let k = MasterKey::random();
        let again = MasterKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.0.0, again.0.0);
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn the_check_tells_keys_apart_and_reveals_neither() {
        let (a, b) = (MasterKey::random(), MasterKey::random());
        assert_eq!(a.check(), a.check());
        assert_ne!(a.check(), b.check());
        assert_eq!(a.check().len(), 64);
        assert!(!a.check().contains(&a.to_base64()));
        // Not the signing key either: the check is public, that key is not.
        let signing: String = a
            .signing_key()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(a.check(), signing);
    }
}
