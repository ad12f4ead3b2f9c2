//! The archive's tar framing, streamed both ways without buffering an entry.
//!
//! Headers are built and parsed by the `tar` crate; the framing around them
//! (size, padding, the end) is this module's, so that it runs on async
//! readers and writers, and so that the reader accepts exactly what the
//! writer makes: ustar headers of regular files with a valid checksum,
//! relative names, bounded sizes — no links, directories, devices, PAX or
//! GNU extensions, absolute paths or `..` (it names no path on disk anyway:
//! every name is matched against the archive's layout).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::invalid;
use crate::error::Result;

const BLOCK: usize = 512;

/// Writes entries of known sizes.
pub(crate) struct TarWriter<W> {
    out: W,
    /// Bytes left in the current entry.
    left: u64,
    /// Padding owed after the current entry.
    pad: usize,
    mtime: u64,
    /// Bytes written in all.
    pub(crate) written: u64,
}

impl<W: AsyncWrite + Unpin> TarWriter<W> {
    pub(crate) fn new(out: W, mtime: u64) -> Self {
        Self {
            out,
            left: 0,
            pad: 0,
            mtime,
            written: 0,
        }
    }

    /// Starts an entry of exactly `size` bytes.
    pub(crate) async fn entry(&mut self, path: &str, size: u64) -> Result<()> {
        self.end_entry().await?;
        let mut h = tar::Header::new_ustar();
        h.set_path(path)
            .map_err(|e| invalid(format!("entry name {path}: {e}")))?;
        h.set_size(size);
        h.set_mode(0o600);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.raw(h.as_bytes()).await?;
        self.left = size;
        self.pad = padding(size);
        Ok(())
    }

    /// Writes part of the current entry.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.left {
            return Err(invalid(
                "an entry grew while it was written (a file changed during the export)",
            ));
        }
        self.left -= bytes.len() as u64;
        self.raw(bytes).await
    }

    /// A whole entry at once.
    pub(crate) async fn put(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.entry(path, bytes.len() as u64).await?;
        self.write(bytes).await
    }

    async fn end_entry(&mut self) -> Result<()> {
        if self.left != 0 {
            return Err(invalid(
                "an entry ended short (a file changed during the export)",
            ));
        }
        if self.pad > 0 {
            let zeros = [0u8; BLOCK];
            let n = self.pad;
            self.pad = 0;
            self.raw(&zeros[..n]).await?;
        }
        Ok(())
    }

    async fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Ends the archive (two zero blocks) and flushes; returns the writer
    /// and the archive's size.
    pub(crate) async fn finish(mut self) -> Result<(W, u64)> {
        self.end_entry().await?;
        self.raw(&[0u8; 2 * BLOCK]).await?;
        self.out.flush().await?;
        Ok((self.out, self.written))
    }
}

fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// Reads entries one at a time, strictly.
pub(crate) struct TarReader<R> {
    input: R,
    /// Bytes left in the current entry, and its padding.
    left: u64,
    pad: usize,
    done: bool,
    /// Bytes read in all.
    pub(crate) read: u64,
}

/// One entry's header, as far as the archive cares.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) path: String,
    pub(crate) size: u64,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    pub(crate) fn new(input: R) -> Self {
        Self {
            input,
            left: 0,
            pad: 0,
            done: false,
            read: 0,
        }
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.input.read_exact(buf).await {
            Ok(_) => {
                self.read += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(invalid("the archive ends early (truncated)"))
            }
            // The input itself failed (a client gone mid-upload, a read
            // error): nothing about the archive.
            Err(e) => Err(crate::Error::Interrupted(e.to_string())),
        }
    }

    /// The next entry, after skipping what is left of the current one;
    /// `None` at the archive's end.
    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest().await?;
        let mut block = [0u8; BLOCK];
        self.fill(&mut block).await?;
        if block.iter().all(|&b| b == 0) {
            self.fill(&mut block).await?;
            if block.iter().any(|&b| b != 0) {
                return Err(invalid("the archive's end is malformed"));
            }
            self.done = true;
            // Whatever follows may only be zero padding (a record's rest).
            let mut rest = [0u8; BLOCK];
            loop {
                let n = self
                    .input
                    .read(&mut rest)
                    .await
                    .map_err(|e| crate::Error::Interrupted(e.to_string()))?;
                if n == 0 {
                    break;
                }
                if rest[..n].iter().any(|&b| b != 0) {
                    return Err(invalid("data follows the archive's end"));
                }
            }
            return Ok(None);
        }
        let entry = parse_header(&block)?;
        self.left = entry.size;
        self.pad = padding(entry.size);
        Ok(Some(entry))
    }

    /// Up to `max` bytes of the current entry; empty at its end.
    pub(crate) async fn chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let n = (self.left.min(max as u64)) as usize;
        let mut buf = vec![0u8; n];
        self.fill(&mut buf).await?;
        self.left -= n as u64;
        Ok(buf)
    }

    /// The whole current entry, which must be at most `max` bytes.
    pub(crate) async fn all(&mut self, max: u64) -> Result<Vec<u8>> {
        if self.left > max {
            return Err(invalid(format!(
                "an entry is larger than the {max} bytes it may be"
            )));
        }
        let n = self.left as usize;
        self.chunk(n).await
    }

    /// Bytes left in the current entry.
    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    async fn skip_rest(&mut self) -> Result<()> {
        while self.left > 0 {
            let piece = self.chunk(64 * 1024).await?;
            drop(piece);
        }
        if self.pad > 0 {
            let mut pad = vec![0u8; self.pad];
            self.pad = 0;
            self.fill(&mut pad).await?;
        }
        Ok(())
    }
}

/// A header block as an entry, or why it is refused.
pub(crate) fn parse_header(block: &[u8; BLOCK]) -> Result<Entry> {
    let h = tar::Header::from_byte_slice(block);
    if h.as_ustar().is_none() {
        return Err(invalid("an entry is not a ustar header"));
    }
    // The checksum: the sum of the header's bytes, its own field as spaces.
    let stored = h
        .cksum()
        .map_err(|_| invalid("an entry's header checksum is malformed"))?;
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(invalid("an entry's header checksum does not match"));
    }
    if h.entry_type() != tar::EntryType::Regular {
        return Err(invalid(
            "an entry is not a regular file (links, directories and extensions are refused)",
        ));
    }
    let size = h
        .entry_size()
        .map_err(|_| invalid("an entry's size is malformed"))?;
    let path = String::from_utf8(h.path_bytes().into_owned())
        .map_err(|_| invalid("an entry's name is not UTF-8"))?;
    if path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || path.chars().any(|c| c.is_control() || c == '\\')
    {
        return Err(invalid(format!(
            "an entry's name is not one of the layout's: {}",
            path.escape_debug()
        )));
    }
    Ok(Entry { path, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 0);
        for (p, b) in entries {
            w.put(p, b).await.unwrap();
        }
        w.finish().await.unwrap().0
    }

    async fn entries(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut r = TarReader::new(bytes);
        let mut out = vec![];
        while let Some(e) = r.next().await? {
            let body = r.all(1 << 20).await?;
            out.push((e.path, body));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn entries_round_trip_and_other_tars_read_them() {
        let a = archive(&[("a.json", b"{}"), ("files/x", &[7u8; 1000]), ("e", b"")]).await;
        assert_eq!(a.len() % BLOCK, 0);
        let got = entries(&a).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].1, vec![7u8; 1000]);
        // The tar crate's own reader agrees.
        let mut t = tar::Archive::new(&a[..]);
        let names: Vec<String> = t
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json", "files/x", "e"]);
    }

    #[tokio::test]
    async fn links_traversal_and_truncation_are_refused() {
        let good = archive(&[("a", b"hello")]).await;
        // Truncated anywhere: an error, never a short entry taken as whole.
        for cut in [10, 511, 512, 515, 1024, good.len() - 1] {
            assert!(entries(&good[..cut]).await.is_err(), "cut at {cut}");
        }
        for (name, kind) in [
            ("../x", tar::EntryType::Regular),
            ("/etc/passwd", tar::EntryType::Regular),
            ("a/./b", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("hard", tar::EntryType::Link),
            ("dir", tar::EntryType::Directory),
            ("pax", tar::EntryType::XHeader),
            ("gnu", tar::EntryType::GNULongName),
        ] {
            let mut h = tar::Header::new_ustar();
            // Bypass set_path's own checks, as a hostile writer would.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(0);
            h.set_entry_type(kind);
            h.set_cksum();
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 1024]);
            assert!(entries(&bytes).await.is_err(), "{name} {kind:?}");
        }
        // A checksum that does not match.
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(entries(&bad).await.is_err());
        // Data after the end.
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"more");
        assert!(entries(&trailing).await.is_err());
        // An old (v7) or GNU header.
        let mut gnu = tar::Header::new_gnu();
        gnu.set_path("a").unwrap();
        gnu.set_size(0);
        gnu.set_cksum();
        let mut bytes = gnu.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        assert!(entries(&bytes).await.is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever bytes come in, the reader answers (an error or entries)
        /// without panicking, and never hands out more than it was given.
        #[test]
        fn any_bytes_are_answered_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                                  flips in proptest::collection::vec((0usize..3072, any::<u8>()), 0..8)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let _ = entries(&bytes).await;
                // And a valid archive with random bytes changed.
                let mut a = archive(&[("campus-archive.json", b"{\"x\":1}"), ("files/y", &[1u8; 700])]).await;
                for (i, b) in &flips {
                    let i = i % a.len();
                    a[i] ^= b;
                }
                if let Ok(es) = entries(&a).await {
                    let total: usize = es.iter().map(|(_, b)| b.len()).sum();
                    assert!(total <= a.len());
                }
            });
        }
    }
}
