//! Snapshot framing: a header, then fixed-size checksummed chunks of a database file.
//!
//! ```text
//! header (56 bytes, little-endian):
//!   magic "HLSNAP01" | version u16 | reserved u16 | chunk_size u32 | covered_seq u64
//!   | total_size u64 | file_crc u32 | taken_by 16 bytes | header_crc u32
//! then ceil(total_size / chunk_size) chunks:
//!   len u32 | crc u32 | len bytes       (every chunk but the last is chunk_size long)
//! ```
//!
//! `covered_seq` is the last stream sequence whose effects the file contains: a replica
//! restored from it resumes consuming at `covered_seq + 1`.
//!
//! Versions: 1 is a file stripped of the taker's node-local state (outbox, change log,
//! node-local metadata; `crate::sqlite::snapshot`); 2 is a file that may still carry it (a
//! database image streamed straight from the live file), which whoever uses the file must
//! remove first. A build that reads only version 1 refuses version 2 instead of adopting
//! another node's outbox and identity as its own. [`SnapshotHeader::carries_node_local`]
//! tells them apart. [`SnapshotDecoder`] follows the
//! `tokio_util::codec::Decoder` contract: incomplete input is `Ok(None)`, malformed input is
//! `Err`, never a panic; it verifies each chunk and, at the end, the whole file.

use bytes::{Buf, Bytes, BytesMut};

use crate::change::StreamSeq;
use crate::hlc::NodeId;

const MAGIC: [u8; 8] = *b"HLSNAP01";
/// Length of the encoded header.
pub const HEADER_LEN: usize = 56;
const CHUNK_HEADER_LEN: usize = 8;
/// Newest format version this build reads and writes: a file that may carry the taker's
/// node-local state (see the module docs).
pub const FORMAT_VERSION: u16 = 2;
/// Format version of a file stripped of node-local state (read by every build).
pub const STRIPPED_FORMAT_VERSION: u16 = 1;
/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest accepted chunk size (guards allocation on corrupt headers).
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// What a snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Size of each chunk's data (the last may be shorter).
    pub chunk_size: u32,
    /// Last stream sequence applied in the file.
    pub covered_seq: StreamSeq,
    /// Size of the database file in bytes.
    pub total_size: u64,
    /// CRC-32 of the whole file.
    pub file_crc: u32,
    /// Node that took the snapshot.
    pub taken_by: NodeId,
    /// The file may still hold the taker's node-local state (format version 2): remove it
    /// before using the file. `false`: stripped when it was taken (version 1).
    pub carries_node_local: bool,
}

impl SnapshotHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version().to_le_bytes());
        out[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.covered_seq.get().to_le_bytes());
        out[24..32].copy_from_slice(&self.total_size.to_le_bytes());
        out[32..36].copy_from_slice(&self.file_crc.to_le_bytes());
        out[36..52].copy_from_slice(&self.taken_by.to_bytes());
        let crc = crc32fast::hash(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, SnapshotError> {
        if bytes[0..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        if crc32fast::hash(&bytes[..52]) != le_u32(&bytes[52..56]) {
            return Err(SnapshotError::HeaderChecksum);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(STRIPPED_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let chunk_size = le_u32(&bytes[12..16]);
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(SnapshotError::BadChunkSize(chunk_size));
        }
        let mut node = [0u8; NodeId::LEN];
        node.copy_from_slice(&bytes[36..52]);
        Ok(SnapshotHeader {
            chunk_size,
            covered_seq: StreamSeq::new(le_u64(&bytes[16..24])),
            total_size: le_u64(&bytes[24..32]),
            file_crc: le_u32(&bytes[32..36]),
            taken_by: NodeId::from_bytes(node).ok_or(SnapshotError::NotASnapshot)?,
            carries_node_local: version == FORMAT_VERSION,
        })
    }

    /// The format version this header is encoded with.
    pub fn version(&self) -> u16 {
        if self.carries_node_local {
            FORMAT_VERSION
        } else {
            STRIPPED_FORMAT_VERSION
        }
    }

    /// Number of chunks that follow the header.
    pub fn chunk_count(&self) -> u64 {
        self.total_size.div_ceil(self.chunk_size as u64)
    }

    /// Size of the whole framed snapshot in bytes.
    pub fn framed_size(&self) -> u64 {
        HEADER_LEN as u64 + self.total_size + self.chunk_count() * CHUNK_HEADER_LEN as u64
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Encodes one chunk frame (length, CRC, data).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + data.len());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Errors found while decoding a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The magic bytes are wrong.
    #[error("not a harmonylite snapshot (bad magic)")]
    NotASnapshot,
    /// The header's checksum does not match.
    #[error("snapshot header checksum mismatch")]
    HeaderChecksum,
    /// Written by a newer format version.
    #[error("snapshot format version {0} is not supported by this build")]
    UnsupportedVersion(u16),
    /// Chunk size zero or implausibly large.
    #[error("snapshot chunk size {0} is invalid")]
    BadChunkSize(u32),
    /// A chunk's length disagrees with the header.
    #[error("snapshot chunk {index} has length {len}, expected {expected}")]
    BadChunkLength {
        /// Chunk index.
        index: u64,
        /// Length found.
        len: u32,
        /// Length expected.
        expected: u64,
    },
    /// A chunk's checksum does not match its data.
    #[error("snapshot chunk {0} checksum mismatch")]
    ChunkChecksum(u64),
    /// The whole file's checksum does not match.
    #[error("snapshot file checksum mismatch")]
    FileChecksum,
    /// Bytes after the last chunk.
    #[error("{0} unexpected bytes after the end of the snapshot")]
    TrailingBytes(usize),
    /// The input ended before the snapshot was complete.
    #[error("snapshot truncated: {received} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
}

/// One decoded piece of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotFrame {
    /// The header (always first).
    Header(SnapshotHeader),
    /// The next verified chunk of file data.
    Chunk(Bytes),
    /// Every chunk arrived and the whole-file checksum matched.
    End,
}

/// Incremental snapshot decoder (`Ok(None)` = need more bytes).
#[derive(Debug, Default)]
pub struct SnapshotDecoder {
    header: Option<SnapshotHeader>,
    next_chunk: u64,
    received: u64,
    file_crc: crc32fast::Hasher,
    ended: bool,
}

impl SnapshotDecoder {
    /// A decoder waiting for a header.
    pub fn new() -> Self {
        Self::default()
    }

    /// The header, once decoded.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.header.as_ref()
    }

    /// File bytes verified so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Decodes the next frame from the front of `src`, consuming exactly its bytes.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<SnapshotFrame>, SnapshotError> {
        let Some(header) = self.header else {
            if src.len() < HEADER_LEN {
                if src.len() >= MAGIC.len() && src[..MAGIC.len()] != MAGIC {
                    return Err(SnapshotError::NotASnapshot);
                }
                return Ok(None);
            }
            let mut bytes = [0u8; HEADER_LEN];
            bytes.copy_from_slice(&src[..HEADER_LEN]);
            let header = SnapshotHeader::decode(&bytes)?;
            src.advance(HEADER_LEN);
            self.header = Some(header);
            return Ok(Some(SnapshotFrame::Header(header)));
        };
        if self.ended {
            return if src.is_empty() {
                Ok(None)
            } else {
                Err(SnapshotError::TrailingBytes(src.len()))
            };
        }
        if self.next_chunk == header.chunk_count() {
            if self.file_crc.clone().finalize() != header.file_crc {
                return Err(SnapshotError::FileChecksum);
            }
            self.ended = true;
            if !src.is_empty() {
                return Err(SnapshotError::TrailingBytes(src.len()));
            }
            return Ok(Some(SnapshotFrame::End));
        }
        if src.len() < CHUNK_HEADER_LEN {
            return Ok(None);
        }
        let len = le_u32(&src[0..4]);
        let expected = (header.total_size - self.received).min(header.chunk_size as u64);
        if len as u64 != expected {
            return Err(SnapshotError::BadChunkLength {
                index: self.next_chunk,
                len,
                expected,
            });
        }
        if src.len() < CHUNK_HEADER_LEN + len as usize {
            src.reserve(CHUNK_HEADER_LEN + len as usize - src.len());
            return Ok(None);
        }
        let crc = le_u32(&src[4..8]);
        let mut chunk_crc = crc32fast::Hasher::new();
        chunk_crc.update(&src[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len as usize]);
        if chunk_crc.clone().finalize() != crc {
            return Err(SnapshotError::ChunkChecksum(self.next_chunk));
        }
        // One pass over the data: the whole file's CRC is the chunks' CRCs combined.
        self.file_crc.combine(&chunk_crc);
        src.advance(CHUNK_HEADER_LEN);
        let data = src.split_to(len as usize).freeze();
        self.next_chunk += 1;
        self.received += len as u64;
        Ok(Some(SnapshotFrame::Chunk(data)))
    }

    /// Call when the input has ended: errors unless the whole snapshot was decoded.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        match self.header {
            Some(_) if self.ended => Ok(()),
            Some(h) => Err(SnapshotError::Truncated {
                received: self.received,
                expected: h.total_size,
            }),
            None => Err(SnapshotError::Truncated {
                received: 0,
                expected: HEADER_LEN as u64,
            }),
        }
    }
}

/// Frames a whole file held in memory (convenience for tests and small databases).
pub fn frame_bytes(
    file: &[u8],
    covered_seq: StreamSeq,
    taken_by: NodeId,
    chunk_size: u32,
) -> Vec<u8> {
    let header = SnapshotHeader {
        chunk_size,
        covered_seq,
        total_size: file.len() as u64,
        file_crc: crc32fast::hash(file),
        taken_by,
        carries_node_local: false,
    };
    let mut out = header.encode().to_vec();
    for chunk in file.chunks(chunk_size as usize) {
        out.extend_from_slice(&encode_chunk(chunk));
    }
    out
}

/// Decodes a whole framed snapshot held in memory, verifying everything.
pub fn unframe_bytes(framed: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), SnapshotError> {
    let mut decoder = SnapshotDecoder::new();
    let mut src = BytesMut::from(framed);
    let mut header = None;
    let mut file = Vec::new();
    while let Some(frame) = decoder.decode(&mut src)? {
        match frame {
            SnapshotFrame::Header(h) => header = Some(h),
            SnapshotFrame::Chunk(data) => file.extend_from_slice(&data),
            SnapshotFrame::End => break,
        }
    }
    decoder.finish()?;
    if !src.is_empty() {
        return Err(SnapshotError::TrailingBytes(src.len()));
    }
    Ok((header.expect("finish() checked the header"), file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> NodeId {
        NodeId::from_u128(42).unwrap()
    }

    #[test]
    fn empty_file_round_trips() {
        let framed = frame_bytes(&[], StreamSeq::new(3), node(), 16);
        let (h, file) = unframe_bytes(&framed).unwrap();
        assert_eq!(h.covered_seq, StreamSeq::new(3));
        assert!(file.is_empty());
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_same_frames() {
        let file: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let framed = frame_bytes(&file, StreamSeq::new(9), node(), 64);
        let mut decoder = SnapshotDecoder::new();
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for b in framed {
            src.extend_from_slice(&[b]);
            while let Some(frame) = decoder.decode(&mut src).unwrap() {
                match frame {
                    SnapshotFrame::Chunk(d) => out.extend_from_slice(&d),
                    SnapshotFrame::End => ended = true,
                    SnapshotFrame::Header(_) => {}
                }
            }
        }
        assert!(ended);
        assert_eq!(out, file);
    }

    #[test]
    fn the_version_says_whether_the_file_carries_node_local_state() {
        let stripped = frame_bytes(b"data", StreamSeq::new(3), node(), 16);
        assert_eq!(u16::from_le_bytes([stripped[8], stripped[9]]), 1);
        let (h, _) = unframe_bytes(&stripped).unwrap();
        assert!(!h.carries_node_local);

        let carrying = SnapshotHeader {
            carries_node_local: true,
            ..h
        };
        let bytes = carrying.encode();
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), FORMAT_VERSION);
        assert_eq!(SnapshotHeader::decode(&bytes).unwrap(), carrying);

        // A version this build does not know (with a valid header checksum) is refused.
        let mut newer = bytes;
        newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&newer[..52]);
        newer[52..56].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SnapshotHeader::decode(&newer),
            Err(SnapshotError::UnsupportedVersion(FORMAT_VERSION + 1))
        );
    }

    proptest! {
        #[test]
        fn round_trip(file in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1u32..300, seq in any::<u64>()) {
            let framed = frame_bytes(&file, StreamSeq::new(seq), node(), chunk);
            prop_assert_eq!(framed.len() as u64, SnapshotHeader::decode(framed[..HEADER_LEN].try_into().unwrap()).unwrap().framed_size());
            let (h, back) = unframe_bytes(&framed).unwrap();
            prop_assert_eq!(back, file);
            prop_assert_eq!(h.covered_seq.get(), seq);
        }

        #[test]
        fn truncation_is_an_error(file in proptest::collection::vec(any::<u8>(), 1..500), chunk in 1u32..100, cut in any::<prop::sample::Index>()) {
            let framed = frame_bytes(&file, StreamSeq::new(1), node(), chunk);
            let cut = cut.index(framed.len());
            prop_assert!(unframe_bytes(&framed[..cut]).is_err());
        }

        #[test]
        fn any_bit_flip_is_an_error(file in proptest::collection::vec(any::<u8>(), 1..500), chunk in 1u32..100, bit in any::<prop::sample::Index>()) {
            let mut framed = frame_bytes(&file, StreamSeq::new(1), node(), chunk);
            let bit = bit.index(framed.len() * 8);
            framed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(unframe_bytes(&framed).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = unframe_bytes(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = unframe_bytes(&with_magic);
        }
    }
}
