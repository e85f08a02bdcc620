//! The incremental snapshot decoder, fed arbitrary bytes split at arbitrary points.
//!
//! Input layout: byte 0 is a control byte (low 4 bits: number of split points; bit 4: repair
//! the header checksum so mutations get past it), then two little-endian bytes per split
//! point, then the snapshot stream itself.
//!
//! Contract (`tokio_util::codec::Decoder`): incomplete input is `Ok(None)`, malformed input
//! is `Err`, never a panic; the verdict and the decoded file do not depend on how the input
//! was split, and equal those of the one-shot `unframe_bytes`.
#![no_main]

use bytes::BytesMut;
use harmonylite_core::snapshot::{unframe_bytes, SnapshotDecoder, SnapshotFrame, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let splits = (control & 0x0f) as usize;
    if rest.len() < splits * 2 {
        return;
    }
    let (points, stream) = rest.split_at(splits * 2);
    let mut stream = stream.to_vec();
    if control & 0x10 != 0 && stream.len() >= HEADER_LEN {
        let crc = crc32fast::hash(&stream[..52]);
        stream[52..56].copy_from_slice(&crc.to_le_bytes());
    }
    let mut cuts: Vec<usize> = points
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]) as usize % (stream.len() + 1))
        .collect();
    cuts.push(stream.len());
    cuts.sort_unstable();

    let incremental = decode_in_pieces(&stream, &cuts);
    let whole = unframe_bytes(&stream).map(|(_, file)| file);
    assert_eq!(
        incremental.is_ok(),
        whole.is_ok(),
        "split decoding ({incremental:?}) disagrees with one-shot decoding ({whole:?})"
    );
    if let (Ok(a), Ok(b)) = (&incremental, &whole) {
        assert_eq!(a, b, "split decoding yields a different file");
    }
});

/// Feeds `stream` cut at `cuts`, draining the decoder after each piece; the file on success.
fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Result<Vec<u8>, String> {
    let mut decoder = SnapshotDecoder::new();
    let mut src = BytesMut::new();
    let mut file = Vec::new();
    let mut ended = false;
    let mut start = 0;
    for &cut in cuts {
        src.extend_from_slice(&stream[start..cut]);
        start = cut;
        loop {
            match decoder.decode(&mut src) {
                Ok(None) => break,
                Ok(Some(SnapshotFrame::Header(h))) => {
                    assert!(file.is_empty() && decoder.header() == Some(&h));
                }
                Ok(Some(SnapshotFrame::Chunk(chunk))) => {
                    assert!(!ended, "a chunk after the end");
                    file.extend_from_slice(&chunk);
                    assert_eq!(decoder.received(), file.len() as u64);
                }
                Ok(Some(SnapshotFrame::End)) => {
                    assert!(!ended, "two ends");
                    ended = true;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    decoder.finish().map_err(|e| e.to_string())?;
    assert!(ended, "finish() accepted a snapshot that never ended");
    let header = decoder.header().expect("an ended snapshot has a header");
    assert_eq!(header.total_size, file.len() as u64);
    assert_eq!(header.file_crc, crc32fast::hash(&file));
    Ok(file)
}
