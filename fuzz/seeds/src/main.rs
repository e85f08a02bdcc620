//! Writes the seed corpora of the fuzz targets: a handful of small valid inputs per target,
//! generated from the real encoders so they follow the formats as they are today.
//!
//! Usage: `harmonylite-fuzz-seeds <corpus dir> <example config>` writes
//! `<corpus dir>/wire/`, `<corpus dir>/snapshot/` and `<corpus dir>/config/`.

use std::path::{Path, PathBuf};

use harmonylite_core::change::{
    Batch, BatchSeq, CellChange, CounterTotals, ObservedTotals, RowChange, StreamSeq, TableSchema,
};
use harmonylite_core::column_merge::Totals;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::frame_bytes;
use harmonylite_core::value::Value;
use harmonylite_core::wire::{encode_batch, encode_frame, Compression, Message, MessageV1};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(corpus), Some(example)) = (args.next(), args.next()) else {
        eprintln!("usage: harmonylite-fuzz-seeds <corpus dir> <example config .toml>");
        std::process::exit(2);
    };
    let corpus = PathBuf::from(corpus);
    let wire = wire_seeds();
    let snapshot = snapshot_seeds();
    let example = std::fs::read(&example).expect("reading the example config");
    let config = config_seeds(example);
    for (target, seeds) in [("wire", wire), ("snapshot", snapshot), ("config", config)] {
        write_all(&corpus.join(target), &seeds);
        println!("{target}: {} seeds", seeds.len());
    }
}

fn write_all(dir: &Path, seeds: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).expect("creating the corpus directory");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("writing a seed");
    }
}

fn node() -> NodeId {
    NodeId::from_u128(0x5eed).expect("non-zero node id")
}

fn sample_batch(rows: usize) -> Batch {
    Batch {
        tables: vec![
            TableSchema {
                name: "notes".into(),
                fingerprint: 0x1234,
                key_columns: vec!["id".into()],
                value_columns: vec!["body".into(), "score".into(), "blob".into()],
            },
            TableSchema {
                name: "t \"quoted\" é".into(),
                fingerprint: 7,
                key_columns: vec!["a".into(), "b".into()],
                value_columns: vec![],
            },
        ],
        rows: (0..rows)
            .map(|i| RowChange {
                table: (i % 2) as u32,
                time: 1000 + i as u64,
                key: if i % 2 == 0 {
                    vec![Value::Integer(i as i64)]
                } else {
                    vec![Value::Text(format!("k{i}")), Value::Null]
                },
                values: match i % 4 {
                    0 => Some(vec![
                        Value::Text("hello hello hello hello".into()),
                        Value::Real(1.5),
                        Value::Blob(vec![0, 1, 2, 255]),
                    ]),
                    2 => None,
                    _ => Some(vec![]),
                },
            })
            .collect(),
        cells: Vec::new(),
    }
}

/// Whole frames as published: empty and small batches, plain and LZ4, single- and multi-part.
fn wire_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rows in [0, 1, 4, 12] {
        for compression in [Compression::None, Compression::Lz4] {
            let frames = encode_batch(
                node(),
                BatchSeq::new(rows as u64 + 1),
                &sample_batch(rows),
                compression,
                1 << 16,
            )
            .expect("encoding a sample batch");
            out.extend(frames);
        }
    }
    // A batch split into several parts (every part is a seed of its own).
    let parts = encode_batch(
        node(),
        BatchSeq::new(99),
        &sample_batch(12),
        Compression::None,
        160,
    )
    .expect("encoding a multi-part batch");
    out.extend(parts.into_iter().take(3));
    // A batch with column-merge changes (wire version 5).
    let mut cells = sample_batch(2);
    cells.cells = vec![
        CellChange {
            table: 0,
            key: vec![Value::Integer(7)],
            deleted: Some(1500),
            time: 1501,
            columns: vec![(0, Value::Text("title".into())), (1, Value::Integer(3))],
            counters: vec![CounterTotals {
                column: 1,
                up: 4,
                down: 9,
            }],
            observed: vec![ObservedTotals {
                column: 1,
                node: NodeId::from_u128(0xfeed).expect("non-zero node id"),
                totals: Totals { up: 2, down: 7 },
            }],
        },
        CellChange {
            table: 0,
            key: vec![Value::Integer(8)],
            deleted: Some(1502),
            time: 1502,
            columns: Vec::new(),
            counters: Vec::new(),
            observed: Vec::new(),
        },
    ];
    for compression in [Compression::None, Compression::Lz4] {
        out.extend(
            encode_batch(node(), BatchSeq::new(77), &cells, compression, 1 << 16)
                .expect("encoding a batch with column changes"),
        );
    }
    // A frame whose body is garbage (valid envelope).
    out.push(encode_frame(&Message::V1(MessageV1 {
        origin: node(),
        batch_seq: BatchSeq::new(5),
        part: 0,
        parts: 1,
        compression: Compression::Lz4,
        body: vec![16, 0, 0, 0, 0x40, 1, 2, 3, 4],
    })));
    out
}

/// Control byte + split points + framed snapshot (see fuzz_targets/snapshot.rs).
fn snapshot_seeds() -> Vec<Vec<u8>> {
    let file: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    for (len, chunk, control, cuts) in [
        (0usize, 16u32, 0u8, &[][..]),
        (1, 16, 1, &[3u16][..]),
        (100, 32, 2, &[10, 60][..]),
        (300, 64, 3, &[56, 64, 200][..]),
        (300, 1000, 0x11, &[57][..]),
    ] {
        let mut seed = vec![control];
        for cut in cuts {
            seed.extend_from_slice(&cut.to_le_bytes());
        }
        seed.extend_from_slice(&frame_bytes(
            &file[..len],
            StreamSeq::new(42),
            node(),
            chunk,
        ));
        out.push(seed);
    }
    out
}

/// The commented example plus a few small configurations.
fn config_seeds(example: Vec<u8>) -> Vec<Vec<u8>> {
    vec![
        example,
        b"db_path = \"/tmp/app.db\"\n".to_vec(),
        b"db_path = \"/tmp/app.db\"\nnode_id = \"a1b2\"\npublish = false\n\n[nats]\nurls = [\"tls://127.0.0.1:4222\"]\nuser_name = \"u\"\nuser_password = \"p\"\nreconnect_wait_seconds = 1\n\n[logging]\nformat = \"json\"\n".to_vec(),
        b"db_path = \"/tmp/app.db\"\n[replication_log]\nshards = 2\nmax_entries = 10\nreplicas = 1\ncompress = false\n[health_check]\nenable = true\nbind = \"127.0.0.1:0\"\npath = \"/h\"\n[prometheus]\nenable = true\nnamespace = \"x_y\"\n".to_vec(),
    ]
}
