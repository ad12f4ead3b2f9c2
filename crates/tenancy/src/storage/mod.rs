//! Where files meet the tenant: [`TenantStorage`], a handle on one tenant's
//! objects, opened only by the kernel for a resolved [`Tenant`].
//!
//! One object store serves every tenant (a local directory or an S3 bucket,
//! chosen once at start-up by `--storage-url`); a tenant's objects live under
//! `tenants/<tenant uuid>/`, their keys built from validated ids only
//! ([`ObjectKey`]). Every object is sealed with the tenant's own data key
//! ([`sealed`]), so that the store never holds a readable byte and purging the
//! tenant's wrapped key makes whatever copies remain unreadable.
//!
//! Usage is counted exactly: the registry row of the tenant's storage is
//! locked while an object is committed or removed, and its byte count moves
//! in that same transaction.

pub mod keys;
pub mod sealed;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use object_store::{GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload};
use sha2::Sha256;

pub use keys::{MasterKey, ObjectKey, tenant_prefix};
pub use sealed::MediaKind;

use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::registry::Registry;
use crate::tenant::{PerPlan, Tenant};
use keys::Secret;
use sealed::{CHUNK, HEADER, Header, Layout, Sealer};

/// Storage quotas per plan, in stored bytes.
pub type PlanQuotas = PerPlan<u64>;

const GIB: u64 = 1024 * 1024 * 1024;

/// How to open the object store.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// `file:///path` or `s3://bucket/prefix`; `None`: `<data dir>/objects`.
    pub url: Option<String>,
    /// `None`: read or make `<data dir>/master.key`.
    pub master_key: Option<MasterKey>,
    pub quotas: PlanQuotas,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            master_key: None,
            quotas: PerPlan {
                free: GIB,
                standard: 100 * GIB,
                enterprise: 1024 * GIB,
            },
        }
    }
}

/// Opens the store a URL names. S3 takes its endpoint, region and
/// credentials from the usual `AWS_*` environment variables.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>> {
    let bad = |why: &str| Error::Invalid(format!("--storage-url {url}: {why}"));
    let parsed = url::Url::parse(url).map_err(|_| bad("not a URL"))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|_| bad("not an absolute local path"))?;
            std::fs::create_dir_all(&path)?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(Error::from)?
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("no bucket"))?;
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(Error::from)?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                let prefix = object_store::path::Path::parse(prefix)
                    .map_err(|_| bad("the prefix is not a valid object path"))?;
                Ok(Arc::new(object_store::prefix::PrefixStore::new(
                    store, prefix,
                )))
            }
        }
        _ => Err(bad("expected file:// or s3://")),
    }
}

/// The kernel's side of storage: the store, the master key, and the
/// tenants' unwrapped data keys (cached; dropped when a tenant changes).
pub(crate) struct Storage {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) master: MasterKey,
    signing: Secret,
    pub(crate) quotas: PlanQuotas,
    keys: Mutex<HashMap<TenantId, Secret>>,
}

impl Storage {
    /// The HMAC over a tenant, `purpose`, `parts` and an expiry, keyed by
    /// the deployment's signing key: no I/O, no data key.
    fn mac(&self, tenant: TenantId, purpose: &str, parts: &[&str], expires: i64) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.signing.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        // Length-prefixed fields: no two different inputs read the same.
        let tenant = tenant.to_string();
        let expires = expires.to_string();
        for field in [purpose, tenant.as_str()]
            .into_iter()
            .chain(parts.iter().copied())
            .chain([expires.as_str()])
        {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// Whether `sig` signs these values for `tenant`, in constant time.
    pub(crate) fn verify(
        &self,
        tenant: TenantId,
        purpose: &str,
        parts: &[&str],
        expires: i64,
        sig: &str,
    ) -> bool {
        let Some(raw) = decode_hex(sig) else {
            return false;
        };
        self.mac(tenant, purpose, parts, expires)
            .verify_slice(&raw)
            .is_ok()
    }

    pub(crate) fn new(store: Arc<dyn ObjectStore>, master: MasterKey, quotas: PlanQuotas) -> Self {
        Self {
            store,
            signing: master.signing_key(),
            master,
            quotas,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Secret>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn forget(&self, id: TenantId) {
        self.cache().remove(&id);
    }

    /// The tenant's data key, unwrapped from the registry; `None` when it has
    /// none. Never makes one: reading, signing and a forged request create
    /// nothing (see [`ensure_data_key`](Self::ensure_data_key)).
    pub(crate) async fn data_key(
        &self,
        registry: &Registry,
        id: TenantId,
    ) -> Result<Option<Secret>> {
        if let Some(k) = self.cache().get(&id) {
            return Ok(Some(k.clone()));
        }
        let wrapped: Option<String> = sqlx::query_scalar(&format!(
            "SELECT wrapped_key FROM {} WHERE tenant_id = $1",
            registry.t("tenant_storage")
        ))
        .bind(id.to_string())
        .fetch_optional(registry.pool())
        .await?;
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let key = self.master.unwrap(id, &wrapped)?;
        self.cache().insert(id, key.clone());
        Ok(Some(key))
    }

    /// The tenant's data key, made if it has none: at provisioning, and on
    /// an authorised write of a tenant provisioned before keys were made
    /// then. One statement inserts it if absent; whoever inserted first
    /// wins, and everyone re-reads and uses that key.
    pub(crate) async fn ensure_data_key(
        &self,
        registry: &Registry,
        id: TenantId,
    ) -> Result<Secret> {
        if let Some(k) = self.data_key(registry, id).await? {
            return Ok(k);
        }
        let fresh = self.master.wrap(id, &Secret::random())?;
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, wrapped_key, stored_bytes, created_at)
             VALUES ($1, $2, 0, $3) ON CONFLICT (tenant_id) DO NOTHING",
            registry.t("tenant_storage")
        ))
        .bind(id.to_string())
        .bind(&fresh)
        .bind(crate::clock::now())
        .execute(registry.pool())
        .await?;
        self.data_key(registry, id).await?.ok_or(Error::NotFound)
    }

    /// Makes `key` the tenant's data key (an import's), wrapped under this
    /// deployment's master key, with no bytes counted yet.
    pub(crate) async fn install_data_key(
        &self,
        registry: &Registry,
        id: TenantId,
        key: &Secret,
    ) -> Result<()> {
        let wrapped = self.master.wrap(id, key)?;
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, wrapped_key, stored_bytes, created_at)
             VALUES ($1, $2, 0, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET wrapped_key = $2, stored_bytes = 0",
            registry.t("tenant_storage")
        ))
        .bind(id.to_string())
        .bind(&wrapped)
        .bind(crate::clock::now())
        .execute(registry.pool())
        .await?;
        self.forget(id);
        Ok(())
    }

    /// Sets the bytes the tenant's objects take (after an import wrote them).
    pub(crate) async fn set_stored_bytes(
        &self,
        registry: &Registry,
        id: TenantId,
        bytes: u64,
    ) -> Result<()> {
        let bytes = i64::try_from(bytes).map_err(|_| Error::Invalid("usage overflow".into()))?;
        sqlx::query(&format!(
            "UPDATE {} SET stored_bytes = $2 WHERE tenant_id = $1",
            registry.t("tenant_storage")
        ))
        .bind(id.to_string())
        .bind(bytes)
        .execute(registry.pool())
        .await?;
        Ok(())
    }

    /// Deletes every object under the tenant's prefix and its wrapped key.
    pub(crate) async fn purge(&self, registry: &Registry, id: TenantId) -> Result<()> {
        let prefix = object_store::path::Path::from(tenant_prefix(id).trim_end_matches('/'));
        let mut listed = self.store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(Error::from)?;
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for table in ["storage_reservations", "tenant_storage"] {
            sqlx::query(&format!(
                "DELETE FROM {} WHERE tenant_id = $1",
                registry.t(table)
            ))
            .bind(id.to_string())
            .execute(registry.pool())
            .await?;
        }
        self.forget(id);
        Ok(())
    }
}

/// The bytes a tenant's objects take (0 before its first upload, or after purge).
pub(crate) async fn stored_bytes(registry: &Registry, id: TenantId) -> Result<i64> {
    let n: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT stored_bytes FROM {} WHERE tenant_id = $1",
        registry.t("tenant_storage")
    ))
    .bind(id.to_string())
    .fetch_optional(registry.pool())
    .await?;
    Ok(n.unwrap_or(0))
}

/// How many upload reservations of the tenant the registry holds.
pub(crate) async fn reservations(registry: &Registry, id: TenantId) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE tenant_id = $1",
        registry.t("storage_reservations")
    ))
    .bind(id.to_string())
    .fetch_one(registry.pool())
    .await?)
}

/// Whether the registry still holds the tenant's wrapped data key.
pub(crate) async fn has_key(registry: &Registry, id: TenantId) -> Result<bool> {
    let row = sqlx::query(&format!(
        "SELECT tenant_id FROM {} WHERE tenant_id = $1",
        registry.t("tenant_storage")
    ))
    .bind(id.to_string())
    .fetch_optional(registry.pool())
    .await?;
    Ok(row.is_some())
}

/// One tenant's objects. Obtained from [`Kernel::storage`](crate::Kernel::storage).
#[derive(Clone)]
pub struct TenantStorage {
    kernel: crate::Kernel,
    tenant: TenantId,
    quota: u64,
    /// `None` while the tenant has none (it never stored a file, and was
    /// provisioned before keys were made at provisioning).
    data_key: Option<Secret>,
}

impl std::fmt::Debug for TenantStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantStorage")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl crate::Kernel {
    /// The storage of `tenant`: the only way to its files. Makes no data
    /// key: a tenant without one has no file to read, and gets one on its
    /// first upload.
    pub async fn storage(&self, tenant: &Tenant) -> Result<TenantStorage> {
        let storage = &self.inner().storage;
        let data_key = storage.data_key(self.registry(), tenant.id).await?;
        Ok(TenantStorage {
            kernel: self.clone(),
            tenant: tenant.id,
            quota: *storage.quotas.get(tenant.plan),
            data_key,
        })
    }

    /// The bytes `tenant`'s objects take.
    pub async fn stored_bytes(&self, tenant: &Tenant) -> Result<i64> {
        stored_bytes(self.registry(), tenant.id).await
    }

    /// Whether the registry still holds `tenant`'s wrapped data key.
    pub async fn has_storage_key(&self, tenant: &Tenant) -> Result<bool> {
        has_key(self.registry(), tenant.id).await
    }

    /// The object store itself, for operators' checks (what lies under a prefix).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner().storage.store.clone()
    }
}

/// A stored object, opened for reading.
#[derive(Clone, Debug)]
pub struct Object {
    pub kind: MediaKind,
    /// Plaintext length.
    pub len: u64,
    pub etag: String,
    key: ObjectKey,
    header: Header,
    layout: Layout,
}

/// What a committed upload stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub len: u64,
    pub etag: String,
}

impl TenantStorage {
    fn storage(&self) -> &Storage {
        &self.kernel.inner().storage
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.storage().store
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// A lesson's content file.
    pub fn lesson_content(&self, lesson: uuid::Uuid) -> ObjectKey {
        ObjectKey::lesson_content(self.tenant, lesson)
    }

    /// A user's avatar.
    pub fn avatar(&self, user: uuid::Uuid) -> ObjectKey {
        ObjectKey::avatar(self.tenant, user)
    }

    /// A key of this tenant's, or nothing: a handle never touches another
    /// tenant's prefix, whatever key it is handed.
    fn own(&self, key: &ObjectKey) -> Result<()> {
        if key.belongs_to(self.tenant) {
            Ok(())
        } else {
            tracing::error!(key = %key.as_str(), "a key of another tenant reached a tenant's storage");
            Err(Error::NotFound)
        }
    }

    /// Opens an object; [`Error::NotFound`] when there is none.
    pub async fn open(&self, key: &ObjectKey) -> Result<Object> {
        self.own(key)?;
        if self.data_key.is_none() {
            // No key, so no file was ever stored.
            return Err(Error::NotFound);
        }
        let got = self
            .store()
            .get_opts(
                &key.path(),
                GetOptions {
                    range: Some(GetRange::Bounded(0..HEADER)),
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::from)?;
        let stored = got.meta.size;
        let head = got.bytes().await.map_err(Error::from)?;
        let header = Header::decode(&head)?;
        let layout = Layout::of_stored(stored)?;
        Ok(Object {
            kind: header.kind,
            len: layout.len,
            etag: header.etag(),
            key: key.clone(),
            header,
            layout,
        })
    }

    /// The plaintext bytes `range` of `obj` (within `0..obj.len`), as a
    /// stream: only the chunks the range touches are read and opened.
    pub fn read(
        &self,
        obj: &Object,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        const BATCH: u64 = 16;
        let store = self.store().clone();
        let sealer = self
            .data_key
            .as_ref()
            .map(|k| Arc::new(Sealer::new(k, obj.key.clone(), obj.header)));
        let layout = obj.layout;
        let path = obj.key.path();
        let end = range.end.min(layout.len);
        let start = range.start.min(end);
        let first = start / CHUNK;
        let last = if end == 0 { 0 } else { (end - 1) / CHUNK };
        let empty = start >= end;
        futures_util::stream::try_unfold(first, move |i| {
            let store = store.clone();
            let sealer = sealer.clone();
            let path = path.clone();
            async move {
                if empty || i > last {
                    return Ok(None);
                }
                let sealer = sealer.ok_or(Error::NotFound)?;
                let j = (i + BATCH - 1).min(last);
                let sealed = store
                    .get_range(&path, layout.sealed_range(i, j))
                    .await
                    .map_err(Error::from)?;
                let mut out = BytesMut::new();
                let mut at = 0usize;
                for c in i..=j {
                    let n = usize::try_from(layout.sealed_len(c))
                        .map_err(|_| Error::Crypto("chunk size"))?;
                    let piece = sealed
                        .get(at..at + n)
                        .ok_or(Error::Crypto("a sealed object changed while read"))?;
                    at += n;
                    let plain = sealer.open(c, c == layout.last, piece)?;
                    let base = c * CHUNK;
                    let from = start.saturating_sub(base) as usize;
                    let to = (end - base).min(plain.len() as u64) as usize;
                    out.extend_from_slice(&plain[from.min(to)..to]);
                }
                Ok(Some((out.freeze(), j + 1)))
            }
        })
    }

    /// Streams `body` into `key`, sealed, checking its magic bytes against
    /// `kind`, at most `max_len` plaintext bytes, within the tenant's quota.
    /// The object appears (replacing any old one) only if all of that holds;
    /// otherwise nothing is stored and usage is unchanged.
    ///
    /// The quota is reserved as the bytes arrive, before they are accepted
    /// (see [`Reservation`]): uploads running at once share what is left of
    /// it, rather than each being allowed all of it. The tenant's data key
    /// is made here if it has none (only an authorised upload gets this far).
    pub async fn put_stream<S, E>(
        &self,
        key: &ObjectKey,
        kind: MediaKind,
        max_len: u64,
        body: S,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.own(key)?;
        let data_key = match &self.data_key {
            Some(k) => k.clone(),
            None => {
                self.storage()
                    .ensure_data_key(self.kernel.registry(), self.tenant)
                    .await?
            }
        };
        let mut held = Reservation::take(self, key, Layout::stored_size(0)).await?;
        let result = self
            .stream(key, kind, max_len, body, &data_key, &mut held)
            .await;
        if result.is_err() {
            held.release().await;
        }
        result
    }

    async fn stream<S, E>(
        &self,
        key: &ObjectKey,
        kind: MediaKind,
        max_len: u64,
        body: S,
        data_key: &Secret,
        held: &mut Reservation,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let header = Header::fresh(kind);
        let sealer = Sealer::new(data_key, key.clone(), header);
        let upload = self
            .store()
            .put_multipart(&key.path())
            .await
            .map_err(Error::from)?;
        let mut w = Guard::new(upload);
        w.write(&header.encode()).await?;
        let mut buf = BytesMut::new();
        let mut len: u64 = 0;
        let mut index: u64 = 0;
        let mut sniffed = false;
        let mut body = std::pin::pin!(body);
        loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(piece) = next {
                let piece = piece.map_err(|e| Error::Interrupted(e.to_string()))?;
                len += piece.len() as u64;
                if len > max_len {
                    w.abort().await;
                    return Err(Error::TooLarge);
                }
                if let Err(e) = held.cover(self, Layout::stored_size(len)).await {
                    w.abort().await;
                    return Err(e);
                }
                buf.extend_from_slice(&piece);
            }
            if !sniffed && (buf.len() >= MediaKind::SNIFF || done) {
                if !kind.matches(&buf) {
                    w.abort().await;
                    return Err(Error::MediaMismatch);
                }
                sniffed = true;
            }
            while buf.len() as u64 > CHUNK {
                let chunk = buf.split_to(CHUNK as usize);
                let sealed = sealer.seal(index, false, &chunk)?;
                index += 1;
                w.write(&sealed).await?;
            }
            if done {
                break;
            }
        }
        // What is left is the final chunk: fewer than CHUNK bytes, or exactly
        // CHUNK, which then goes out as a full chunk followed by an empty one.
        if buf.len() as u64 == CHUNK {
            let sealed = sealer.seal(index, false, &buf)?;
            index += 1;
            w.write(&sealed).await?;
            buf.clear();
        }
        let sealed = sealer.seal(index, true, &buf)?;
        w.write(&sealed).await?;
        w.flush().await?;
        let size = Layout::stored_size(len);
        self.commit(key, size, w, held).await?;
        Ok(Stored {
            len,
            etag: header.etag(),
        })
    }

    /// Opens a registry transaction holding the lock of the tenant's usage
    /// row; returns it with the usage (`None`: the tenant's key is gone).
    async fn lock_usage(
        &self,
    ) -> Result<(
        sqlx::Transaction<'static, crate::dataplane::Db>,
        Option<i64>,
    )> {
        let registry = self.kernel.registry();
        let mut tx = registry.begin_write().await?;
        let used = sqlx::query_scalar(&format!(
            "UPDATE {} SET stored_bytes = stored_bytes WHERE tenant_id = $1 RETURNING stored_bytes",
            registry.t("tenant_storage")
        ))
        .bind(self.tenant.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        Ok((tx, used))
    }

    /// Commits an upload under the lock of the tenant's usage row: quota
    /// checked against exact usage, the object completed, usage moved, and
    /// the upload's reservation released, all at once.
    async fn commit(
        &self,
        key: &ObjectKey,
        size: u64,
        mut w: Guard,
        held: &mut Reservation,
    ) -> Result<()> {
        let (mut tx, used) = self.lock_usage().await?;
        let Some(used) = used else {
            // The tenant's key is gone (purged meanwhile): store nothing.
            w.abort().await;
            return Err(Error::NotFound);
        };
        let old = self.stored_size(key).await?;
        let used = u64::try_from(used).unwrap_or(0);
        let after = used.saturating_sub(old) + size;
        if after > self.quota {
            w.abort().await;
            return Err(Error::QuotaExceeded);
        }
        w.complete().await?;
        self.set_usage(&mut tx, after).await?;
        held.drop_in(&mut tx).await?;
        tx.commit().await?;
        held.done = true;
        Ok(())
    }

    async fn set_usage(
        &self,
        tx: &mut sqlx::Transaction<'static, crate::dataplane::Db>,
        bytes: u64,
    ) -> Result<()> {
        let bytes = i64::try_from(bytes).map_err(|_| Error::Invalid("usage overflow".into()))?;
        sqlx::query(&format!(
            "UPDATE {} SET stored_bytes = $2 WHERE tenant_id = $1",
            self.kernel.registry().t("tenant_storage")
        ))
        .bind(self.tenant.to_string())
        .bind(bytes)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The stored size of `key`, 0 when there is no such object.
    async fn stored_size(&self, key: &ObjectKey) -> Result<u64> {
        match self.store().head(&key.path()).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `key` (nothing if absent), and its bytes from the usage.
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.own(key)?;
        let (mut tx, used) = self.lock_usage().await?;
        let size = self.stored_size(key).await?;
        if size == 0 {
            return Ok(());
        }
        match self.store().delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(used) = used {
            self.set_usage(
                &mut tx,
                u64::try_from(used).unwrap_or(0).saturating_sub(size),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A signature over this tenant, `purpose`, `parts` and an expiry (Unix
    /// seconds), as lowercase hex.
    pub fn sign(&self, purpose: &str, parts: &[&str], expires: i64) -> String {
        self.storage()
            .mac(self.tenant, purpose, parts, expires)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Strict lowercase hex: one spelling per value.
pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// How long a reservation outlives its last growth: a node that dies
/// mid-upload leaves its reservations to lapse after this.
const RESERVATION_LEASE_S: i64 = 15 * 60;

/// Part of a tenant's quota held by one upload while it streams, recorded
/// in the registry (`storage_reservations`) so that every node's uploads
/// see it. Taken and grown under the lock of the tenant's usage row, never
/// beyond what the quota leaves after usage and the other uploads'
/// reservations; released when the upload commits (in the same
/// transaction) or fails; dropped mid-stream (a client gone), released in
/// the background.
struct Reservation {
    kernel: crate::Kernel,
    tenant: TenantId,
    id: String,
    /// Stored bytes held.
    bytes: u64,
    /// The stored size of the object being replaced: its bytes are freed by
    /// the upload, so they count as room.
    old: u64,
    done: bool,
}

impl Reservation {
    /// Holds `needed` stored bytes for an upload to `key`, or refuses with
    /// [`Error::QuotaExceeded`].
    async fn take(storage: &TenantStorage, key: &ObjectKey, needed: u64) -> Result<Self> {
        let mut held = Self {
            kernel: storage.kernel.clone(),
            tenant: storage.tenant,
            id: uuid::Uuid::now_v7().to_string(),
            bytes: 0,
            old: 0,
            done: false,
        };
        let (tx, _) = storage.lock_usage().await?;
        held.old = storage.stored_size(key).await?;
        drop(tx);
        held.cover(storage, needed).await?;
        Ok(held)
    }

    /// Makes sure `needed` stored bytes are held, growing the reservation
    /// (with some slack while there is room, so that a large upload takes a
    /// few dozen steps, not one per piece).
    async fn cover(&mut self, storage: &TenantStorage, needed: u64) -> Result<()> {
        if needed <= self.bytes {
            return Ok(());
        }
        let registry = self.kernel.registry();
        let (mut tx, used) = storage.lock_usage().await?;
        let used = u64::try_from(used.ok_or(Error::NotFound)?).unwrap_or(0);
        let now = crate::clock::unix_now();
        let table = registry.t("storage_reservations");
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE tenant_id = $1 AND expires_at <= $2"
        ))
        .bind(self.tenant.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let others: i64 = sqlx::query_scalar(&format!(
            "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM {table}
             WHERE tenant_id = $1 AND id <> $2"
        ))
        .bind(self.tenant.to_string())
        .bind(&self.id)
        .fetch_one(&mut *tx)
        .await?;
        let others = u64::try_from(others).unwrap_or(0);
        let room = (storage.quota + self.old).saturating_sub(used.saturating_add(others));
        if room < needed {
            // Refused: what it held goes back at once, in the same
            // transaction, so that two uploads never both fail for want of
            // the room the other held.
            remove_reservation(&self.kernel, &self.id, &mut *tx).await?;
            tx.commit().await?;
            self.done = true;
            return Err(Error::QuotaExceeded);
        }
        let wanted = needed.saturating_add((needed / 4).max(1024 * 1024));
        let grant = if room >= wanted { wanted } else { needed };
        let bytes =
            i64::try_from(grant).map_err(|_| Error::Invalid("reservation overflow".into()))?;
        sqlx::query(&format!(
            "INSERT INTO {table} (id, tenant_id, bytes, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET bytes = $3, expires_at = $4"
        ))
        .bind(&self.id)
        .bind(self.tenant.to_string())
        .bind(bytes)
        .bind(now + RESERVATION_LEASE_S)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.bytes = grant;
        Ok(())
    }

    /// Removes the reservation inside `tx` (the commit's transaction).
    async fn drop_in(
        &self,
        tx: &mut sqlx::Transaction<'static, crate::dataplane::Db>,
    ) -> Result<()> {
        remove_reservation(&self.kernel, &self.id, &mut **tx).await
    }

    /// Releases what is held, now.
    async fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) =
            remove_reservation(&self.kernel, &self.id, self.kernel.registry().pool()).await
        {
            tracing::warn!(error = %e, "releasing an upload's quota reservation failed; it lapses on its own");
        }
    }
}

async fn remove_reservation<'e, X>(kernel: &crate::Kernel, id: &str, on: X) -> Result<()>
where
    X: sqlx::Executor<'e, Database = crate::dataplane::Db>,
{
    sqlx::query(&format!(
        "DELETE FROM {} WHERE id = $1",
        kernel.registry().t("storage_reservations")
    ))
    .bind(id)
    .execute(on)
    .await?;
    Ok(())
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (kernel, id) = (self.kernel.clone(), std::mem::take(&mut self.id));
            rt.spawn(async move {
                let _ = remove_reservation(&kernel, &id, kernel.registry().pool()).await;
            });
        }
    }
}

/// The size of each uploaded part but the last (S3's minimum is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

/// An upload in flight, sent part by part (at most one part buffered);
/// aborted if dropped before it is completed (a client gone mid-body, a
/// refused upload), so that no part is left behind.
struct Guard {
    upload: Option<Box<dyn MultipartUpload>>,
    buf: Vec<u8>,
}

impl Guard {
    fn new(upload: Box<dyn MultipartUpload>) -> Self {
        Self {
            upload: Some(upload),
            buf: Vec::new(),
        }
    }

    fn upload(&mut self) -> Result<&mut Box<dyn MultipartUpload>> {
        self.upload
            .as_mut()
            .ok_or_else(|| Error::Interrupted("the upload is over".into()))
    }

    /// Buffers `bytes`, sending a part whenever one is full.
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PART {
            self.send(PART).await?;
        }
        Ok(())
    }

    async fn send(&mut self, n: usize) -> Result<()> {
        let rest = self.buf.split_off(n);
        let part = std::mem::replace(&mut self.buf, rest);
        let fut = self.upload()?.put_part(PutPayload::from(part));
        fut.await.map_err(Error::from)
    }

    /// Sends what is buffered: after this only `complete` is left, which is
    /// quick (no bytes travel), so it may run under a lock.
    async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.send(self.buf.len()).await?;
        }
        Ok(())
    }

    async fn complete(&mut self) -> Result<()> {
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| Error::Interrupted("the upload is over".into()))?;
        upload.complete().await.map_err(Error::from)?;
        Ok(())
    }

    async fn abort(&mut self) {
        if let Some(mut u) = self.upload.take()
            && let Err(e) = u.abort().await
        {
            tracing::warn!(error = %e, "aborting an upload failed");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut u) = self.upload.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = u.abort().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_belongs_to_its_tenant_only() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let l = uuid::Uuid::now_v7();
        assert!(ObjectKey::lesson_content(a, l).belongs_to(a));
        assert!(!ObjectKey::lesson_content(b, l).belongs_to(a));
        assert!(!ObjectKey::avatar(b, l).belongs_to(a));
    }

    #[test]
    fn hex_has_one_spelling() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("00FF"), None);
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
