//! Moving a tenant, online, to another isolation mode or placement.
//!
//! 1. The new place is built (schema, role or database, migrated) while the
//!    tenant serves as usual: the slow part, with no freeze.
//! 2. The write freeze: an active tenant goes into `maintenance` (writes
//!    answer 503 `tenant_maintenance` with `Retry-After`, reads go on), and
//!    the move waits for every node to see it (`freeze_wait`, two registry
//!    polls by default).
//! 3. Every row is copied, from one snapshot of the old place into one
//!    transaction on the new, checked there (count and SHA-256 per table,
//!    as an archive checks them), and the old place read again: a write
//!    that slipped in meanwhile makes it differ, and the copy runs again.
//! 4. The switch: the registry names the new place, and the move is marked
//!    switched, in one transaction. Nodes drop their pools of the old place.
//! 5. The old place is read once more: a write from before the freeze that
//!    landed after the copy would differ (the move then stops, loudly, and
//!    keeps the old copy for inspection). Then the tenant resumes its
//!    status (the freeze ends), and after another `freeze_wait` — until
//!    then a node that has not seen the switch may still read the old
//!    copy — the old copy is destroyed. A node that has not seen the
//!    switch sees the freeze too (both are one registry row), so it writes
//!    nowhere until it sees both.
//!
//! Files do not move: the object store is the deployment's, keyed by the
//! tenant's id, so a move costs the same whatever the tenant stores.
//!
//! Each step is recorded (`tenant_moves`), so that a move killed at any
//! point is finished or rolled back by running it again: before the switch
//! the new copy is dropped and the move starts over; after it, only the old
//! copy is left to remove. The registry names exactly one place at every
//! moment, so the tenant is never served from two.

use std::time::{Duration, Instant};

use crate::archive::{Progress, Table};
use crate::error::{Error, Result};
use crate::id::Slug;
use crate::kernel::Kernel;
use crate::registry::MoveRecord;
use crate::tenant::{Isolation, Tenant, TenantStatus};

/// How many times the copy runs again when a write slipped in.
const COPY_ATTEMPTS: u32 = 3;

/// Where to move a tenant; `None` keeps the current one.
#[derive(Debug, Clone, Default)]
pub struct MoveTo {
    pub isolation: Option<Isolation>,
    pub placement: Option<String>,
}

/// What a move did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoveSummary {
    pub slug: String,
    pub tenant_id: String,
    pub from_isolation: String,
    pub from_placement: String,
    pub to_isolation: String,
    pub to_placement: String,
    pub rows: u64,
    /// How long writes were refused (maintenance), in milliseconds; 0 when
    /// the tenant was suspended (it takes no writes anyway).
    pub freeze_ms: u64,
    /// How long the whole move took, in milliseconds.
    pub total_ms: u64,
    /// How many times the copy ran (more than once: writes slipped in).
    pub copies: u32,
    /// An interrupted move was rolled back or finished first.
    pub resumed: bool,
}

fn at(t: &Tenant, place: &(Isolation, String)) -> Tenant {
    Tenant {
        isolation: place.0,
        placement: place.1.clone(),
        ..t.clone()
    }
}

impl Kernel {
    /// Moves the tenant `slug` to `to`, online (see [`crate::moves`]).
    /// `freeze_wait`: how long every node takes to see a registry change
    /// (two of their polls).
    pub async fn move_tenant(
        &self,
        slug: &Slug,
        tables: &[Table],
        to: &MoveTo,
        freeze_wait: Duration,
        progress: &Progress,
    ) -> Result<MoveSummary> {
        let started = Instant::now();
        let registry = &self.inner().registry;
        let mut t = self.find(slug).await?;
        // One move of a tenant at a time, from any node or CLI: a re-run
        // never settles a move that is still running.
        let Some(lease) = self.lease(&format!("move:{}", t.id)).await? else {
            return Err(Error::Busy(
                "another move of this tenant is running; try again when it ends (a move that \
                 was killed lets go within 10 s)"
                    .into(),
            ));
        };
        let mut resumed = false;
        if let Some(rec) = registry.move_of(t.id).await? {
            resumed = true;
            self.settle_move(&t, &rec, freeze_wait).await?;
            t = self.find(slug).await?;
        }
        let prior = t.status;
        match prior {
            TenantStatus::Active | TenantStatus::Suspended | TenantStatus::Maintenance => {}
            other => return Err(Error::InvalidTransition(other.as_str(), "moved")),
        }
        let data = &self.inner().data;
        let iso = to.isolation.unwrap_or(t.isolation);
        let placement = data.check(iso, Some(to.placement.as_deref().unwrap_or(&t.placement)))?;
        let from = (t.isolation, t.placement.clone());
        let dest = (iso, placement);
        let summary = |rows, freeze_ms, copies| MoveSummary {
            slug: t.slug.to_string(),
            tenant_id: t.id.to_string(),
            from_isolation: from.0.as_str().into(),
            from_placement: from.1.clone(),
            to_isolation: dest.0.as_str().into(),
            to_placement: dest.1.clone(),
            rows,
            freeze_ms,
            total_ms: started.elapsed().as_millis() as u64,
            copies,
            resumed,
        };
        if from == dest {
            if resumed {
                // The interrupted move was to here, and is now finished.
                return Ok(summary(0, 0, 0));
            }
            return Err(Error::Invalid(format!(
                "the tenant is already in `{}` mode on placement `{}`",
                dest.0.as_str(),
                dest.1
            )));
        }
        if t.schema_version != self.latest_version() {
            return Err(Error::Invalid(format!(
                "the tenant is at schema version {}, this build at {}: run `campus migrate` first",
                t.schema_version,
                self.latest_version()
            )));
        }
        let (source, target) = (at(&t, &from), at(&t, &dest));
        // The new place must hold nothing of the tenant: if it does, it is
        // the old place under another name (two placements reaching one
        // database, or one cluster for `database` mode), and building,
        // copying and removing "the old copy" would destroy the only one.
        if data.holds(&target, false).await? {
            return Err(Error::Invalid(format!(
                "`{}` on placement `{}` already holds this tenant: placements `{}` and `{}` reach \
                 the same database (for `database` mode: the same PostgreSQL cluster, where \
                 database names are shared). Nothing was changed",
                dest.0.as_str(),
                dest.1,
                from.1,
                dest.1
            )));
        }
        let rec = MoveRecord {
            from: from.clone(),
            to: dest.clone(),
            switched: false,
            prior_status: prior,
        };
        registry.start_move(t.id, &rec).await?;
        tracing::info!(tenant = %t.id, from = ?from, to = ?dest, "moving a tenant");

        // 1. The new place, built while the tenant serves.
        progress("build", 0, None);
        if let Err(e) = self.build_place(&target).await {
            self.roll_back(&t, &rec, freeze_wait).await;
            return Err(e);
        }

        // 2. The freeze, seen by every node before the copy.
        let freeze = Instant::now();
        let frozen = prior == TenantStatus::Active;
        if frozen {
            // Only from `active`: a suspension or a deletion made meanwhile
            // stands, and the move stops.
            match registry
                .swap_status(t.id, TenantStatus::Active, TenantStatus::Maintenance)
                .await
            {
                Ok(true) => self.refresh().await?,
                Ok(false) => {
                    self.roll_back(&t, &rec, freeze_wait).await;
                    return Err(Error::InvalidTransition(
                        "no longer active",
                        "frozen for its move",
                    ));
                }
                Err(e) => {
                    self.roll_back(&t, &rec, freeze_wait).await;
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(freeze_wait).await;

        // 3. The copy, until the old place holds still.
        let mut copies = 0;
        let (rows, digests) = loop {
            copies += 1;
            let copied = async {
                let (rows, digests) = self.copy_rows(&source, &target, tables, progress).await?;
                let again = self.digests(&source, tables).await?;
                Ok::<_, Error>((rows, digests, again))
            };
            match copied.await {
                Ok((rows, digests, again)) if again == digests => break (rows, digests),
                Ok(_) if copies < COPY_ATTEMPTS => {
                    tracing::warn!(tenant = %t.id, copies, "a write reached the old place during the copy; copying again");
                }
                Ok(_) => {
                    self.roll_back(&t, &rec, freeze_wait).await;
                    return Err(Error::Conflict(
                        "the tenant kept being written to during the freeze; the move was rolled back"
                            .into(),
                    ));
                }
                Err(e) => {
                    self.roll_back(&t, &rec, freeze_wait).await;
                    return Err(e);
                }
            }
        };

        // 4. The switch: one registry transaction.
        if let Err(e) = registry.switch_move(t.id, &dest).await {
            self.roll_back(&t, &rec, freeze_wait).await;
            return Err(e);
        }
        self.refresh().await?;
        progress("switched", rows, Some(rows));

        // 5. The old place still holds exactly what was copied (a write
        // from before the freeze that landed late would differ), then the
        // freeze ends and the old copy goes.
        let late = self.digests(&source, tables).await? != digests;
        let switched = MoveRecord {
            switched: true,
            ..rec
        };
        if late {
            if frozen {
                self.thaw(&t).await?;
            }
            tracing::error!(tenant = %t.id, old = ?from,
                "a write reached the old copy after it was copied; kept for inspection");
            return Err(Error::Incomplete(format!(
                "the tenant moved and serves from `{}` on `{}`, but a write reached its old copy \
                 (`{}` on `{}`) after the copy: that write is not in the new one. The old copy \
                 is kept for inspection; run the move again to discard it",
                dest.0.as_str(),
                dest.1,
                from.0.as_str(),
                from.1
            )));
        }
        let freeze_ms = if frozen {
            self.thaw(&t).await?;
            freeze.elapsed().as_millis() as u64
        } else {
            0
        };
        self.settle_move(&t, &switched, freeze_wait).await?;
        lease.release().await;
        tracing::info!(tenant = %t.id, rows, freeze_ms, copies, "tenant moved");
        Ok(summary(rows, freeze_ms, copies))
    }

    /// Builds (idempotently) the tenant's data at a place of its own.
    async fn build_place(&self, target: &Tenant) -> Result<()> {
        let inner = self.inner();
        inner.data.build(target, &inner.tenant_migrations).await?;
        Ok(())
    }

    /// Finishes what a recorded move left: after the switch, the tenant
    /// gets its status back (the freeze ends), and once every node has seen
    /// the switch (`freeze_wait`: until then some still read the old copy)
    /// the old copy goes; before the switch, the new copy goes and the
    /// status comes back. Then the record goes.
    async fn settle_move(&self, t: &Tenant, rec: &MoveRecord, freeze_wait: Duration) -> Result<()> {
        if rec.prior_status == TenantStatus::Active {
            self.thaw(t).await?;
        }
        let stale = if rec.switched {
            tokio::time::sleep(freeze_wait).await;
            &rec.from
        } else {
            &rec.to
        };
        self.inner().data.destroy(&at(t, stale)).await?;
        self.inner().registry.end_move(t.id).await?;
        self.refresh().await
    }

    /// Ends the freeze: `maintenance → active`, only if it is still in the
    /// maintenance the move put it in (an operator's change stands).
    async fn thaw(&self, t: &Tenant) -> Result<()> {
        let registry = &self.inner().registry;
        if registry
            .swap_status(t.id, TenantStatus::Maintenance, TenantStatus::Active)
            .await?
        {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Undoes a move that did not switch; logs what it could not undo (a
    /// re-run finishes the job).
    async fn roll_back(&self, t: &Tenant, rec: &MoveRecord, freeze_wait: Duration) {
        if let Err(e) = self.settle_move(t, rec, freeze_wait).await {
            tracing::error!(tenant = %t.id, error = %e,
                "rolling back a failed move failed too; run the move again to finish it");
        }
    }

    /// Copies every row of `source` into `target` (emptied first), from one
    /// snapshot into one transaction, checked there. Returns the rows and
    /// each table's digest.
    async fn copy_rows(
        &self,
        source: &Tenant,
        target: &Tenant,
        tables: &[Table],
        progress: &Progress,
    ) -> Result<(u64, Vec<String>)> {
        use crate::archive::rows;
        let mut from = self.begin_snapshot(source).await?;
        let mut into = self.begin_write(target).await?;
        for t in tables.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", t.name))
                .execute(into.conn())
                .await?;
        }
        let (mut total, mut digests) = (0u64, Vec::with_capacity(tables.len()));
        for t in tables {
            let mut digest = rows::TableDigest::default();
            let mut batch = Vec::with_capacity(rows::BATCH);
            let mut lines: Vec<Vec<u8>> = Vec::new();
            // Lines are read in pieces so that inserting (on the other
            // transaction) never holds more than a batch.
            let sql = rows::select_sql(t, rows::is_postgres(&mut from));
            let mut stream = sqlx::query(&sql).fetch(from.conn());
            use futures_util::TryStreamExt;
            while let Some(row) = stream.try_next().await? {
                let line = rows::encode(t, &row)?;
                digest.add(&line);
                lines.push(line);
                if lines.len() >= rows::BATCH {
                    for l in lines.drain(..) {
                        batch.push(rows::decode(t, &l)?);
                    }
                    rows::insert(&mut into, t, &batch).await?;
                    batch.clear();
                    progress("copy", total + digest.rows, None);
                }
            }
            drop(stream);
            for l in lines.drain(..) {
                batch.push(rows::decode(t, &l)?);
            }
            rows::insert(&mut into, t, &batch).await?;
            let stored = rows::digest_table(&mut into, t).await?;
            if stored.hex() != digest.hex() || stored.rows != digest.rows {
                return Err(Error::Invalid(format!(
                    "{} as copied differs from the original ({} rows of {})",
                    t.name, stored.rows, digest.rows
                )));
            }
            total += digest.rows;
            digests.push(digest.hex());
        }
        drop(from);
        into.commit().await?;
        Ok((total, digests))
    }

    /// Destroys both copies of a tenant caught mid-move (a purge's part) and
    /// forgets the move.
    pub(crate) async fn drop_move(&self, t: &Tenant) -> Result<()> {
        let registry = &self.inner().registry;
        if let Some(rec) = registry.move_of(t.id).await? {
            self.inner().data.destroy(&at(t, &rec.from)).await?;
            self.inner().data.destroy(&at(t, &rec.to)).await?;
            registry.end_move(t.id).await?;
        }
        Ok(())
    }

    /// Each table's SHA-256 at one place, from one snapshot.
    async fn digests(&self, place: &Tenant, tables: &[Table]) -> Result<Vec<String>> {
        let mut tx = self.begin_snapshot(place).await?;
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            out.push(crate::archive::rows::digest_table(&mut tx, t).await?.hex());
        }
        Ok(out)
    }
}
