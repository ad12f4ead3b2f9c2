//! `Kernel::export`: one tenant, as of one moment, into one archive.

use std::io::{Read, Seek, Write};

use futures_util::StreamExt;
use hmac::Mac;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::rows::{self, TableDigest};
use super::seal::SealWriter;
use super::tarball::TarWriter;
use super::*;
use crate::kernel::Kernel;
use crate::storage::tenant_prefix;
use crate::tenant::{Tenant, TenantStatus};

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub archive_id: String,
    pub tenant_id: String,
    pub slug: String,
    pub schema_version: i64,
    /// Rows per table, in the archive's order.
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
    pub files: u64,
    /// Bytes of the files, as stored (sealed).
    pub file_bytes: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
    /// Objects under the tenant's prefix that are not files of the layout
    /// (left out, and logged).
    pub skipped: u64,
}

/// A table spooled to a temporary file, sealed, with its digest.
struct Spooled {
    name: &'static str,
    columns: Vec<String>,
    file: std::fs::File,
    size: u64,
    digest: TableDigest,
}

impl Kernel {
    /// Whether `tenant` can be exported now: it has data (not
    /// provisioning, not purged), at this build's schema version.
    pub fn exportable(&self, tenant: &Tenant) -> Result<()> {
        if matches!(
            tenant.status,
            TenantStatus::Provisioning | TenantStatus::Purged
        ) {
            return Err(Error::InvalidTransition(tenant.status.as_str(), "exported"));
        }
        if tenant.schema_version != self.latest_version() {
            return Err(Error::Invalid(format!(
                "the tenant is at schema version {}, this build at {}: run `campus migrate` first",
                tenant.schema_version,
                self.latest_version()
            )));
        }
        Ok(())
    }

    /// Writes `tenant` into `out` as an archive (see [`crate::archive`]):
    /// its tables as of one snapshot (the tenant keeps serving; no other
    /// tenant is read or paused), then its files, each read whole in one
    /// request, so that a file replaced meanwhile comes out as one version
    /// or the other, never torn. Memory stays bounded: tables are spooled
    /// sealed to temporary files, files stream through.
    pub async fn export<W: AsyncWrite + Unpin + Send>(
        &self,
        tenant: &Tenant,
        tables: &[Table],
        key: &ArchiveKey,
        out: W,
        progress: &Progress,
    ) -> Result<ExportSummary> {
        self.exportable(tenant)?;
        let storage = &self.inner().storage;
        // A tenant that never stored a file may have no data key: the
        // archive gets one of its own (an import keeps it as the tenant's).
        let data_key = match storage.data_key(self.registry(), tenant.id).await? {
            Some(k) => k,
            None => Secret::random(),
        };
        let archive_id = uuid::Uuid::now_v7().to_string();
        let tenant_id = tenant.id.to_string();

        // 1. The tables, as of one snapshot.
        let mut spooled = Vec::with_capacity(tables.len());
        {
            let mut tx = self.begin_snapshot(tenant).await?;
            let mut rows_done = 0u64;
            for t in tables {
                let entry = format!("tables/{}", t.name);
                let file = tempfile::tempfile()?;
                let sealer = SealWriter::new(
                    std::io::BufWriter::new(file),
                    &data_key,
                    &archive_id,
                    &tenant_id,
                    &entry,
                )?;
                let mut z = zstd::stream::write::Encoder::new(sealer, 3)?;
                let mut digest = TableDigest::default();
                rows::read_table(&mut tx, t, |line| {
                    digest.add(line);
                    z.write_all(line)?;
                    Ok(())
                })
                .await?;
                let (buffered, size) = z.finish()?.finish()?;
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                rows_done += digest.rows;
                progress("tables", rows_done, None);
                spooled.push(Spooled {
                    name: t.name,
                    columns: t.columns.iter().map(|c| c.name.to_owned()).collect(),
                    file,
                    size,
                    digest,
                });
            }
        }

        // 2. The manifest, authenticated.
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            campus_version: env!("CARGO_PKG_VERSION").into(),
            schema_version: tenant.schema_version,
            archive_id: archive_id.clone(),
            created_at: crate::clock::now(),
            tenant: ManifestTenant {
                id: tenant_id.clone(),
                slug: tenant.slug.to_string(),
                name: tenant.name.clone(),
                plan: tenant.plan.as_str().into(),
                isolation: tenant.isolation.as_str().into(),
                placement: tenant.placement.clone(),
                created_at: tenant.created_at.clone(),
            },
            key: wrap_data_key(key, &storage.master, &data_key, &archive_id, tenant.id).await?,
            tables: spooled
                .iter()
                .map(|s| ManifestTable {
                    name: s.name.into(),
                    columns: s.columns.clone(),
                    rows: s.digest.rows,
                    bytes: s.digest.bytes,
                    sha256: s.digest.hex(),
                })
                .collect(),
        };
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut mac = mac_start(&data_key, MAC_LABEL_MANIFEST, &archive_id);
        mac.update(&manifest_bytes);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut tar = TarWriter::new(out, mtime);
        tar.put(MANIFEST, &manifest_bytes).await?;
        tar.put(MANIFEST_MAC, hex(&mac.finalize().into_bytes()).as_bytes())
            .await?;

        // 3. The files, as the store holds them (sealed).
        let store = storage.store.clone();
        let prefix_str = tenant_prefix(tenant.id);
        let prefix = object_store::path::Path::from(prefix_str.trim_end_matches('/'));
        let expected = u64::try_from(self.stored_bytes(tenant).await?).unwrap_or(0);
        let mut index = std::io::BufWriter::new(tempfile::tempfile()?);
        let mut index_mac = mac_start(&data_key, MAC_LABEL_INDEX, &archive_id);
        let mut index_size = 0u64;
        let (mut files, mut file_bytes, mut skipped) = (0u64, 0u64, 0u64);
        let mut listed = store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(Error::from)?;
            let rel = meta
                .location
                .as_ref()
                .strip_prefix(prefix_str.as_str())
                .unwrap_or("");
            let Some(path) = FilePath::parse(rel) else {
                tracing::warn!(tenant = %tenant.id, object = %meta.location, "an object under the tenant's prefix is not one of its files; left out of the export");
                skipped += 1;
                continue;
            };
            let got = match store.get(&meta.location).await {
                Ok(g) => g,
                // Deleted since it was listed: not part of the tenant any more.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let size = got.meta.size;
            tar.entry(&format!("files/{}", path.rel()), size).await?;
            let mut sha = Sha256::new();
            let mut body = got.into_stream();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(Error::from)?;
                sha.update(&piece);
                tar.write(&piece).await?;
                file_bytes += piece.len() as u64;
                progress("files", file_bytes, Some(expected.max(file_bytes)));
            }
            let line = index_line(path, size, &hex(&sha.finalize()));
            index.write_all(line.as_bytes())?;
            index_mac.update(line.as_bytes());
            index_size += line.len() as u64;
            files += 1;
        }
        let mut index = index.into_inner().map_err(|e| e.into_error())?;
        tar.entry(INDEX, index_size).await?;
        copy_spooled(&mut index, &mut tar).await?;
        tar.put(
            INDEX_MAC,
            hex(&index_mac.finalize().into_bytes()).as_bytes(),
        )
        .await?;

        // 4. The tables, from their spools.
        for s in &mut spooled {
            tar.entry(&format!("tables/{}", s.name), s.size).await?;
            copy_spooled(&mut s.file, &mut tar).await?;
        }
        let (_, archive_bytes) = tar.finish().await?;
        let rows: u64 = spooled.iter().map(|s| s.digest.rows).sum();
        tracing::info!(tenant = %tenant.id, archive = %archive_id, rows, files, file_bytes, "tenant exported");
        Ok(ExportSummary {
            archive_id,
            tenant_id,
            slug: tenant.slug.to_string(),
            schema_version: tenant.schema_version,
            tables: spooled
                .iter()
                .map(|s| (s.name.to_owned(), s.digest.rows))
                .collect(),
            rows,
            files,
            file_bytes,
            archive_bytes,
            skipped,
        })
    }
}

/// Copies a spool file, from its start, into the current entry.
async fn copy_spooled<W: AsyncWrite + Unpin>(
    file: &mut std::fs::File,
    tar: &mut TarWriter<W>,
) -> Result<()> {
    file.rewind()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        tar.write(&buf[..n]).await?;
    }
}
