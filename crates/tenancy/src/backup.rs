//! `campus backup`: a whole embedded deployment, copied while it serves.
//!
//! Each SQLite database (the registry, every tenant's) is copied with
//! `VACUUM INTO`, which reads one consistent snapshot of it without
//! stopping its writers; then every object is copied from the store as
//! stored (sealed). Storage usage in the copied registry is recounted from
//! the objects copied, so that quotas are right after a restore. The master
//! key is never copied: a backup is unreadable without it, and it must be
//! kept apart.
//!
//! On PostgreSQL the databases are the operator's to back up (`pg_dump`,
//! or the provider's snapshots); see docs/operations.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::tenant::TenantStatus;

/// What a backup holds.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub output: PathBuf,
    pub tenants: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub created_at: String,
}

/// `BACKUP.json`, beside the copies.
#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    campus_version: &'static str,
    created_at: &'a str,
    tenants: u64,
    files: u64,
    file_bytes: u64,
    /// The check of the master key this backup needs (not the key).
    master_key_check: String,
}

fn quoted(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not UTF-8", path.display())))?;
    Ok(format!("'{}'", s.replace('\'', "''")))
}

impl Kernel {
    /// Backs the embedded deployment up into `out`, which must not exist
    /// or be empty. `progress` hears of each tenant and file copied.
    pub async fn backup(
        &self,
        out: &Path,
        progress: &crate::archive::Progress,
    ) -> Result<BackupSummary> {
        let crate::dataplane::DataPlane::Embedded(files) = self.data_plane() else {
            return Err(Error::Invalid(
                "`campus backup` copies the embedded default; on PostgreSQL back up its \
                 databases with pg_dump and the object store with its own tools \
                 (docs/operations.md, \"Backups\")"
                    .into(),
            ));
        };
        if out.exists() && std::fs::read_dir(out)?.next().is_some() {
            return Err(Error::Invalid(format!(
                "{} is not empty: a backup goes into a new directory",
                out.display()
            )));
        }
        crate::private::dir(out)?;
        crate::private::dir(&out.join("tenants"))?;
        let created_at = crate::clock::now();

        // The registry, then each tenant's database: one snapshot each.
        sqlx::query(&format!(
            "VACUUM INTO {}",
            quoted(&out.join("registry.db"))?
        ))
        .execute(self.registry().pool())
        .await?;
        let mut tenants = 0u64;
        let all = self.list().await?;
        for t in &all {
            if t.status == TenantStatus::Provisioning || !files.exists(t.id) {
                continue;
            }
            let dir = crate::dataplane::tenant_dir(&out.join("tenants"), t.id);
            crate::private::dir(&dir)?;
            let source = files.tenant_dir(t.id).join("tenant.db");
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&source)
                .read_only(true)
                .busy_timeout(std::time::Duration::from_secs(10));
            let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
            sqlx::query(&format!("VACUUM INTO {}", quoted(&dir.join("tenant.db"))?))
                .execute(&mut conn)
                .await?;
            sqlx::Connection::close(conn).await?;
            tenants += 1;
            progress("tenants", tenants, Some(all.len() as u64));
        }

        // Every object, as stored.
        let store = self.object_store();
        let root = out.join("objects");
        crate::private::dir(&root)?;
        let mut usage: HashMap<String, u64> = HashMap::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        let prefix = object_store::path::Path::from("tenants");
        let mut listed = store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(Error::from)?;
            let key = meta.location.to_string();
            // Keys are the kernel's own (`tenants/<uuid>/…`, no `..`).
            let Some(tenant) = key.split('/').nth(1).map(str::to_owned) else {
                continue;
            };
            if key
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            {
                continue;
            }
            let got = match store.get(&meta.location).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let path = root.join(&key);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let mut file = tokio::fs::File::create(&path).await?;
            let mut body = got.into_stream();
            let mut size = 0u64;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(Error::from)?;
                size += piece.len() as u64;
                file.write_all(&piece).await?;
            }
            file.sync_all().await?;
            *usage.entry(tenant).or_default() += size;
            count += 1;
            bytes += size;
            progress("files", bytes, None);
        }

        // Usage as the copied objects make it, in the copied registry.
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(out.join("registry.db"));
        let mut conn: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&opts).await?;
        sqlx::query("UPDATE tenant_storage SET stored_bytes = 0")
            .execute(&mut conn)
            .await?;
        for (tenant, size) in &usage {
            sqlx::query("UPDATE tenant_storage SET stored_bytes = $1 WHERE tenant_id = $2")
                .bind(i64::try_from(*size).unwrap_or(i64::MAX))
                .bind(tenant)
                .execute(&mut conn)
                .await?;
        }
        sqlx::query("DELETE FROM storage_reservations")
            .execute(&mut conn)
            .await?;
        sqlx::Connection::close(conn).await?;

        let manifest = Manifest {
            format: "campus-backup",
            campus_version: env!("CARGO_PKG_VERSION"),
            created_at: &created_at,
            tenants,
            files: count,
            file_bytes: bytes,
            master_key_check: self.inner().storage.master.check(),
        };
        let text =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        tokio::fs::write(out.join("BACKUP.json"), text).await?;
        tracing::info!(output = %out.display(), tenants, files = count, bytes, "deployment backed up");
        Ok(BackupSummary {
            output: out.to_owned(),
            tenants,
            files: count,
            file_bytes: bytes,
            created_at,
        })
    }
}
