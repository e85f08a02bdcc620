//! Replication messages as they arrive from the stream: `wire::decode_frame`, then
//! `wire::decode_batch` of the body with the compression the frame names, and the batch
//! decoder alone with both compressions.
//!
//! Contract: malformed input is an `Err`, never a panic, and anything accepted re-encodes
//! into frames that decode again.
#![no_main]

use harmonylite_core::change::{Batch, BatchSeq};
use harmonylite_core::hlc::NodeId;
use harmonylite_core::wire::{decode_batch, decode_frame, encode_batch, Compression};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. The bytes as a whole frame (magic, CRC, postcard message).
    if let Ok(message) = decode_frame(data) {
        if let Ok(batch) = decode_batch(message.compression, &message.body) {
            re_encodes(&batch);
        }
    }
    // 2. The bytes behind a valid magic and CRC, so mutations reach the message decoder
    //    instead of stopping at the checksum.
    let mut framed = Vec::with_capacity(data.len() + 6);
    framed.extend_from_slice(b"HL");
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(message) = decode_frame(&framed) {
        if let Ok(batch) = decode_batch(message.compression, &message.body) {
            re_encodes(&batch);
        }
    }
    // 3. The bytes as a reassembled batch body, plain and LZ4.
    for compression in [Compression::None, Compression::Lz4] {
        if let Ok(batch) = decode_batch(compression, data) {
            re_encodes(&batch);
        }
    }
});

/// A batch the decoder accepted encodes (with and without LZ4) into frames that decode.
fn re_encodes(batch: &Batch) {
    let origin = NodeId::from_u128(1).expect("1 is a valid node id");
    for compression in [Compression::None, Compression::Lz4] {
        let frames = encode_batch(origin, BatchSeq::new(1), batch, compression, 1 << 24)
            .expect("an accepted batch encodes");
        let mut body = Vec::new();
        let mut used = None;
        for frame in &frames {
            let message = decode_frame(frame).expect("an encoded frame decodes");
            used = Some(message.compression);
            body.extend_from_slice(&message.body);
        }
        decode_batch(used.expect("at least one frame"), &body).expect("a re-encoded batch decodes");
    }
}
