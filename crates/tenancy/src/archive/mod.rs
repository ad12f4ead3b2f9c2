//! A tenant in one file: the archive `campus tenant export` writes and
//! `campus tenant import` reads, the same on every backend.
//!
//! ```text
//! campus-archive.json   the manifest: format and schema version, the tenant
//!                       (id, slug, name, plan), the data key wrapped for the
//!                       archive, and each table's columns, rows, bytes, SHA-256
//! campus-archive.mac    HMAC-SHA256 of the manifest (hex), under a key derived
//!                       from the tenant's data key
//! files/<path>          each file as the store holds it: sealed with the data
//!                       key (`lessons/<uuid>/content`, `avatars/<uuid>`)
//! campus-files.json     one JSON line per file: path, size, SHA-256
//! campus-files.mac      HMAC-SHA256 of that index
//! tables/<name>         each table's rows, one JSON array per line in key
//!                       order, compressed with zstd, then sealed
//! ```
//!
//! A plain POSIX (ustar) tar of regular files, in exactly this order, so
//! that it streams both ways in bounded memory: files before tables, so
//! that an import holds its one write transaction only for the rows.
//!
//! Nothing in it is readable without the archive's key: the data key is
//! wrapped (XChaCha20-Poly1305) by the deployment's master key, a key file
//! or a passphrase (Argon2id); files stay sealed as they were stored; table
//! entries are sealed in the same chunked format. The manifest and the file
//! index are authenticated, so an archive that lies about its contents is
//! refused before anything is written, or — for what only the end of the
//! stream can tell — before the tenant is activated.

mod export;
mod import;
pub(crate) mod rows;
mod seal;
mod tarball;

pub use export::ExportSummary;
pub use import::{ImportOptions, ImportSummary};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::storage::MasterKey;
use crate::storage::decode_hex;
use crate::storage::keys::Secret;

/// The archive format's name and version, in every manifest.
pub const FORMAT: &str = "campus-tenant-archive";
pub const FORMAT_VERSION: u32 = 1;

/// A tenant table, as the learning domain declares it: what an archive
/// holds of it and in which order (the kernel knows no table of its own).
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The primary key's columns: rows are written in their (bytewise) order.
    pub key: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
}

impl Column {
    pub const fn new(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            nullable: false,
        }
    }

    pub const fn nullable(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            nullable: true,
        }
    }
}

/// A column's portable type: JSON string, integer, number or boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Real,
    Bool,
}

/// What an export, or an import, reports as it goes: the phase
/// (`tables`, `files`, `rows`, `verify`, `copy`…), work done and, when
/// known, in all (bytes for files, rows for tables).
pub type Progress = dyn Fn(&str, u64, Option<u64>) + Send + Sync;

/// The key an archive's data key is wrapped with.
#[derive(Clone)]
pub enum ArchiveKey {
    /// This deployment's master key: for archives that stay inside it
    /// (nightly backups, a restore on the same deployment).
    Deployment,
    /// 32 random bytes the operator keeps (`--key-file`, base64).
    Key(Secret),
    /// A passphrase (`--passphrase-file`), stretched with Argon2id.
    Passphrase(String),
}

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deployment => "ArchiveKey::Deployment",
            Self::Key(_) => "ArchiveKey::Key(…)",
            Self::Passphrase(_) => "ArchiveKey::Passphrase(…)",
        })
    }
}

/// A passphrase shorter than this is refused.
pub const MIN_PASSPHRASE: usize = 12;

impl ArchiveKey {
    /// A key file's text: 32 bytes, base64 (as `head -c 32 /dev/urandom | base64`).
    pub fn from_key_file(text: &str) -> Result<Self> {
        let key = MasterKey::from_base64(text)
            .map_err(|_| Error::Invalid("the key file must hold 32 bytes, base64".into()))?;
        Ok(Self::Key(key.raw()))
    }

    /// A passphrase file's text, its final line break dropped.
    pub fn from_passphrase(text: &str) -> Result<Self> {
        let pass = text.trim_end_matches(['\n', '\r']);
        if pass.chars().count() < MIN_PASSPHRASE {
            return Err(Error::Invalid(format!(
                "the passphrase must be at least {MIN_PASSPHRASE} characters"
            )));
        }
        Ok(Self::Passphrase(pass.to_owned()))
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::Key(_) => "key",
            Self::Passphrase(_) => "passphrase",
        }
    }
}

/// The manifest, `campus-archive.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The Campus build that wrote it.
    pub campus_version: String,
    /// The tenant schema version of its rows.
    pub schema_version: i64,
    pub archive_id: String,
    pub created_at: String,
    pub tenant: ManifestTenant,
    pub key: KeyWrap,
    pub tables: Vec<ManifestTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub isolation: String,
    pub placement: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTable {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// Bytes of its JSON lines, before compression.
    pub bytes: u64,
    /// SHA-256 of those lines (hex): the same on every backend, so that
    /// it also checks what an import stored.
    pub sha256: String,
}

/// The data key, wrapped for the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyWrap {
    /// `deployment`, `key` or `passphrase`.
    pub kind: String,
    /// `deployment`: the master key's check; `key`: the key file's. Tells
    /// a wrong key from a damaged archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
    /// base64 of nonce ‖ ciphertext.
    pub wrapped: String,
}

/// Argon2id's parameters for a passphrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

/// What this build writes; an archive asking for more than the maxima is
/// refused before any work (its parameters are untrusted input).
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_ITERATIONS: u32 = 3;
/// At most 4× what this build asks: an archive may not make an import
/// allocate much (the parameters are read before anything is checked).
const KDF_MAX_MEMORY_KIB: u32 = 4 * KDF_MEMORY_KIB;
const KDF_MAX_ITERATIONS: u32 = 10;
const KDF_MAX_PARALLELISM: u32 = 4;

/// Limits on what an archive may hold (each refused with a clear error).
pub mod limits {
    /// The manifest's size.
    pub const MANIFEST: u64 = 1024 * 1024;
    /// One row's JSON line.
    pub const LINE: usize = 1024 * 1024;
    /// One table's JSON lines in all, before compression.
    pub const TABLE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
    /// One file, as stored (sealed).
    pub const FILE: u64 = 64 * 1024 * 1024 * 1024;
    /// Files in one archive.
    pub const FILES: u64 = 10_000_000;
    /// The file index: one line of at most ~200 bytes per file.
    pub const INDEX: u64 = FILES * 256;
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Archive(why.into())
}

fn wrap_aad(archive_id: &str, tenant: &str) -> Vec<u8> {
    format!("campus archive data key v1\0{archive_id}\0{tenant}").into_bytes()
}

fn key_file_check(key: &Secret) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"campus archive key file check v1");
    hex(&mac.finalize().into_bytes())
}

fn stretch(pass: &str, kdf: &Kdf) -> Result<Secret> {
    if kdf.algorithm != "argon2id"
        || kdf.memory_kib > KDF_MAX_MEMORY_KIB
        || kdf.iterations > KDF_MAX_ITERATIONS
        || kdf.parallelism == 0
        || kdf.parallelism > KDF_MAX_PARALLELISM
    {
        return Err(invalid(
            "the archive's passphrase parameters are not ones this build accepts",
        ));
    }
    let salt = B64
        .decode(&kdf.salt)
        .map_err(|_| invalid("the archive's passphrase salt is not base64"))?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| invalid(format!("the archive's passphrase parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(pass.as_bytes(), &salt, &mut out)
        .map_err(|e| invalid(format!("the archive's passphrase parameters: {e}")))?;
    Ok(Secret(out))
}

/// The key-encryption key for `key` and the record that lets an import
/// find it again.
async fn kek_for_export(key: &ArchiveKey, master: &MasterKey) -> Result<(Secret, KeyWrap)> {
    let mut wrap = KeyWrap {
        kind: key.kind().into(),
        check: None,
        kdf: None,
        wrapped: String::new(),
    };
    let kek = match key {
        ArchiveKey::Deployment => {
            wrap.check = Some(master.check());
            master.derive(b"campus archive key v1")
        }
        ArchiveKey::Key(k) => {
            wrap.check = Some(key_file_check(k));
            k.clone()
        }
        ArchiveKey::Passphrase(p) => {
            let kdf = Kdf {
                algorithm: "argon2id".into(),
                memory_kib: KDF_MEMORY_KIB,
                iterations: KDF_ITERATIONS,
                parallelism: 1,
                salt: B64.encode(random::<16>()),
            };
            let (p, k2) = (p.clone(), kdf.clone());
            let kek = tokio::task::spawn_blocking(move || stretch(&p, &k2))
                .await
                .map_err(|e| invalid(format!("stretching the passphrase: {e}")))??;
            wrap.kdf = Some(kdf);
            kek
        }
    };
    Ok((kek, wrap))
}

/// Wraps `data_key` for the archive.
async fn wrap_data_key(
    key: &ArchiveKey,
    master: &MasterKey,
    data_key: &Secret,
    archive_id: &str,
    tenant: TenantId,
) -> Result<KeyWrap> {
    let (kek, mut wrap) = kek_for_export(key, master).await?;
    let nonce = random::<24>();
    let aad = wrap_aad(archive_id, &tenant.to_string());
    let ct = XChaCha20Poly1305::new((&kek.0).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &data_key.0,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Crypto("wrapping a data key for an archive"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    wrap.wrapped = B64.encode(out);
    Ok(wrap)
}

/// The data key of an archive, unwrapped with the key the operator gave.
async fn unwrap_data_key(key: &ArchiveKey, master: &MasterKey, m: &Manifest) -> Result<Secret> {
    let wrap = &m.key;
    let need = match wrap.kind.as_str() {
        "deployment" => "the master key of the deployment that exported it",
        "key" => "its key file (--key-file)",
        "passphrase" => "its passphrase (--passphrase-file)",
        _ => return Err(invalid("the archive's key is of an unknown kind")),
    };
    if wrap.kind != key.kind() {
        return Err(invalid(format!("this archive opens with {need}")));
    }
    let kek = match key {
        ArchiveKey::Deployment => {
            if wrap.check.as_deref() != Some(master.check().as_str()) {
                return Err(invalid(format!(
                    "this archive was exported from another deployment: it opens with {need}; \
                     export it again with --key-file or --passphrase-file to move it between deployments"
                )));
            }
            master.derive(b"campus archive key v1")
        }
        ArchiveKey::Key(k) => {
            if wrap.check.as_deref() != Some(key_file_check(k).as_str()) {
                return Err(invalid(
                    "this key file is not the one the archive was exported with",
                ));
            }
            k.clone()
        }
        ArchiveKey::Passphrase(p) => {
            let kdf = wrap
                .kdf
                .clone()
                .ok_or_else(|| invalid("the archive names no passphrase parameters"))?;
            let p = p.clone();
            tokio::task::spawn_blocking(move || stretch(&p, &kdf))
                .await
                .map_err(|e| invalid(format!("stretching the passphrase: {e}")))??
        }
    };
    let raw = B64
        .decode(&wrap.wrapped)
        .map_err(|_| invalid("the archive's wrapped key is not base64"))?;
    if raw.len() != 24 + 32 + 16 {
        return Err(invalid("the archive's wrapped key has the wrong length"));
    }
    let (nonce, ct) = raw.split_at(24);
    let aad = wrap_aad(&m.archive_id, &m.tenant.id);
    let pt = XChaCha20Poly1305::new((&kek.0).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| match key {
            ArchiveKey::Passphrase(_) => invalid("the passphrase does not open this archive"),
            _ => invalid(
                "the archive's data key does not open with this key: the archive is damaged",
            ),
        })?;
    let k: [u8; 32] = pt
        .try_into()
        .map_err(|_| invalid("the archive's data key has the wrong length"))?;
    Ok(Secret(k))
}

/// The key that authenticates the manifest and the file index.
fn mac_key(data_key: &Secret) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&data_key.0)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"campus archive mac key v1");
    let derived = mac.finalize().into_bytes();
    <Hmac<Sha256> as Mac>::new_from_slice(&derived)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// A MAC over an archive entry that authenticates others, fed as the
/// entry streams: `label` keeps the manifest's MAC from passing as the
/// index's, and the archive id one archive's from passing in another.
fn mac_start(data_key: &Secret, label: &str, archive_id: &str) -> Hmac<Sha256> {
    let mut mac = mac_key(data_key);
    mac.update(label.as_bytes());
    mac.update(&[0]);
    mac.update(archive_id.as_bytes());
    mac.update(&[0]);
    mac
}

/// Whether `given` (hex, as the archive holds it) is `mac`'s value.
fn mac_ok(mac: Hmac<Sha256>, given: &[u8]) -> bool {
    let Some(raw) = std::str::from_utf8(given)
        .ok()
        .and_then(|g| decode_hex(g.trim()))
    else {
        return false;
    };
    mac.verify_slice(&raw).is_ok()
}

/// The entry names of the layout.
const MANIFEST: &str = "campus-archive.json";
const MANIFEST_MAC: &str = "campus-archive.mac";
const INDEX: &str = "campus-files.json";
const INDEX_MAC: &str = "campus-files.mac";
const MAC_LABEL_MANIFEST: &str = "manifest";
const MAC_LABEL_INDEX: &str = "files";

/// A file's place under its tenant's prefix, parsed strictly: the only two
/// shapes the store holds, with canonical lowercase UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilePath {
    Lesson(uuid::Uuid),
    Avatar(uuid::Uuid),
}

impl FilePath {
    pub(crate) fn parse(rel: &str) -> Option<Self> {
        let canonical = |s: &str| {
            let u = uuid::Uuid::parse_str(s).ok()?;
            (u.hyphenated().to_string() == s).then_some(u)
        };
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["lessons", id, "content"] => canonical(id).map(Self::Lesson),
            ["avatars", id] => canonical(id).map(Self::Avatar),
            _ => None,
        }
    }

    pub(crate) fn rel(self) -> String {
        match self {
            Self::Lesson(u) => format!("lessons/{}/content", u.hyphenated()),
            Self::Avatar(u) => format!("avatars/{}", u.hyphenated()),
        }
    }

    pub(crate) fn key(self, tenant: TenantId) -> crate::storage::ObjectKey {
        match self {
            Self::Lesson(u) => crate::storage::ObjectKey::lesson_content(tenant, u),
            Self::Avatar(u) => crate::storage::ObjectKey::avatar(tenant, u),
        }
    }
}

/// The canonical line of the file index for one file.
fn index_line(path: FilePath, size: u64, sha256: &str) -> String {
    let line = serde_json::json!({ "path": path.rel(), "size": size, "sha256": sha256 });
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_have_one_spelling() {
        let u = uuid::Uuid::now_v7();
        let rel = format!("lessons/{u}/content");
        assert_eq!(FilePath::parse(&rel), Some(FilePath::Lesson(u)));
        assert_eq!(FilePath::parse(&rel).unwrap().rel(), rel);
        assert_eq!(
            FilePath::parse(&format!("avatars/{u}")),
            Some(FilePath::Avatar(u))
        );
        for bad in [
            format!("lessons/{}/content", u.to_string().to_uppercase()),
            format!("lessons/{}/content", u.simple()),
            format!("lessons/{u}/../content"),
            format!("lessons/{u}/content/"),
            format!("/avatars/{u}"),
            format!("avatars/{u}/x"),
            format!("avatars//{u}"),
            "avatars/..".into(),
            String::new(),
        ] {
            assert_eq!(FilePath::parse(&bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_wrapped_key_opens_only_with_its_own_key() {
        let master = MasterKey::random();
        let data = Secret::random();
        let tenant = TenantId::new();
        for (key, wrong) in [
            (ArchiveKey::Deployment, ArchiveKey::Key(Secret::random())),
            (
                ArchiveKey::Key(Secret::random()),
                ArchiveKey::Key(Secret::random()),
            ),
            (
                ArchiveKey::from_passphrase("correct horse battery").unwrap(),
                ArchiveKey::from_passphrase("incorrect horse battery").unwrap(),
            ),
        ] {
            let wrap = wrap_data_key(&key, &master, &data, "a1", tenant)
                .await
                .unwrap();
            let m = manifest_with(wrap, tenant);
            assert_eq!(unwrap_data_key(&key, &master, &m).await.unwrap().0, data.0);
            assert!(unwrap_data_key(&wrong, &master, &m).await.is_err());
            // Another deployment's master key opens no `deployment` archive.
            if matches!(key, ArchiveKey::Deployment) {
                assert!(
                    unwrap_data_key(&key, &MasterKey::random(), &m)
                        .await
                        .is_err()
                );
            }
            // Bound to its archive and tenant.
            let mut other = m.clone();
            other.archive_id = "a2".into();
            assert!(unwrap_data_key(&key, &master, &other).await.is_err());
        }
        assert!(ArchiveKey::from_passphrase("short").is_err());
    }

    fn manifest_with(key: KeyWrap, tenant: TenantId) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            campus_version: "test".into(),
            schema_version: 1,
            archive_id: "a1".into(),
            created_at: String::new(),
            tenant: ManifestTenant {
                id: tenant.to_string(),
                slug: "acme".into(),
                name: "Acme".into(),
                plan: "standard".into(),
                isolation: "database".into(),
                placement: "default".into(),
                created_at: String::new(),
            },
            key,
            tables: vec![],
        }
    }

    #[test]
    fn passphrase_parameters_are_bounded() {
        let kdf = |m, t, p| Kdf {
            algorithm: "argon2id".into(),
            memory_kib: m,
            iterations: t,
            parallelism: p,
            salt: B64.encode([0u8; 16]),
        };
        assert!(stretch("correct horse battery", &kdf(8 * 1024, 1, 1)).is_ok());
        assert!(stretch("x", &kdf(KDF_MAX_MEMORY_KIB + 1, 1, 1)).is_err());
        assert!(stretch("x", &kdf(1024, KDF_MAX_ITERATIONS + 1, 1)).is_err());
        assert!(stretch("x", &kdf(1024, 1, 0)).is_err());
        let mut scrypt = kdf(1024, 1, 1);
        scrypt.algorithm = "scrypt".into();
        assert!(stretch("x", &scrypt).is_err());
    }
}
