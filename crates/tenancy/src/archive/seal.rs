//! Sealed table entries: the same chunked XChaCha20-Poly1305 as stored
//! files ([`crate::storage::sealed`]), with associated data that binds each
//! chunk to its archive, tenant, entry, place and finality.
//!
//! ```text
//! nonce prefix (16, random) ‖ chunk 0 ‖ … ‖ chunk n     each: ciphertext ‖ tag
//! ```
//!
//! Every chunk but the last holds exactly [`CHUNK`] bytes of plaintext.

use std::io::Write;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::invalid;
use crate::error::{Error, Result};
use crate::storage::keys::Secret;
use crate::storage::sealed::{CHUNK, TAG};

const PREFIX: usize = 16;
const SEALED: usize = CHUNK as usize + TAG as usize;

struct Aeadx {
    aead: XChaCha20Poly1305,
    prefix: [u8; PREFIX],
    label: Vec<u8>,
}

impl Aeadx {
    fn new(
        key: &Secret,
        prefix: [u8; PREFIX],
        archive_id: &str,
        tenant: &str,
        entry: &str,
    ) -> Self {
        Self {
            aead: XChaCha20Poly1305::new((&key.0).into()),
            prefix,
            label: format!("campus archive entry v1\0{archive_id}\0{tenant}\0{entry}\0")
                .into_bytes(),
        }
    }

    fn nonce(&self, i: u64) -> XNonce {
        let mut n = [0u8; 24];
        n[..PREFIX].copy_from_slice(&self.prefix);
        n[PREFIX..].copy_from_slice(&i.to_be_bytes());
        n.into()
    }

    fn aad(&self, i: u64, last: bool) -> Vec<u8> {
        let mut aad = self.label.clone();
        aad.extend_from_slice(&i.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    fn seal(&self, i: u64, last: bool, plain: &[u8]) -> Result<Vec<u8>> {
        let aad = self.aad(i, last);
        self.aead
            .encrypt(
                &self.nonce(i),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Crypto("sealing an archive entry"))
    }

    fn open(&self, i: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>> {
        let aad = self.aad(i, last);
        self.aead
            .decrypt(
                &self.nonce(i),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| invalid("a table entry failed authentication (damaged or forged)"))
    }
}

/// Seals what is written into `out`.
pub(crate) struct SealWriter<W: Write> {
    out: W,
    aead: Aeadx,
    buf: Vec<u8>,
    index: u64,
    /// Sealed bytes written.
    pub(crate) written: u64,
}

impl<W: Write> SealWriter<W> {
    pub(crate) fn new(
        mut out: W,
        key: &Secret,
        archive_id: &str,
        tenant: &str,
        entry: &str,
    ) -> Result<Self> {
        let prefix = super::random::<PREFIX>();
        out.write_all(&prefix)?;
        Ok(Self {
            out,
            aead: Aeadx::new(key, prefix, archive_id, tenant, entry),
            buf: Vec::with_capacity(CHUNK as usize),
            index: 0,
            written: PREFIX as u64,
        })
    }

    fn emit(&mut self, last: bool, n: usize) -> std::io::Result<()> {
        let sealed = self
            .aead
            .seal(self.index, last, &self.buf[..n])
            .map_err(std::io::Error::other)?;
        self.buf.drain(..n);
        self.index += 1;
        self.out.write_all(&sealed)?;
        self.written += sealed.len() as u64;
        Ok(())
    }

    /// Seals the final chunk and hands back the writer.
    pub(crate) fn finish(mut self) -> Result<(W, u64)> {
        if self.buf.len() == CHUNK as usize {
            self.emit(false, CHUNK as usize)?;
        }
        let n = self.buf.len();
        self.emit(true, n)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() > CHUNK as usize {
            self.emit(false, CHUNK as usize)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a sealed entry of a known size, fed in pieces of any length.
pub(crate) struct Opener {
    key: Secret,
    ids: (String, String, String),
    aead: Option<Aeadx>,
    /// Sealed bytes not yet fed, including what `buf` holds.
    left: u64,
    buf: Vec<u8>,
    index: u64,
}

impl Opener {
    pub(crate) fn new(
        key: &Secret,
        size: u64,
        archive_id: &str,
        tenant: &str,
        entry: &str,
    ) -> Result<Self> {
        // The prefix and at least one (final) tag.
        if size < (PREFIX as u64) + TAG {
            return Err(invalid(format!("the table entry {entry} is too short")));
        }
        Ok(Self {
            key: key.clone(),
            ids: (archive_id.into(), tenant.into(), entry.into()),
            aead: None,
            left: size,
            buf: Vec::new(),
            index: 0,
        })
    }

    /// Feeds sealed bytes; returns the plaintext of every chunk they complete.
    pub(crate) fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.buf.extend_from_slice(piece);
        if self.aead.is_none() {
            if self.buf.len() < PREFIX {
                return Ok(());
            }
            let mut prefix = [0u8; PREFIX];
            prefix.copy_from_slice(&self.buf[..PREFIX]);
            self.buf.drain(..PREFIX);
            self.left -= PREFIX as u64;
            let (a, t, e) = &self.ids;
            self.aead = Some(Aeadx::new(&self.key, prefix, a, t, e));
        }
        let Some(aead) = &self.aead else {
            return Ok(());
        };
        loop {
            // The final chunk is whatever is left once no full one remains.
            let last = self.left <= SEALED as u64;
            let want = if last { self.left as usize } else { SEALED };
            if self.buf.len() < want || want == 0 {
                return Ok(());
            }
            let plain = aead.open(self.index, last, &self.buf[..want])?;
            self.buf.drain(..want);
            self.left -= want as u64;
            self.index += 1;
            out.extend_from_slice(&plain);
            if last {
                self.left = 0;
                return Ok(());
            }
        }
    }

    /// Whether the final chunk was opened.
    pub(crate) fn finished(&self) -> bool {
        self.aead.is_some() && self.left == 0 && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &Secret, data: &[u8]) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), key, "a", "t", "tables/x").unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap().0
    }

    fn open(key: &Secret, sealed: &[u8], step: usize) -> Result<Vec<u8>> {
        let mut o = Opener::new(key, sealed.len() as u64, "a", "t", "tables/x")?;
        let mut out = vec![];
        for piece in sealed.chunks(step.max(1)) {
            o.feed(piece, &mut out)?;
        }
        if !o.finished() {
            return Err(invalid("unfinished"));
        }
        Ok(out)
    }

    #[test]
    fn entries_round_trip_at_chunk_edges_and_any_feed_size() {
        let key = Secret::random();
        for len in [
            0,
            1,
            CHUNK as usize - 1,
            CHUNK as usize,
            CHUNK as usize + 1,
            3 * CHUNK as usize,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&key, &data);
            for step in [1, 7, 4096, SEALED, sealed.len()] {
                assert_eq!(
                    open(&key, &sealed, step).unwrap(),
                    data,
                    "len {len} step {step}"
                );
            }
        }
    }

    #[test]
    fn entries_are_bound_to_key_place_and_end() {
        let key = Secret::random();
        let data = vec![5u8; 2 * CHUNK as usize + 10];
        let sealed = seal(&key, &data);
        assert!(
            open(&Secret::random(), &sealed, 4096).is_err(),
            "another key"
        );
        // Cut at a chunk boundary: the new last chunk was not sealed as final.
        let cut = PREFIX + SEALED;
        assert!(open(&key, &sealed[..cut], 4096).is_err(), "truncated");
        let mut altered = sealed.clone();
        altered[PREFIX + 3] ^= 1;
        assert!(open(&key, &altered, 4096).is_err(), "altered");
        // Another entry's name.
        let mut o = Opener::new(&key, sealed.len() as u64, "a", "t", "tables/y").unwrap();
        assert!(o.feed(&sealed, &mut vec![]).is_err());
        assert!(Opener::new(&key, 3, "a", "t", "x").is_err());
    }
}
