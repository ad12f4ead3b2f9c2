//! The data directory is private to the user Campus runs as: files `0600`,
//! directories `0700` (on Unix; elsewhere these do nothing).
//!
//! Two layers: the process's umask is set to `077` when the kernel opens,
//! so that whatever is created later (SQLite's `-wal` and `-shm`, objects
//! the store writes) is private from the start; and the paths Campus makes
//! itself are created, or tightened if an older install left them open,
//! with explicit modes.

use std::path::Path;

use crate::error::Result;

/// Masks group and other bits out of every file and directory this process
/// creates from now on.
pub fn restrict_umask() {
    #[cfg(unix)]
    {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o777 != mode => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Makes `path` (and its missing parents) a directory only its owner can
/// enter; tightens it if it exists.
pub fn dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    tighten_one(path, 0o700);
    Ok(())
}

/// Makes the file at `path` (empty, if missing) readable by its owner only;
/// tightens it if it exists. SQLite gives a database's `-wal` and `-shm`
/// the mode of the database file, so a database made here stays private.
pub fn file(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?;
    tighten_one(path, 0o600);
    Ok(())
}

/// Tightens `path` to `mode` if it can; says so if it cannot (a directory
/// owned by another user, say), rather than refusing to start.
fn tighten_one(path: &Path, mode: u32) {
    if let Err(e) = set_mode(path, mode) {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot make this path private to Campus's user; `campus doctor` lists what is open");
    }
}

/// Tightens an existing data directory: itself, the files at its top (the
/// registry, the master key, the operator token's hash), `tenants/` and
/// every tenant's directory and files, `objects/`. Objects deeper down are
/// left as they are: nobody else can reach them through `0700` directories.
pub fn tighten(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)?;
    tighten_one(data_dir, 0o700);
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tighten_one(&entry.path(), 0o700);
        } else if kind.is_file() {
            tighten_one(&entry.path(), 0o600);
        }
    }
    let tenants = data_dir.join("tenants");
    if let Ok(listed) = std::fs::read_dir(&tenants) {
        for entry in listed {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            tighten_one(&entry.path(), 0o700);
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    tighten_one(&inner.path(), 0o600);
                }
            }
        }
    }
    Ok(())
}

/// Paths under `data_dir` that others than the owner may read or enter,
/// with their modes: what `campus doctor` reports. At most `limit` of them.
pub fn open_to_others(data_dir: &Path, limit: usize) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![data_dir.to_owned()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
                found.push((path.clone(), mode));
                if found.len() >= limit {
                    break;
                }
            }
            if meta.is_dir()
                && let Ok(listed) = std::fs::read_dir(&path)
            {
                stack.extend(listed.flatten().map(|e| e.path()));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (data_dir, limit);
    found
}
