//! `Kernel::import`: an archive back into a tenant, all or nothing.
//!
//! The archive is untrusted input. Before anything is written the manifest
//! is parsed strictly, its versions checked, the data key unwrapped with
//! the operator's key and the manifest's MAC verified. Then the tenant is
//! reserved (`provisioning`, never served) and built, its files streamed
//! into the store — every chunk authenticated on the way — and checked
//! against the authenticated file index, its rows inserted in one
//! transaction and checked against the manifest, as read from the archive
//! and again as stored. Only then is it activated. Any failure removes what
//! was made; a run killed half-way leaves a `provisioning` tenant that the
//! same command, run again, clears and imports afresh.

use hmac::Mac;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt};
use zstd::stream::raw::{DParameter, Operation};

use super::rows::{self, TableDigest};
use super::seal::Opener;
use super::tarball::{self, TarReader};
use super::*;
use crate::id::Slug;
use crate::kernel::Kernel;
use crate::lifecycle::{ProvisionSpec, Reservation};
use crate::storage::sealed::{HEADER, Header, Layout, Sealer};
use crate::tenant::{Isolation, Plan, Tenant};

/// What to import, and as what.
pub struct ImportOptions<'a> {
    /// The learning domain's tables, as this build knows them.
    pub tables: &'a [Table],
    pub key: &'a ArchiveKey,
    /// A copy under this slug, as a new tenant (new id, new data key);
    /// `None` (or the archive's own slug): a restore, same slug, same id.
    pub slug: Option<Slug>,
    /// `None`: the archive's mode and placement when this deployment has
    /// them, else its defaults.
    pub isolation: Option<Isolation>,
    pub placement: Option<String>,
    /// `None`: the archive's plan (which sets the quota its files must fit).
    pub plan: Option<Plan>,
}

/// What an import made.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub tenant: Tenant,
    pub archive_id: String,
    /// The archive's tenant id and slug.
    pub source_id: String,
    pub source_slug: String,
    /// A restore (same id) rather than a copy.
    pub restored: bool,
    /// An interrupted earlier import of it was cleared first.
    pub resumed: bool,
    pub rows: u64,
    pub files: u64,
    pub file_bytes: u64,
}

/// zstd's window: 2^24 bytes at most (this build writes 2^21 and below).
const WINDOW_LOG_MAX: u32 = 24;
const PIECE: usize = 64 * 1024;

impl Kernel {
    /// Imports the archive `input` (see [`crate::archive`]). Nothing is
    /// served until everything is in and checked; on any error nothing is
    /// left behind.
    pub async fn import<R: AsyncRead + Unpin + Send>(
        &self,
        input: R,
        opts: ImportOptions<'_>,
        progress: &Progress,
    ) -> Result<ImportSummary> {
        let mut tar = TarReader::new(input);
        expect(&mut tar, MANIFEST).await?;
        let manifest_bytes = tar.all(limits::MANIFEST).await?;
        let m: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| invalid(format!("the manifest is not one this build reads: {e}")))?;
        let tables = check_manifest(&m, opts.tables, self.latest_version())?;
        expect(&mut tar, MANIFEST_MAC).await?;
        let given = tar.all(128).await?;
        let storage = &self.inner().storage;
        let data_key = unwrap_data_key(opts.key, &storage.master, &m).await?;
        let mut mac = mac_start(&data_key, MAC_LABEL_MANIFEST, &m.archive_id);
        mac.update(&manifest_bytes);
        if !mac_ok(mac, &given) {
            return Err(invalid(
                "the manifest does not match its MAC: the archive was altered or damaged",
            ));
        }
        let source = TenantId::parse(&m.tenant.id)
            .ok_or_else(|| invalid("the manifest's tenant id is not a UUID"))?;
        let archived = Slug::parse(&m.tenant.slug)
            .map_err(|_| invalid("the manifest's slug is not a valid slug"))?;
        let plan = match opts.plan {
            Some(p) => p,
            None => Plan::parse(&m.tenant.plan)
                .ok_or_else(|| invalid("the manifest's plan is not a known plan"))?,
        };
        let slug = opts.slug.clone().unwrap_or_else(|| archived.clone());
        let restored = slug == archived;
        let (isolation, placement) = self.import_target(&m, &opts)?;
        // One import of a slug at a time, from any node or CLI: a retried
        // request never clears an import that is still running.
        let Some(lease) = self.lease(&format!("import:{slug}")).await? else {
            return Err(Error::Busy(format!(
                "another import of `{slug}` is running; try again when it ends (an import that \
                 was killed lets go within 10 s)"
            )));
        };
        let spec = ProvisionSpec {
            slug,
            name: m.tenant.name.clone(),
            isolation: Some(isolation),
            placement,
            plan,
        };
        let reservation = self
            .reserve_for_import(&spec, restored.then_some(source))
            .await?;
        let target = reservation.tenant.clone();
        tracing::info!(tenant = %target.id, source = %source, archive = %m.archive_id,
            restored, resumed = reservation.resumed, "importing a tenant archive");
        let work = async {
            // The data key: the archive's own for a restore (its files are
            // kept sealed as they are), a fresh one for a copy (its files
            // are resealed under the copy's keys).
            let target_key = if restored {
                data_key.clone()
            } else {
                Secret::random()
            };
            storage
                .install_data_key(self.registry(), target.id, &target_key)
                .await?;
            self.build(&reservation).await?;
            let files = self
                .import_files(
                    &mut tar,
                    &m,
                    source,
                    &target,
                    &data_key,
                    &target_key,
                    progress,
                )
                .await?;
            let rows = self
                .import_tables(&mut tar, &m, source, &target, &data_key, &tables, progress)
                .await?;
            if tar.next().await?.is_some() {
                return Err(invalid("entries follow the last table"));
            }
            storage
                .set_stored_bytes(self.registry(), target.id, files.1)
                .await?;
            Ok::<_, Error>((files, rows))
        };
        let ((files, file_bytes), rows) = match work.await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(tenant = %target.id, error = %e, "import failed; removing what it made");
                if let Err(again) = self.abandon(&target).await {
                    tracing::error!(tenant = %target.id, error = %again,
                        "removing a failed import failed too; run the import again, or `campus tenant delete --purge`");
                }
                return Err(e);
            }
        };
        self.inner().cache.purge(target.id).await;
        let tenant = self.activate(&reservation).await?;
        lease.release().await;
        tracing::info!(tenant = %tenant.id, rows, files, file_bytes, "tenant imported");
        Ok(ImportSummary {
            tenant,
            archive_id: m.archive_id,
            source_id: m.tenant.id,
            source_slug: m.tenant.slug,
            restored,
            resumed: reservation.resumed,
            rows,
            files,
            file_bytes,
        })
    }

    /// The mode and placement an import lands in.
    fn import_target(
        &self,
        m: &Manifest,
        opts: &ImportOptions<'_>,
    ) -> Result<(Isolation, Option<String>)> {
        let data = &self.inner().data;
        if opts.isolation.is_some() || opts.placement.is_some() {
            let isolation = opts.isolation.unwrap_or(self.default_isolation());
            data.check(isolation, opts.placement.as_deref())?;
            return Ok((isolation, opts.placement.clone()));
        }
        if let Some(i) = Isolation::parse(&m.tenant.isolation) {
            if data.check(i, Some(&m.tenant.placement)).is_ok() {
                return Ok((i, Some(m.tenant.placement.clone())));
            }
            if data.check(i, None).is_ok() {
                return Ok((i, None));
            }
        }
        Ok((self.default_isolation(), None))
    }

    /// Removes whatever a failed or interrupted import made of `t`, and
    /// retires its registry row (`purged`: the slug is free again).
    async fn abandon(&self, t: &Tenant) -> Result<()> {
        self.wipe(t).await?;
        self.inner()
            .registry
            .update(
                t.id,
                crate::registry::Change::Status(crate::TenantStatus::Purged),
            )
            .await?;
        self.refresh().await
    }

    /// Destroys `t`'s data, files and data key (not its registry row).
    pub(crate) async fn wipe(&self, t: &Tenant) -> Result<()> {
        let inner = self.inner();
        inner.data.destroy(t).await?;
        inner.storage.purge(&inner.registry, t.id).await?;
        inner.cache.purge(t.id).await;
        Ok(())
    }

    /// Streams the archive's files into the store under `target`'s prefix,
    /// authenticating every chunk; checks them against the index. Returns
    /// how many, and their stored bytes.
    #[allow(clippy::too_many_arguments)]
    async fn import_files<R: AsyncRead + Unpin>(
        &self,
        tar: &mut TarReader<R>,
        m: &Manifest,
        source: TenantId,
        target: &Tenant,
        data_key: &Secret,
        target_key: &Secret,
        progress: &Progress,
    ) -> Result<(u64, u64)> {
        let quota = *self.inner().storage.quotas.get(target.plan);
        let mut expected_index = Sha256::new();
        let (mut files, mut bytes) = (0u64, 0u64);
        loop {
            let e = tar
                .next()
                .await?
                .ok_or_else(|| invalid("the archive ends before its file index"))?;
            if e.path == INDEX {
                if e.size > limits::INDEX {
                    return Err(invalid("the file index is larger than it may be"));
                }
                break;
            }
            let path = e
                .path
                .strip_prefix("files/")
                .and_then(FilePath::parse)
                .ok_or_else(|| {
                    invalid(format!(
                        "unexpected entry `{}` where files/… or {INDEX} belongs",
                        e.path.escape_debug()
                    ))
                })?;
            // A file twice (or any other change) makes the index differ.
            files += 1;
            if files > limits::FILES {
                return Err(invalid("the archive holds more files than an import takes"));
            }
            if e.size > limits::FILE {
                return Err(invalid(format!("the file {} is too large", path.rel())));
            }
            bytes += e.size;
            if bytes > quota {
                return Err(invalid(format!(
                    "the archive's files take more than the {} bytes the `{}` plan allows",
                    quota,
                    target.plan.as_str()
                )));
            }
            let sha = self
                .import_file(tar, e.size, path, source, target, data_key, target_key)
                .await?;
            expected_index.update(index_line(path, e.size, &sha).as_bytes());
            progress("files", bytes, None);
        }
        // The index: exactly the lines of the files received, authenticated.
        let mut got = Sha256::new();
        let mut mac = mac_start(data_key, MAC_LABEL_INDEX, &m.archive_id);
        loop {
            let piece = tar.chunk(PIECE).await?;
            if piece.is_empty() {
                break;
            }
            got.update(&piece);
            mac.update(&piece);
        }
        expect(tar, INDEX_MAC).await?;
        let given = tar.all(128).await?;
        if !mac_ok(mac, &given) {
            return Err(invalid(
                "the file index does not match its MAC: the archive was altered or damaged",
            ));
        }
        if got.finalize() != expected_index.finalize() {
            return Err(invalid(
                "the archive's files are not the ones its index lists (missing, extra, reordered or altered)",
            ));
        }
        Ok((files, bytes))
    }

    /// One file: every chunk opened with the archive's key; kept as it is
    /// for a restore, resealed under the copy's key and object key for a
    /// copy. Returns the SHA-256 of the archive's bytes of it.
    #[allow(clippy::too_many_arguments)]
    async fn import_file<R: AsyncRead + Unpin>(
        &self,
        tar: &mut TarReader<R>,
        size: u64,
        path: FilePath,
        source: TenantId,
        target: &Tenant,
        data_key: &Secret,
        target_key: &Secret,
    ) -> Result<String> {
        let layout = Layout::of_stored(size)
            .map_err(|_| invalid(format!("the file {} is not a sealed file", path.rel())))?;
        let mut sha = Sha256::new();
        let head = read_exact(tar, HEADER as usize).await?;
        sha.update(&head);
        let header = Header::decode(&head)
            .map_err(|_| invalid(format!("the file {} is not a sealed file", path.rel())))?;
        let opener = Sealer::new(data_key, path.key(source), header);
        // Kept as they are only when the key stays too (a restore, same id
        // and same data key); resealed otherwise.
        let same = source == target.id && data_key.0 == target_key.0;
        let (sealer, new_header) = if same {
            (None, header)
        } else {
            let h = Header::fresh(header.kind);
            (Some(Sealer::new(target_key, path.key(target.id), h)), h)
        };
        let store = self.inner().storage.store.clone();
        // The tenant's prefix was empty when the import began: an object
        // there now came from this archive, which lists a file twice.
        match store.head(&path.key(target.id).path()).await {
            Ok(_) => return Err(invalid(format!("the file {} appears twice", path.rel()))),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut out = object_store::buffered::BufWriter::new(store, path.key(target.id).path());
        let written = async {
            out.write_all(&new_header.encode()).await?;
            for i in 0..=layout.last {
                let sealed = read_exact(tar, layout.sealed_len(i) as usize).await?;
                sha.update(&sealed);
                let last = i == layout.last;
                let plain = opener.open(i, last, &sealed).map_err(|_| {
                    invalid(format!(
                        "the file {} failed authentication (damaged, altered or of another tenant)",
                        path.rel()
                    ))
                })?;
                match &sealer {
                    None => out.write_all(&sealed).await?,
                    Some(s) => out.write_all(&s.seal(i, last, &plain)?).await?,
                }
            }
            out.shutdown().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = written {
            let _ = out.abort().await;
            return Err(e);
        }
        Ok(hex(&sha.finalize()))
    }

    /// Every table's rows, in one transaction: inserted as they stream,
    /// checked against the manifest as read and again as stored.
    #[allow(clippy::too_many_arguments)]
    async fn import_tables<R: AsyncRead + Unpin>(
        &self,
        tar: &mut TarReader<R>,
        m: &Manifest,
        source: TenantId,
        target: &Tenant,
        data_key: &Secret,
        tables: &[Table],
        progress: &Progress,
    ) -> Result<u64> {
        let total = m.tables.iter().fold(0u64, |n, t| n.saturating_add(t.rows));
        let mut done = 0u64;
        let mut tx = self.begin_write(target).await?;
        for (mt, t) in m.tables.iter().zip(tables) {
            let name = format!("tables/{}", t.name);
            let e = expect(tar, &name).await?;
            let mut opener =
                Opener::new(data_key, e.size, &m.archive_id, &source.to_string(), &name)?;
            let mut decoder = zstd::stream::raw::Decoder::new()?;
            decoder.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
            let mut out = vec![0u8; PIECE];
            let mut lines = Lines::new(t, mt);
            let mut plain = Vec::new();
            let mut frame_end = false;
            loop {
                let piece = tar.chunk(PIECE).await?;
                if piece.is_empty() {
                    break;
                }
                plain.clear();
                opener.feed(&piece, &mut plain)?;
                let mut input = &plain[..];
                loop {
                    let mut inb = zstd::stream::raw::InBuffer::around(input);
                    let mut outb = zstd::stream::raw::OutBuffer::around(&mut out[..]);
                    let hint = decoder
                        .run(&mut inb, &mut outb)
                        .map_err(|e| invalid(format!("{name} does not decompress: {e}")))?;
                    let (read, wrote) = (inb.pos(), outb.pos());
                    input = &input[read..];
                    frame_end = hint == 0;
                    lines.push(&out[..wrote], &mut tx).await?;
                    if input.is_empty() && wrote < out.len() {
                        break;
                    }
                }
                progress("rows", done + lines.digest.rows, Some(total));
            }
            if !opener.finished() {
                return Err(invalid(format!("{name} ends early")));
            }
            if !frame_end {
                return Err(invalid(format!("{name} ends inside its compressed stream")));
            }
            lines.finish(&mut tx).await?;
            if lines.digest.rows != mt.rows
                || lines.digest.bytes != mt.bytes
                || lines.digest.hex() != mt.sha256
            {
                return Err(invalid(format!(
                    "{} does not match the manifest ({} rows read, {} listed)",
                    t.name, lines.digest.rows, mt.rows
                )));
            }
            done += lines.digest.rows;
        }
        // What is stored now reads back exactly as the archive has it.
        for (mt, t) in m.tables.iter().zip(tables) {
            let stored = rows::digest_table(&mut tx, t).await?;
            if stored.hex() != mt.sha256 {
                return Err(invalid(format!(
                    "{} as stored differs from the archive ({} rows)",
                    t.name, stored.rows
                )));
            }
            progress("verify", stored.rows, Some(total));
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Step 1 of an import: the registry row, `provisioning`. With `id` (a
    /// restore) the tenant keeps its id: a purged one is brought back, a
    /// live one is refused. An earlier interrupted import of the same slug
    /// is cleared first.
    async fn reserve_for_import(
        &self,
        spec: &ProvisionSpec,
        id: Option<TenantId>,
    ) -> Result<Reservation> {
        let name = crate::lifecycle::validate_name(&spec.name)
            .map_err(|_| invalid("the manifest's tenant name is not a valid name"))?;
        let isolation = spec.isolation.unwrap_or(self.default_isolation());
        let placement = self
            .inner()
            .data
            .check(isolation, spec.placement.as_deref())?;
        let registry = &self.inner().registry;
        let now = crate::clock::now();
        let fresh = |id: TenantId| Tenant {
            id,
            slug: spec.slug.clone(),
            name: name.clone(),
            status: crate::TenantStatus::Provisioning,
            isolation,
            placement: placement.clone(),
            plan: spec.plan,
            schema_version: 0,
            created_at: now.clone(),
            updated_at: now.clone(),
            deleted_at: None,
        };
        if let Some(t) = registry.by_slug(&spec.slug).await? {
            if t.status != crate::TenantStatus::Provisioning {
                return Err(Error::SlugTaken);
            }
            if id.is_some_and(|id| id != t.id) {
                return Err(invalid(format!(
                    "`{}` is being provisioned as another tenant; finish or purge it first",
                    spec.slug
                )));
            }
            // An interrupted import (or provisioning): never served, so
            // cleared and made again as this import wants it.
            self.wipe(&t).await?;
            registry.revive(&fresh(t.id)).await?;
            self.refresh().await?;
            let tenant = registry.by_id(t.id).await?.ok_or(Error::NotFound)?;
            return Ok(Reservation {
                tenant,
                resumed: true,
            });
        }
        let id = match id {
            None => TenantId::new(),
            Some(id) => {
                if let Some(t) = registry.by_id(id).await? {
                    if t.status != crate::TenantStatus::Purged {
                        return Err(invalid(format!(
                            "this archive's tenant exists here as `{}` ({}): import it with --slug \
                             for a copy, or delete it with --purge before restoring it",
                            t.slug,
                            t.status.as_str()
                        )));
                    }
                    // A purged tenant brought back: its row, under its id.
                    let tenant = fresh(id);
                    self.refuse_if_held(&tenant).await?;
                    registry.revive(&tenant).await?;
                    self.refresh().await?;
                    return Ok(Reservation {
                        tenant,
                        resumed: false,
                    });
                }
                id
            }
        };
        let tenant = fresh(id);
        self.refuse_if_held(&tenant).await?;
        registry.insert(&tenant).await?;
        Ok(Reservation {
            tenant,
            resumed: false,
        })
    }
}

impl Kernel {
    /// A restore keeps the tenant's id, and so the names of its schema,
    /// role and database: on a PostgreSQL cluster another deployment shares
    /// (the same archive restored there too), they may exist already, and
    /// are never taken over.
    async fn refuse_if_held(&self, t: &Tenant) -> Result<()> {
        if self.inner().data.holds(t, true).await? {
            return Err(invalid(format!(
                "this tenant's {} already exists where it would be restored (another deployment \
                 on the same PostgreSQL cluster holds it?): import it as a copy (--slug), or \
                 into another cluster",
                match t.isolation {
                    Isolation::Schema => "schema or role",
                    Isolation::Database => "database",
                    Isolation::Pool => "rows in the shared tables",
                }
            )));
        }
        Ok(())
    }
}

/// Checks a manifest's format, versions and tables against this build, and
/// gives the tables as the archive holds them. An archive of an older schema
/// version is taken when each of its tables has a prefix of this build's
/// columns and the columns after it may be null (a migration that added
/// nullable columns): those are left null. (A migration that changes what
/// existing data means must bump the archive format, so that older archives
/// are refused.)
fn check_manifest(m: &Manifest, tables: &[Table], latest: i64) -> Result<Vec<Table>> {
    if m.format != FORMAT {
        return Err(invalid("not a Campus tenant archive"));
    }
    if m.format_version > FORMAT_VERSION {
        return Err(invalid(format!(
            "the archive's format version {} is newer than this build reads ({FORMAT_VERSION}): \
             import it with a newer Campus",
            m.format_version
        )));
    }
    if m.format_version == 0 {
        return Err(invalid("the archive's format version is 0"));
    }
    if m.schema_version > latest {
        return Err(invalid(format!(
            "the archive's schema version {} is newer than this build's ({latest}): import it \
             with a newer Campus",
            m.schema_version
        )));
    }
    if m.schema_version < 1 {
        return Err(invalid("the archive's schema version is 0"));
    }
    let older = m.schema_version < latest;
    let names: Vec<&str> = m.tables.iter().map(|t| t.name.as_str()).collect();
    let ours: Vec<&str> = tables.iter().map(|t| t.name).collect();
    if names != ours {
        return Err(invalid(format!(
            "the archive's tables ({}) are not this schema version's ({})",
            names.join(", "),
            ours.join(", ")
        )));
    }
    let mut held = Vec::with_capacity(tables.len());
    for (mt, t) in m.tables.iter().zip(tables) {
        let cols: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
        let n = mt.columns.len();
        let added_nullable = older
            && n < cols.len()
            && mt.columns[..] == cols[..n]
            && t.columns[n..].iter().all(|c| c.nullable);
        if mt.columns != cols && !added_nullable {
            return Err(invalid(if older {
                format!(
                    "the archive's schema version {} is older than this build's ({latest}), and \
                     its columns of {} are not this build's less some it may leave empty: \
                     import it with the Campus that exported it, then run `campus migrate`",
                    m.schema_version, t.name
                )
            } else {
                format!(
                    "the archive's columns of {} are not this schema version's",
                    t.name
                )
            }));
        }
        held.push(Table {
            name: t.name,
            columns: &t.columns[..n.min(t.columns.len())],
            key: t.key,
        });
        if mt.bytes > limits::TABLE_BYTES {
            return Err(invalid(format!(
                "{} is larger than an import takes",
                t.name
            )));
        }
        if mt.sha256.len() != 64 || decode_hex(&mt.sha256).is_none() {
            return Err(invalid(format!(
                "the manifest's checksum of {} is malformed",
                t.name
            )));
        }
    }
    Ok(held)
}

/// The next entry, which must be `name`.
async fn expect<R: AsyncRead + Unpin>(
    tar: &mut TarReader<R>,
    name: &str,
) -> Result<tarball::Entry> {
    match tar.next().await? {
        Some(e) if e.path == name => Ok(e),
        Some(e) => Err(invalid(format!(
            "found `{}` where `{name}` belongs",
            e.path.escape_debug()
        ))),
        None => Err(invalid(format!("the archive ends before `{name}`"))),
    }
}

/// Exactly `n` more bytes of the current entry.
async fn read_exact<R: AsyncRead + Unpin>(tar: &mut TarReader<R>, n: usize) -> Result<Vec<u8>> {
    if (tar.left() as usize) < n {
        return Err(invalid("an entry is shorter than its layout"));
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend_from_slice(&tar.chunk(n - out.len()).await?);
    }
    Ok(out)
}

/// A table's decompressed stream, cut into lines, decoded and inserted in
/// batches; bounded by the manifest's counts (a lying manifest or a
/// decompression bomb stops at once).
struct Lines<'t> {
    table: &'t Table,
    listed_rows: u64,
    listed_bytes: u64,
    partial: Vec<u8>,
    batch: Vec<Vec<Value>>,
    digest: TableDigest,
}

impl<'t> Lines<'t> {
    fn new(table: &'t Table, mt: &ManifestTable) -> Self {
        Self {
            table,
            listed_rows: mt.rows,
            listed_bytes: mt.bytes,
            partial: Vec::new(),
            batch: Vec::with_capacity(rows::BATCH),
            digest: TableDigest::default(),
        }
    }

    async fn push(&mut self, mut bytes: &[u8], tx: &mut crate::TenantTx) -> Result<()> {
        while !bytes.is_empty() {
            let cut = bytes.iter().position(|&b| b == b'\n');
            let take = cut.map_or(bytes.len(), |i| i + 1);
            if self.partial.len() + take > limits::LINE {
                return Err(invalid(format!(
                    "a row of {} is longer than {} bytes",
                    self.table.name,
                    limits::LINE
                )));
            }
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if cut.is_some() {
                let line = std::mem::take(&mut self.partial);
                self.digest.add(&line);
                if self.digest.rows > self.listed_rows || self.digest.bytes > self.listed_bytes {
                    return Err(invalid(format!(
                        "{} holds more than the manifest lists",
                        self.table.name
                    )));
                }
                self.batch.push(rows::decode(self.table, &line)?);
                if self.batch.len() >= rows::BATCH {
                    self.flush(tx).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &mut crate::TenantTx) -> Result<()> {
        rows::insert(tx, self.table, &self.batch).await?;
        self.batch.clear();
        Ok(())
    }

    async fn finish(&mut self, tx: &mut crate::TenantTx) -> Result<()> {
        if !self.partial.is_empty() {
            return Err(invalid(format!(
                "{} ends in the middle of a row",
                self.table.name
            )));
        }
        self.flush(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Column, Kind};
    use crate::{KernelConfig, Migration, MigrationSet, ProvisionSpec};
    use futures_util::StreamExt;
    use proptest::prelude::*;

    const SET: MigrationSet = MigrationSet {
        sqlite: &[Migration {
            version: 1,
            name: "things",
            sql: "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT);",
        }],
        postgres: &[],
        pool: &[],
    };
    const TABLES: &[Table] = &[Table {
        name: "things",
        columns: &[
            Column::new("id", Kind::Text),
            Column::new("n", Kind::Int),
            Column::nullable("note", Kind::Text),
        ],
        key: &["id"],
    }];

    /// An embedded kernel with one tenant holding rows and a file, and its
    /// archive.
    async fn fixture() -> (tempfile::TempDir, Kernel, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Kernel::open(KernelConfig::new(dir.path(), SET))
            .await
            .unwrap();
        let r = kernel
            .reserve(&ProvisionSpec {
                slug: Slug::parse("fuzzed").unwrap(),
                name: "Fuzzed".into(),
                isolation: None,
                placement: None,
                plan: Plan::Standard,
            })
            .await
            .unwrap();
        kernel.build(&r).await.unwrap();
        let t = kernel.activate(&r).await.unwrap();
        let mut tx = kernel.begin_write(&t).await.unwrap();
        for i in 0..300 {
            sqlx::query("INSERT INTO things (id, n, note) VALUES ($1, $2, $3)")
                .bind(format!("{i:05}"))
                .bind(i64::from(i))
                .bind((i % 3 == 0).then(|| "a note ".repeat(i as usize % 40)))
                .execute(tx.conn())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let storage = kernel.storage(&t).await.unwrap();
        let key = storage.lesson_content(uuid::Uuid::now_v7());
        let mut body = b"%PDF-1.7\n".to_vec();
        body.resize(150_000, 7);
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]);
        storage
            .put_stream(&key, crate::MediaKind::Pdf, 1 << 20, stream)
            .await
            .unwrap();
        let mut archive = Vec::new();
        kernel
            .export(
                &t,
                TABLES,
                &ArchiveKey::Deployment,
                &mut archive,
                &|_, _, _| {},
            )
            .await
            .unwrap();
        (dir, kernel, archive)
    }

    use bytes::Bytes;

    const SET_V2: MigrationSet = MigrationSet {
        sqlite: &[
            Migration {
                version: 1,
                name: "things",
                sql: "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT);",
            },
            Migration {
                version: 2,
                name: "extra",
                sql: "ALTER TABLE things ADD COLUMN extra TEXT;",
            },
        ],
        postgres: &[],
        pool: &[],
    };
    const TABLES_V2: &[Table] = &[Table {
        name: "things",
        columns: &[
            Column::new("id", Kind::Text),
            Column::new("n", Kind::Int),
            Column::nullable("note", Kind::Text),
            Column::nullable("extra", Kind::Text),
        ],
        key: &["id"],
    }];
    /// As if version 2 had added a column every row must fill.
    const TABLES_V2_STRICT: &[Table] = &[Table {
        name: "things",
        columns: &[
            Column::new("id", Kind::Text),
            Column::new("n", Kind::Int),
            Column::nullable("note", Kind::Text),
            Column::new("extra", Kind::Text),
        ],
        key: &["id"],
    }];

    fn copy_as<'a>(slug: &str, tables: &'a [Table], key: &'a ArchiveKey) -> ImportOptions<'a> {
        ImportOptions {
            tables,
            key,
            slug: Some(Slug::parse(slug).unwrap()),
            isolation: None,
            placement: None,
            plan: None,
        }
    }

    /// A backup made before an upgrade stays restorable: an archive of
    /// version 1 imports into a build at version 2 whose migration only
    /// added a nullable column (left null), and its rows verify as the
    /// archive has them. A column the archive cannot fill is refused.
    #[tokio::test]
    async fn an_older_archive_imports_when_only_nullable_columns_were_added() {
        let (dir, v1, archive) = fixture().await;
        v1.close().await;
        let v2 = Kernel::open(KernelConfig::new(dir.path(), SET_V2))
            .await
            .unwrap();
        let done = v2
            .import(
                &archive[..],
                copy_as("older-copy", TABLES_V2, &ArchiveKey::Deployment),
                &|_, _, _| {},
            )
            .await
            .unwrap();
        assert_eq!(done.rows, 300);
        let t = v2
            .registry()
            .by_slug(&Slug::parse("older-copy").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.schema_version, 2);
        let mut tx = v2.begin(&t).await.unwrap();
        let (n, notes, extra): (i64, i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(note), COUNT(extra) FROM things")
                .fetch_one(tx.conn())
                .await
                .unwrap();
        assert_eq!((n, notes, extra), (300, 100, 0));
        drop(tx);

        let before = objects(&v2).await;
        let refused = v2
            .import(
                &archive[..],
                copy_as("older-strict", TABLES_V2_STRICT, &ArchiveKey::Deployment),
                &|_, _, _| {},
            )
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::Archive(_)), "{refused}");
        assert!(refused.to_string().contains("older"), "{refused}");
        let left = v2
            .registry()
            .by_slug(&Slug::parse("older-strict").unwrap())
            .await
            .unwrap();
        assert!(left.is_none(), "{left:?}");
        assert_eq!(objects(&v2).await, before);
        v2.close().await;
    }

    async fn objects(kernel: &Kernel) -> usize {
        kernel.object_store().list(None).count().await
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A real archive, corrupted anywhere (bytes flipped, cut short):
        /// the import fails cleanly — no panic, no tenant, no object left.
        #[test]
        fn a_corrupted_archive_is_refused_and_leaves_nothing(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            prop_assume!(!flips.is_empty() || cut.is_some());
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (_dir, kernel, archive) = fixture().await;
                let mut bad = archive.clone();
                for (at, x) in &flips {
                    let i = at.index(bad.len());
                    bad[i] ^= x;
                }
                if let Some(c) = cut {
                    bad.truncate(c.index(bad.len()));
                }
                let before = objects(&kernel).await;
                let opts = ImportOptions {
                    tables: TABLES,
                    key: &ArchiveKey::Deployment,
                    slug: Some(Slug::parse("fuzzed-copy").unwrap()),
                    isolation: None,
                    placement: None,
                    plan: None,
                };
                let done = kernel.import(&bad[..], opts, &|_, _, _| {}).await;
                // A flip in padding or an unused header field may leave
                // the archive whole: then it imports, exactly.
                match done {
                    Ok(d) => {
                        assert_eq!(d.rows, 300);
                        let purged = kernel.delete(&Slug::parse("fuzzed-copy").unwrap(), true).await;
                        assert!(purged.is_ok());
                    }
                    Err(e) => {
                        assert!(!matches!(e, Error::Db(_)), "a database error: {e}");
                        let copy = kernel.registry().by_slug(&Slug::parse("fuzzed-copy").unwrap()).await.unwrap();
                        assert!(copy.is_none(), "a tenant was left: {copy:?}");
                    }
                }
                assert_eq!(objects(&kernel).await, before, "objects were left");
                kernel.close().await;
            });
        }
    }
}
