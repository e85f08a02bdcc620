//! Wire format of replication messages.
//!
//! A frame on the stream is
//!
//! ```text
//! +------+------+----------------+---------------------------------------+
//! | 'H'  | 'L'  | CRC-32 (LE u32)| postcard(Message)                     |
//! +------+------+----------------+---------------------------------------+
//! ```
//!
//! The CRC covers everything after it, so truncation or any flipped bit is detected before
//! decoding. [`Message`] is a versioned enum (`Message::V1`); a frame whose version this
//! build does not know is reported as [`WireError::UnsupportedVersion`] so a host can park it
//! until it is upgraded.
//!
//! A [`MessageV1`] carries one part of one batch: the origin node, its batch sequence, the
//! part index and count, the compression used and the part's bytes. The parts of a batch,
//! concatenated in index order, are the (optionally compressed) postcard encoding of a
//! [`Batch`]. Batches larger than the stream's payload limit are split into several parts
//! and applied only when every part has arrived.
//!
//! A [`MigrationV1`] (variant index 1, "version 2" of the envelope) carries one replicated
//! schema migration: SQL every replica runs once, in stream order (see
//! `docs/schema-changes.md`). Builds older than it report "version 2 is newer than this
//! build" and park the message until they are upgraded. [`decode_message`] decodes either
//! kind; [`decode_frame`] accepts batch parts only.
//!
//! A [`RoutedPart`] (variant index 2, "version 3") carries one frame of a batch that was
//! split by route (see `crate::scope`): each route's rows are a batch of their own, encoded
//! (and chunked) separately and published on that route's subject. A frame names its place
//! among all the batch's frames (`part` of `parts`) and its group's frames (`group_start`,
//! `group_frames`): a full replica applies the batch once every frame of every group has
//! arrived, in one transaction, so a source transaction stays atomic; a scoped replica, which
//! receives only its routes, applies each group on its own. Builds older than it park such
//! frames ("version 3 is newer than this build") until they are upgraded; they never
//! misapply them.
//!
//! A [`RefusedNotice`] (variant index 3, "version 4") tells a scoped replica that the full
//! replicas refused one of its batches (see `crate::sqlite` scope checks): which rows, and
//! why. Full replicas publish it on each partition subject of the refused batch, writer `f`,
//! so only full nodes can publish one and only those partitions' replicas read it: the
//! writer and the other scoped replicas of those partitions, which may have applied the
//! refused batch, return its rows to the accepted state; full replicas ignore it. Builds
//! older than it park it until they are upgraded.
//!
//! A [`CellsFrame`] (variant index 4, "version 5") wraps a batch part or a routed frame
//! whose batch carries changes of tables that merge by column (`Batch::cells`, encoded after
//! the row changes; see `crate::column_merge`). Builds older than it park such frames
//! ("version 5 is newer than this build") until they are upgraded: they never apply a
//! column change as a row image. [`decode_message`] unwraps it, so the rest of a build reads
//! it as the part or routed frame it wraps; [`decode_batch`] reads the trailing changes.

use serde::{Deserialize, Serialize};

use crate::change::{Batch, BatchSeq};
use crate::hlc::NodeId;

const MAGIC: [u8; 2] = *b"HL";
const HEADER_LEN: usize = MAGIC.len() + 4;
/// Room reserved in each frame for everything but the part's bytes.
const FRAME_OVERHEAD: usize = 96;
/// Largest expansion LZ4 can produce; a larger declared size is malformed.
const LZ4_MAX_RATIO: usize = 255;
/// The newest message version this build understands (the number of [`Message`] variants).
pub const CURRENT_VERSION: u64 = 5;

/// A replication message, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Version 1: one part of a batch of row changes.
    V1(MessageV1),
    /// Added in version 2: a replicated schema migration.
    Migration(MigrationV1),
    /// Added in version 3: one frame of a batch split by route (scopes on).
    Routed(RoutedPart),
    /// Added in version 4: a scoped replica's batch was refused (scopes on).
    Refused(RefusedNotice),
    /// Added in version 5: a frame whose batch carries column-merge changes.
    Cells(CellsFrame),
}

/// A frame whose batch carries changes of tables that merge by column (see the module
/// docs): the kind of frame it would be otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CellsFrame {
    /// A batch part.
    Part(MessageV1),
    /// A routed frame.
    Routed(RoutedPart),
}

/// Wraps a batch frame in [`Message::Cells`] when its batch carries column changes, so that
/// builds that cannot read them park it.
fn batch_message(message: Message, cells: bool) -> Message {
    match message {
        Message::V1(part) if cells => Message::Cells(CellsFrame::Part(part)),
        Message::Routed(part) if cells => Message::Cells(CellsFrame::Routed(part)),
        other => other,
    }
}

/// The full replicas refused a scoped replica's batch: nothing of it was applied anywhere.
/// The writer returns these rows to the state the cluster accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedNotice {
    /// The scoped replica that published the batch.
    pub writer: NodeId,
    /// Its sequence number for the batch.
    pub batch_seq: BatchSeq,
    /// Why (the first offending row's problem).
    pub reason: String,
    /// Every row of the batch (empty when the batch could not be decoded).
    pub rows: Vec<RefusedRow>,
}

/// One row of a refused batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRow {
    /// Its table, as the writer named it.
    pub table: String,
    /// Its primary-key values.
    pub key: Vec<crate::value::Value>,
}

impl RefusedNotice {
    /// The JetStream de-duplication id every full replica gives this notice on the subject
    /// of `partition` (a partition token), so that the stream keeps one of the copies they
    /// publish (within its duplicate window).
    pub fn msg_id(&self, partition: &str) -> String {
        format!("refused-{}-{}-{partition}", self.writer, self.batch_seq)
    }
}

/// One frame of a batch split into route groups (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedPart {
    /// Node that captured the batch.
    pub origin: NodeId,
    /// The origin's sequence number for the batch.
    pub batch_seq: BatchSeq,
    /// Index of this frame among all the batch's frames, from 0.
    pub part: u32,
    /// Number of frames of the batch, every group counted.
    pub parts: u32,
    /// Index of this frame's group's first frame.
    pub group_start: u32,
    /// Number of frames of this frame's group.
    pub group_frames: u32,
    /// Fingerprint of the publisher's scope rules (`scope::ScopeRules::fingerprint`): a
    /// replica with other rules parks the frame rather than judge it by different rules.
    pub rules: u32,
    /// How this group's concatenated frames are compressed.
    pub compression: Compression,
    /// This frame's bytes.
    pub body: Vec<u8>,
}

impl RoutedPart {
    /// Whether this frame is its group's only frame and its group is the batch's only one.
    pub fn is_whole(&self) -> bool {
        self.parts == 1
    }
}

/// A replicated schema migration: SQL that every replica runs exactly once, in stream order,
/// before applying any later message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationV1 {
    /// Node that published it.
    pub origin: NodeId,
    /// Unique id: the origin's HLC when it was published, encoded (24 bytes).
    pub id: Vec<u8>,
    /// Migration version the origin had applied when it published this one (informative:
    /// replicas number migrations by stream order).
    pub base_version: u64,
    /// Whether the publisher allowed destructive statements (`DROP TABLE`, `DROP COLUMN`).
    pub destructive: bool,
    /// The SQL text, one or more statements.
    pub sql: String,
}

/// Version 1 of a replication message: one part of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageV1 {
    /// Node that captured the batch.
    pub origin: NodeId,
    /// The origin's sequence number for the batch.
    pub batch_seq: BatchSeq,
    /// Index of this part, from 0.
    pub part: u32,
    /// Number of parts of the batch (at least 1).
    pub parts: u32,
    /// How the concatenated parts are compressed.
    pub compression: Compression,
    /// This part's bytes.
    pub body: Vec<u8>,
}

/// Compression of a batch body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Plain postcard bytes.
    None,
    /// LZ4 block with the uncompressed size prepended (`lz4_flex` format).
    Lz4,
}

/// Why a frame or batch could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header, or the magic bytes are wrong.
    #[error("not a harmonylite message (bad magic or {0} bytes too short)")]
    NotAMessage(usize),
    /// The CRC does not match the contents.
    #[error("message checksum mismatch (corrupted or truncated in transit)")]
    Checksum,
    /// A version newer than this build understands.
    #[error("message version {0} is newer than this build understands ({CURRENT_VERSION}); upgrade this node")]
    UnsupportedVersion(u64),
    /// Postcard decoding failed or left trailing bytes.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The part index and count are inconsistent.
    #[error("malformed message: part {part} of {parts}")]
    BadPart {
        /// Part index.
        part: u32,
        /// Part count.
        parts: u32,
    },
    /// Decompression failed or the declared size is implausible.
    #[error("malformed compressed batch: {0}")]
    Decompress(String),
    /// The batch decoded but is internally inconsistent.
    #[error("inconsistent batch: {0}")]
    InvalidBatch(String),
    /// A migration frame where a batch part was expected.
    #[error("a schema migration where a batch part was expected")]
    NotABatch,
    /// The payload limit is too small to carry any data.
    #[error("payload limit of {0} bytes is too small for a message")]
    LimitTooSmall(usize),
}

/// Encodes `batch` as one or more frames no larger than `max_frame` bytes each.
pub fn encode_batch(
    origin: NodeId,
    batch_seq: BatchSeq,
    batch: &Batch,
    compression: Compression,
    max_frame: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    let (compression, chunks) = encode_body(batch, compression, max_frame)?;
    let count = chunks.len() as u32;
    let cells = !batch.cells.is_empty();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let part = Message::V1(MessageV1 {
                origin,
                batch_seq,
                part: i as u32,
                parts: count,
                compression,
                body,
            });
            encode_frame(&batch_message(part, cells))
        })
        .collect())
}

/// Encodes a batch split into route groups: each group's rows as a batch of their own,
/// chunked to `max_frame`. Returns each frame with the index of its group, groups in the
/// order given.
pub fn encode_routed_batch(
    origin: NodeId,
    batch_seq: BatchSeq,
    rules: u32,
    groups: &[Batch],
    compression: Compression,
    max_frame: usize,
) -> Result<Vec<(usize, Vec<u8>)>, WireError> {
    let encoded = groups
        .iter()
        .map(|group| encode_body(group, compression, max_frame))
        .collect::<Result<Vec<_>, _>>()?;
    let parts: usize = encoded.iter().map(|(_, chunks)| chunks.len()).sum();
    let mut frames = Vec::with_capacity(parts);
    for (group, (compression, chunks)) in encoded.into_iter().enumerate() {
        let cells = !groups[group].cells.is_empty();
        let group_start = frames.len() as u32;
        let group_frames = chunks.len() as u32;
        for body in chunks {
            let part = frames.len() as u32;
            let routed = Message::Routed(RoutedPart {
                origin,
                batch_seq,
                part,
                parts: parts as u32,
                group_start,
                group_frames,
                rules,
                compression,
                body,
            });
            let frame = encode_frame(&batch_message(routed, cells));
            frames.push((group, frame));
        }
    }
    Ok(frames)
}

/// A batch's postcard bytes, compressed when that makes them smaller, in chunks that fit a
/// frame of `max_frame` bytes (at least one chunk).
fn encode_body(
    batch: &Batch,
    compression: Compression,
    max_frame: usize,
) -> Result<(Compression, Vec<Vec<u8>>), WireError> {
    if max_frame <= FRAME_OVERHEAD {
        return Err(WireError::LimitTooSmall(max_frame));
    }
    let mut plain =
        postcard::to_allocvec(batch).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !batch.cells.is_empty() {
        plain = postcard::to_extend(&batch.cells, plain)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
    }
    let (compression, body) = match compression {
        Compression::Lz4 => {
            let packed = lz4_flex::block::compress_prepend_size(&plain);
            if packed.len() < plain.len() {
                (Compression::Lz4, packed)
            } else {
                (Compression::None, plain)
            }
        }
        Compression::None => (Compression::None, plain),
    };
    let part_len = max_frame - FRAME_OVERHEAD;
    let chunks = if body.is_empty() {
        vec![body]
    } else {
        body.chunks(part_len).map(<[u8]>::to_vec).collect()
    };
    Ok((compression, chunks))
}

/// Encodes one message as a checksummed frame.
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    let out = postcard::to_extend(message, out).expect("encoding into a Vec cannot fail");
    let mut out = out;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[MAGIC.len()..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and verifies one frame that must be a batch part ([`Message::V1`]); a migration
/// frame is [`WireError::NotABatch`]. Never panics, whatever the input.
pub fn decode_frame(frame: &[u8]) -> Result<MessageV1, WireError> {
    match decode_message(frame)? {
        Message::V1(message) => Ok(message),
        Message::Migration(_) | Message::Routed(_) | Message::Refused(_) | Message::Cells(_) => {
            Err(WireError::NotABatch)
        }
    }
}

/// Decodes and verifies one frame of any kind. Never panics, whatever the input.
pub fn decode_message(frame: &[u8]) -> Result<Message, WireError> {
    if frame.len() < HEADER_LEN || frame[..MAGIC.len()] != MAGIC {
        return Err(WireError::NotAMessage(frame.len()));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&frame[MAGIC.len()..HEADER_LEN]);
    let payload = &frame[HEADER_LEN..];
    if crc32fast::hash(payload) != u32::from_le_bytes(crc) {
        return Err(WireError::Checksum);
    }
    let (version, _) = postcard::take_from_bytes::<u64>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if version >= CURRENT_VERSION {
        // Variant indexes start at 0 for V1. Saturating: a peer may send index u64::MAX.
        return Err(WireError::UnsupportedVersion(version.saturating_add(1)));
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    let message = match message {
        Message::Cells(CellsFrame::Part(part)) => Message::V1(part),
        Message::Cells(CellsFrame::Routed(part)) => Message::Routed(part),
        other => other,
    };
    match message {
        Message::V1(message) => {
            if message.parts == 0 || message.part >= message.parts {
                return Err(WireError::BadPart {
                    part: message.part,
                    parts: message.parts,
                });
            }
            Ok(Message::V1(message))
        }
        Message::Migration(migration) => {
            if migration.id.len() != crate::hlc::Hlc::LEN {
                return Err(WireError::Malformed(format!(
                    "migration id of {} bytes",
                    migration.id.len()
                )));
            }
            Ok(Message::Migration(migration))
        }
        Message::Routed(part) => {
            let group_end = part.group_start.checked_add(part.group_frames);
            let consistent = part.part < part.parts
                && part.group_frames > 0
                && part.group_start <= part.part
                && group_end.is_some_and(|end| part.part < end && end <= part.parts);
            if !consistent {
                return Err(WireError::BadPart {
                    part: part.part,
                    parts: part.parts,
                });
            }
            Ok(Message::Routed(part))
        }
        Message::Refused(notice) => Ok(Message::Refused(notice)),
        Message::Cells(_) => unreachable!("unwrapped above"),
    }
}

/// Decodes a complete batch body (all parts concatenated in order). Never panics.
pub fn decode_batch(compression: Compression, body: &[u8]) -> Result<Batch, WireError> {
    let plain;
    let bytes = match compression {
        Compression::None => body,
        Compression::Lz4 => {
            if body.len() < 4 {
                return Err(WireError::Decompress("missing size prefix".into()));
            }
            let declared = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            if declared > (body.len() - 4).saturating_mul(LZ4_MAX_RATIO) + 16 {
                return Err(WireError::Decompress(format!(
                    "declared size {declared} is impossible for {} compressed bytes",
                    body.len() - 4
                )));
            }
            plain = lz4_flex::block::decompress_size_prepended(body)
                .map_err(|e| WireError::Decompress(e.to_string()))?;
            &plain[..]
        }
    };
    let (mut batch, mut rest) = postcard::take_from_bytes::<Batch>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        let (cells, after) = postcard::take_from_bytes(rest)
            .map_err(|e| WireError::Malformed(format!("column changes: {e}")))?;
        batch.cells = cells;
        rest = after;
    }
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes after batch",
            rest.len()
        )));
    }
    batch.validate().map_err(WireError::InvalidBatch)?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{CellChange, CounterTotals, ObservedTotals, RowChange, TableSchema};
    use crate::value::Value;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    fn cell() -> impl Strategy<Value = CellChange> {
        (
            any::<u64>(),
            value(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec((0u32..2, value()), 0..3),
            proptest::collection::vec((0u32..2, any::<u64>(), any::<u64>()), 0..2),
        )
            .prop_filter("changes something", |(_, _, deleted, columns, counters)| {
                deleted.is_some() || !columns.is_empty() || !counters.is_empty()
            })
            .prop_map(|(time, key, deleted, columns, counters)| CellChange {
                table: 0,
                key: vec![key],
                deleted,
                time,
                columns,
                counters: counters
                    .iter()
                    .map(|&(column, up, down)| CounterTotals { column, up, down })
                    .collect(),
                observed: match deleted {
                    Some(_) => counters
                        .into_iter()
                        .map(|(column, up, down)| ObservedTotals {
                            column,
                            node: node(),
                            totals: crate::column_merge::Totals { up, down },
                        })
                        .collect(),
                    None => Vec::new(),
                },
            })
    }

    fn batch() -> impl Strategy<Value = Batch> {
        (
            proptest::collection::vec(
                (
                    any::<u64>(),
                    value(),
                    proptest::option::of(proptest::collection::vec(value(), 2)),
                ),
                0..20,
            ),
            proptest::collection::vec(cell(), 0..4),
        )
            .prop_map(|(rows, cells)| Batch {
                tables: vec![TableSchema {
                    name: "t \"x\" é".into(),
                    fingerprint: 7,
                    key_columns: vec!["id".into()],
                    value_columns: vec!["a".into(), "b".into()],
                }],
                rows: rows
                    .into_iter()
                    .map(|(time, key, values)| RowChange {
                        table: 0,
                        time,
                        key: vec![key],
                        values,
                    })
                    .collect(),
                cells,
            })
    }

    fn node() -> NodeId {
        NodeId::from_u128(0xabc).unwrap()
    }

    fn round_trip(frames: &[Vec<u8>]) -> Batch {
        let parts: Vec<MessageV1> = frames.iter().map(|f| decode_frame(f).unwrap()).collect();
        let body: Vec<u8> = parts.iter().flat_map(|p| p.body.clone()).collect();
        decode_batch(parts[0].compression, &body).unwrap()
    }

    #[test]
    fn future_versions_are_reported_as_such() {
        let mut frame = encode_frame(&Message::V1(MessageV1 {
            origin: node(),
            batch_seq: BatchSeq::new(1),
            part: 0,
            parts: 1,
            compression: Compression::None,
            body: vec![],
        }));
        frame[HEADER_LEN] = 5; // variant index 5 = version 6
        let crc = crc32fast::hash(&frame[HEADER_LEN..]);
        frame[2..6].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_frame(&frame), Err(WireError::UnsupportedVersion(6)));
    }

    #[test]
    fn refusal_notices_round_trip_and_are_not_batches() {
        let notice = RefusedNotice {
            writer: node(),
            batch_seq: BatchSeq::new(9),
            reason: "the key belongs to another partition".into(),
            rows: vec![RefusedRow {
                table: "notes".into(),
                key: vec![crate::value::Value::Text("n1".into())],
            }],
        };
        let frame = encode_frame(&Message::Refused(notice.clone()));
        assert_eq!(decode_message(&frame), Ok(Message::Refused(notice.clone())));
        assert_eq!(decode_frame(&frame), Err(WireError::NotABatch));
        assert_eq!(
            notice.msg_id("user.tu1"),
            format!("refused-{}-9-user.tu1", node())
        );
    }

    #[test]
    fn migrations_round_trip_and_are_not_batches() {
        let migration = MigrationV1 {
            origin: node(),
            id: vec![7; crate::hlc::Hlc::LEN],
            base_version: 3,
            destructive: false,
            sql: "ALTER TABLE t ADD COLUMN c TEXT; -- ;".into(),
        };
        let frame = encode_frame(&Message::Migration(migration.clone()));
        assert_eq!(
            decode_message(&frame),
            Ok(Message::Migration(migration.clone()))
        );
        assert_eq!(decode_frame(&frame), Err(WireError::NotABatch));
        let bad = encode_frame(&Message::Migration(MigrationV1 {
            id: vec![1, 2],
            ..migration
        }));
        assert!(matches!(decode_message(&bad), Err(WireError::Malformed(_))));
    }

    #[test]
    fn column_changes_travel_as_version_5_which_older_builds_park() {
        let batch = Batch {
            tables: vec![TableSchema {
                name: "t".into(),
                fingerprint: 1,
                key_columns: vec!["id".into()],
                value_columns: vec!["v".into(), "n".into()],
            }],
            rows: Vec::new(),
            cells: vec![CellChange {
                table: 0,
                key: vec![Value::Integer(1)],
                deleted: None,
                time: 9,
                columns: vec![(0, Value::Text("x".into()))],
                counters: vec![CounterTotals {
                    column: 1,
                    up: 0,
                    down: 3,
                }],
                observed: Vec::new(),
            }],
        };
        let frames =
            encode_batch(node(), BatchSeq::new(1), &batch, Compression::Lz4, 4096).unwrap();
        let (variant, _) = postcard::take_from_bytes::<u64>(&frames[0][HEADER_LEN..]).unwrap();
        // Variant index 4 is "version 5": a build whose newest is 4 reports it as newer
        // than itself and parks it (see `decode_message`).
        assert_eq!(variant + 1, 5);
        assert_eq!(round_trip(&frames), batch);
        // A batch without column changes stays version 1, which every build reads.
        let plain = Batch {
            cells: Vec::new(),
            ..batch.clone()
        };
        let frames =
            encode_batch(node(), BatchSeq::new(2), &plain, Compression::Lz4, 4096).unwrap();
        let (variant, _) = postcard::take_from_bytes::<u64>(&frames[0][HEADER_LEN..]).unwrap();
        assert_eq!(variant, 0);
        // Routed frames with column changes are wrapped too.
        let routed = encode_routed_batch(
            node(),
            BatchSeq::new(3),
            1,
            std::slice::from_ref(&batch),
            Compression::None,
            4096,
        )
        .unwrap();
        let (variant, _) = postcard::take_from_bytes::<u64>(&routed[0].1[HEADER_LEN..]).unwrap();
        assert_eq!(variant + 1, 5);
        assert!(matches!(
            decode_message(&routed[0].1),
            Ok(Message::Routed(_))
        ));
    }

    #[test]
    fn large_batches_split_into_parts_within_the_limit() {
        let batch = Batch {
            tables: vec![TableSchema {
                name: "t".into(),
                fingerprint: 1,
                key_columns: vec!["id".into()],
                value_columns: vec!["v".into()],
            }],
            rows: (0..1000)
                .map(|i| RowChange {
                    table: 0,
                    time: i,
                    key: vec![Value::Integer(i as i64)],
                    values: Some(vec![Value::Text(format!("row {i} {}", "x".repeat(50)))]),
                })
                .collect(),
            cells: Vec::new(),
        };
        let frames =
            encode_batch(node(), BatchSeq::new(3), &batch, Compression::None, 4096).unwrap();
        assert!(frames.len() > 10);
        assert!(frames.iter().all(|f| f.len() <= 4096));
        assert_eq!(round_trip(&frames), batch);
        let packed =
            encode_batch(node(), BatchSeq::new(3), &batch, Compression::Lz4, 4096).unwrap();
        assert!(packed.len() < frames.len());
        assert_eq!(round_trip(&packed), batch);
    }

    #[test]
    fn routed_batches_keep_each_group_decodable_on_its_own() {
        let groups: Vec<Batch> = (0..3)
            .map(|g| Batch {
                tables: vec![TableSchema {
                    name: format!("t{g}"),
                    fingerprint: 1,
                    key_columns: vec!["id".into()],
                    value_columns: vec!["v".into()],
                }],
                rows: (0..(1 + g * 200))
                    .map(|i| RowChange {
                        table: 0,
                        time: i as u64,
                        key: vec![Value::Integer(i as i64)],
                        values: Some(vec![Value::Text("x".repeat(40))]),
                    })
                    .collect(),
                cells: Vec::new(),
            })
            .collect();
        let frames = encode_routed_batch(
            node(),
            BatchSeq::new(5),
            7,
            &groups,
            Compression::None,
            4096,
        )
        .unwrap();
        assert!(frames.len() > 3, "the big groups are chunked");
        let total = frames.len() as u32;
        for (g, group) in groups.iter().enumerate() {
            let parts: Vec<RoutedPart> = frames
                .iter()
                .filter(|(i, _)| *i == g)
                .map(|(_, f)| match decode_message(f).unwrap() {
                    Message::Routed(p) => p,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert!(parts.iter().all(|p| p.parts == total
                && p.group_frames as usize == parts.len()
                && p.group_start == parts[0].part));
            let body: Vec<u8> = parts.iter().flat_map(|p| p.body.clone()).collect();
            assert_eq!(&decode_batch(parts[0].compression, &body).unwrap(), group);
        }
        assert_eq!(decode_frame(&frames[0].1), Err(WireError::NotABatch));
    }

    #[test]
    fn routed_frames_with_inconsistent_places_are_refused() {
        let part = |part, parts, group_start, group_frames| {
            decode_message(&encode_frame(&Message::Routed(RoutedPart {
                origin: node(),
                batch_seq: BatchSeq::new(1),
                part,
                parts,
                group_start,
                group_frames,
                rules: 7,
                compression: Compression::None,
                body: vec![],
            })))
        };
        assert!(part(1, 3, 1, 2).is_ok());
        for (p, n, s, f) in [
            (3, 3, 0, 3),
            (0, 3, 1, 2),
            (2, 3, 1, 3),
            (1, 3, 1, 0),
            (0, 0, 0, 1),
        ] {
            assert!(
                matches!(part(p, n, s, f), Err(WireError::BadPart { .. })),
                "{p} {n} {s} {f}"
            );
        }
        assert!(matches!(
            part(0, 2, u32::MAX, 2),
            Err(WireError::BadPart { .. })
        ));
    }

    proptest! {
        #[test]
        fn batches_round_trip(b in batch(), lz4 in any::<bool>()) {
            let c = if lz4 { Compression::Lz4 } else { Compression::None };
            let frames = encode_batch(node(), BatchSeq::new(9), &b, c, 1 << 20).unwrap();
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(round_trip(&frames), b);
        }

        #[test]
        fn truncation_is_an_error(b in batch(), cut in any::<prop::sample::Index>()) {
            let frame = encode_batch(node(), BatchSeq::new(1), &b, Compression::None, 1 << 20).unwrap().remove(0);
            let cut = cut.index(frame.len());
            prop_assert!(decode_frame(&frame[..cut]).is_err());
        }

        #[test]
        fn any_bit_flip_is_an_error(b in batch(), lz4 in any::<bool>(), bit in any::<prop::sample::Index>()) {
            let c = if lz4 { Compression::Lz4 } else { Compression::None };
            let mut frame = encode_batch(node(), BatchSeq::new(1), &b, c, 1 << 20).unwrap().remove(0);
            let bit = bit.index(frame.len() * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&frame).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame(&bytes);
            let _ = decode_batch(Compression::None, &bytes);
            let _ = decode_batch(Compression::Lz4, &bytes);
        }

        #[test]
        fn garbage_with_valid_envelope_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), lz4 in any::<bool>()) {
            let c = if lz4 { Compression::Lz4 } else { Compression::None };
            let frame = encode_frame(&Message::V1(MessageV1 {
                origin: node(), batch_seq: BatchSeq::new(1), part: 0, parts: 1, compression: c, body,
            }));
            let m = decode_frame(&frame).unwrap();
            let _ = decode_batch(m.compression, &m.body);
        }
    }
}
