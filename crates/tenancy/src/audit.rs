//! The start-up audit: the database must enforce isolation too, so before
//! serving, the kernel checks that it does. Run by `campus serve` (which
//! refuses to serve on any finding) and by `campus doctor`.
//!
//! On PostgreSQL, for every placement:
//! * the serving role is not superuser, not `BYPASSRLS`, not `INHERIT` (so
//!   its memberships in tenant roles give it nothing without `SET ROLE`),
//!   cannot create roles or databases, and owns nothing;
//! * every table of the pool schema has row-level security enabled *and*
//!   forced, and a policy with both `USING` and `WITH CHECK`;
//! * no tenant schema, nor any table in one, grants anything to anyone but
//!   the owner role and the tenant's own role;
//! * every tenant in the registry is at a schema version this build knows.

use crate::dataplane::DataPlane;
use crate::dataplane::postgres::{POOL_SCHEMA, POOL_TABLES, Placements};
use crate::error::Result;
use crate::kernel::Kernel;
use crate::tenant::TenantStatus;

/// One thing wrong, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub placement: String,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.placement, self.problem)
    }
}

/// Runs every check; an empty list means the setup is sound.
pub async fn run(kernel: &Kernel) -> Result<Vec<Finding>> {
    let mut findings = isolation(kernel).await?;
    let latest = kernel.latest_version();
    for t in kernel.list().await? {
        if matches!(t.status, TenantStatus::Provisioning | TenantStatus::Purged) {
            continue;
        }
        if t.schema_version > latest || t.schema_version < 1 {
            findings.push(Finding {
                placement: t.placement.clone(),
                problem: format!(
                    "tenant {} is at schema version {}, which this build (1..={latest}) does not know",
                    t.slug, t.schema_version
                ),
            });
        }
    }
    Ok(findings)
}

/// The checks that the database enforces isolation (roles, row-level
/// security, grants), without the schema versions: what a serving node
/// re-runs (a version drift is a metric of its own, not a security event).
pub async fn isolation(kernel: &Kernel) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    if let DataPlane::Postgres(placements) = kernel.data_plane() {
        postgres(placements, &mut findings).await?;
    }
    Ok(findings)
}

async fn postgres(placements: &Placements, out: &mut Vec<Finding>) -> Result<()> {
    for p in placements.all() {
        let mut say = |problem: String| {
            out.push(Finding {
                placement: p.name.clone(),
                problem,
            });
        };
        let app = &p.app_role;

        let (sup, bypass, inherit, createrole, createdb): (bool, bool, bool, bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls, rolinherit, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
        )
        .bind(app)
        .fetch_one(&p.owner)
        .await?;
        for (bad, what) in [
            (
                sup,
                "is a superuser (row-level security does not apply to it)",
            ),
            (bypass, "has BYPASSRLS"),
            (
                inherit,
                "has INHERIT: it would hold every tenant role's rights without SET ROLE",
            ),
            (createrole, "has CREATEROLE"),
            (createdb, "has CREATEDB"),
        ] {
            if bad {
                say(format!("the serving role {app} {what}"));
            }
        }

        let owned: Vec<(String,)> = sqlx::query_as(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             UNION ALL
             SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
             LIMIT 5",
        )
        .bind(app)
        .fetch_all(&p.owner)
        .await?;
        for (what,) in owned {
            say(format!(
                "the serving role {app} owns {what}; it must own nothing"
            ));
        }

        let tables: Vec<(String, bool, bool, i64)> = sqlx::query_as(
            "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                    (SELECT count(*) FROM pg_policy pol
                      WHERE pol.polrelid = c.oid AND pol.polqual IS NOT NULL AND pol.polwithcheck IS NOT NULL)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(POOL_SCHEMA)
        .fetch_all(&p.owner)
        .await?;
        for name in POOL_TABLES {
            match tables.iter().find(|(t, ..)| t == name) {
                None => say(format!("pool table {POOL_SCHEMA}.{name} is missing")),
                Some((_, enabled, forced, policies)) => {
                    if !enabled {
                        say(format!(
                            "row-level security is not enabled on {POOL_SCHEMA}.{name}"
                        ));
                    }
                    if !forced {
                        say(format!(
                            "row-level security is not forced on {POOL_SCHEMA}.{name}"
                        ));
                    }
                    if *policies == 0 {
                        say(format!(
                            "{POOL_SCHEMA}.{name} has no policy with both USING and WITH CHECK"
                        ));
                    }
                }
            }
        }

        // Grants on tenant schemas, and on tables in them, to anyone but the
        // owner and the tenant's own role (named like the schema).
        let stray: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, COALESCE(r.rolname, 'PUBLIC')::text
             FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE n.nspname ~ '^t_[0-9a-f]{32}$' AND a.grantee <> n.nspowner
               AND COALESCE(r.rolname, '') <> n.nspname
             UNION ALL
             SELECT n.nspname || '.' || c.relname, COALESCE(r.rolname, 'PUBLIC')::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL aclexplode(c.relacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE n.nspname ~ '^t_[0-9a-f]{32}$' AND a.grantee <> c.relowner
               AND COALESCE(r.rolname, '') <> n.nspname
             LIMIT 20",
        )
        .fetch_all(&p.owner)
        .await?;
        for (object, grantee) in stray {
            say(format!(
                "{object} grants rights to {grantee}; only its tenant role may have any"
            ));
        }
    }
    Ok(())
}
