//! The encrypted object format.
//!
//! ```text
//! header (32 bytes): "CAMPUSE1" ‖ media kind (1) ‖ 7 zero bytes ‖ nonce prefix (16, random per object)
//! chunk 0 ‖ chunk 1 ‖ … ‖ chunk n      each: ciphertext ‖ 16-byte tag
//! ```
//!
//! Every chunk but the last holds exactly [`CHUNK`] bytes of plaintext; the
//! last holds fewer (possibly none), so the plaintext length follows from the
//! object's size and a truncated object is detected (its last chunk is not
//! marked final). Chunk `i` is sealed with XChaCha20-Poly1305 under the
//! tenant's data key, nonce = prefix ‖ `i` (big endian), and associated data
//! binding the object key, the header, `i` and the final flag: a chunk cannot
//! be reordered, moved to another object or another tenant, or cut short
//! without failing to open. The random prefix makes every upload's nonces
//! fresh, even when the same key is written again.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::keys::{ObjectKey, Secret};
use crate::error::{Error, Result};

/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
pub const TAG: u64 = 16;
pub const HEADER: u64 = 32;
const SEALED_CHUNK: u64 = CHUNK + TAG;
const MAGIC: &[u8; 8] = b"CAMPUSE1";

/// The media types objects may hold, each recognised by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Mp4,
    Pdf,
    Png,
    Jpeg,
    Webp,
}

impl MediaKind {
    pub fn from_mime(mime: &str) -> Option<Self> {
        // Parameters (`; charset=…`) do not change the type.
        let essence = mime.split(';').next().unwrap_or("").trim();
        Some(match essence.to_ascii_lowercase().as_str() {
            "video/mp4" => Self::Mp4,
            "application/pdf" => Self::Pdf,
            "image/png" => Self::Png,
            "image/jpeg" => Self::Jpeg,
            "image/webp" => Self::Webp,
            _ => return None,
        })
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Mp4 => "video/mp4",
            Self::Pdf => "application/pdf",
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Mp4 => 1,
            Self::Pdf => 2,
            Self::Png => 3,
            Self::Jpeg => 4,
            Self::Webp => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Mp4,
            2 => Self::Pdf,
            3 => Self::Png,
            4 => Self::Jpeg,
            5 => Self::Webp,
            _ => return None,
        })
    }

    /// How many leading bytes [`matches`](Self::matches) needs.
    pub const SNIFF: usize = 12;

    /// Whether `head` (the file's first bytes) really is of this type.
    pub fn matches(self, head: &[u8]) -> bool {
        match self {
            Self::Mp4 => head.get(4..8) == Some(b"ftyp"),
            Self::Pdf => head.starts_with(b"%PDF-"),
            Self::Png => head.starts_with(b"\x89PNG\r\n\x1a\n"),
            Self::Jpeg => head.starts_with(b"\xff\xd8\xff"),
            Self::Webp => head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP"),
        }
    }
}

/// The header of a sealed object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: MediaKind,
    pub nonce_prefix: [u8; 16],
}

impl Header {
    pub fn fresh(kind: MediaKind) -> Self {
        let mut nonce_prefix = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
        Self { kind, nonce_prefix }
    }

    pub fn encode(&self) -> [u8; HEADER as usize] {
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8] = self.kind.code();
        h[16..].copy_from_slice(&self.nonce_prefix);
        h
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::Crypto("not a sealed object");
        if b.len() < HEADER as usize || &b[..8] != MAGIC || b[9..16] != [0u8; 7] {
            return Err(bad());
        }
        let kind = MediaKind::from_code(b[8]).ok_or_else(bad)?;
        let mut nonce_prefix = [0u8; 16];
        nonce_prefix.copy_from_slice(&b[16..32]);
        Ok(Self { kind, nonce_prefix })
    }

    /// An entity tag for the object: new with every upload.
    pub fn etag(&self) -> String {
        let hex: String = self.nonce_prefix[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("\"{hex}\"")
    }
}

/// Seals and opens the chunks of one object.
pub struct Sealer {
    aead: XChaCha20Poly1305,
    key: ObjectKey,
    header: Header,
}

impl Sealer {
    pub fn new(data_key: &Secret, key: ObjectKey, header: Header) -> Self {
        Self {
            aead: XChaCha20Poly1305::new((&data_key.0).into()),
            key,
            header,
        }
    }

    fn nonce(&self, index: u64) -> XNonce {
        let mut n = [0u8; 24];
        n[..16].copy_from_slice(&self.header.nonce_prefix);
        n[16..].copy_from_slice(&index.to_be_bytes());
        n.into()
    }

    fn aad(&self, index: u64, last: bool) -> Vec<u8> {
        let mut aad = b"campus chunk v1\0".to_vec();
        aad.extend_from_slice(self.key.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(&self.header.encode());
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    pub fn seal(&self, index: u64, last: bool, plain: &[u8]) -> Result<Vec<u8>> {
        let aad = self.aad(index, last);
        self.aead
            .encrypt(
                &self.nonce(index),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Crypto("sealing a chunk"))
    }

    pub fn open(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>> {
        let aad = self.aad(index, last);
        self.aead
            .decrypt(
                &self.nonce(index),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Crypto("a chunk failed authentication"))
    }
}

/// The layout of a sealed object of `stored` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext length.
    pub len: u64,
    /// Index of the last (final) chunk.
    pub last: u64,
    stored: u64,
}

impl Layout {
    pub fn of_stored(stored: u64) -> Result<Self> {
        let body = stored
            .checked_sub(HEADER)
            .ok_or(Error::Crypto("a sealed object is too short"))?;
        let last = body / SEALED_CHUNK;
        let rem = body % SEALED_CHUNK;
        if rem < TAG {
            return Err(Error::Crypto("a sealed object is truncated"));
        }
        Ok(Self {
            len: last * CHUNK + rem - TAG,
            last,
            stored,
        })
    }

    /// The stored size of `len` bytes of plaintext.
    pub fn stored_size(len: u64) -> u64 {
        HEADER + (len / CHUNK) * SEALED_CHUNK + (len % CHUNK) + TAG
    }

    /// The stored byte range of chunks `first..=last`.
    pub fn sealed_range(&self, first: u64, last: u64) -> std::ops::Range<u64> {
        let start = HEADER + first * SEALED_CHUNK;
        let end = (HEADER + (last + 1) * SEALED_CHUNK).min(self.stored);
        start..end
    }

    /// The sealed length of chunk `i`.
    pub fn sealed_len(&self, i: u64) -> u64 {
        let r = self.sealed_range(i, i);
        r.end - r.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TenantId;

    fn sealer() -> Sealer {
        let key = ObjectKey::lesson_content(TenantId::new(), uuid::Uuid::now_v7());
        Sealer::new(&Secret::random(), key, Header::fresh(MediaKind::Pdf))
    }

    #[test]
    fn layout_round_trips_every_length_near_chunk_edges() {
        for len in [
            0,
            1,
            15,
            16,
            17,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK,
            3 * CHUNK + 7,
        ] {
            let l = Layout::of_stored(Layout::stored_size(len)).unwrap();
            assert_eq!(l.len, len);
            assert_eq!(l.last, len / CHUNK);
        }
        assert!(Layout::of_stored(HEADER + 3).is_err());
        assert!(Layout::of_stored(10).is_err());
    }

    #[test]
    fn chunks_are_bound_to_their_place() {
        let s = sealer();
        let c0 = s.seal(0, false, b"hello").unwrap();
        assert_eq!(s.open(0, false, &c0).unwrap(), b"hello");
        assert!(s.open(1, false, &c0).is_err(), "moved");
        assert!(s.open(0, true, &c0).is_err(), "marked final");
        assert!(sealer().open(0, false, &c0).is_err(), "another object");
        let mut bad = c0.clone();
        bad[0] ^= 1;
        assert!(s.open(0, false, &bad).is_err(), "altered");
    }

    #[test]
    fn magic_bytes() {
        assert!(MediaKind::Mp4.matches(b"\0\0\0\x18ftypmp42"));
        assert!(!MediaKind::Mp4.matches(b"%PDF-1.7"));
        assert!(MediaKind::Pdf.matches(b"%PDF-1.7\n"));
        assert!(MediaKind::Png.matches(b"\x89PNG\r\n\x1a\n\0\0\0\x0d"));
        assert!(MediaKind::Jpeg.matches(b"\xff\xd8\xff\xe0"));
        assert!(MediaKind::Webp.matches(b"RIFF\x10\0\0\0WEBPVP8 "));
        assert!(!MediaKind::Webp.matches(b"RIFF\x10\0\0\0WAVE"));
        assert_eq!(MediaKind::from_mime("Video/MP4"), Some(MediaKind::Mp4));
        assert_eq!(MediaKind::from_mime("text/html"), None);
    }
}
