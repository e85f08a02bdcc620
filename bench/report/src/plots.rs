//! Which charts the report draws, from which figures.

use std::path::Path;

use crate::charts::{self, Bar, Series};
use crate::data::{hops, Data, Figure};

/// Capture workloads, in the order the native and wasm benches run them.
pub const NATIVE_WORKLOADS: [&str; 6] = [
    "insert, autocommit",
    "insert, 100-row tx",
    "insert, 1000-row tx",
    "update 1 col by pk, autocommit",
    "update 1 col by pk, 1000-row tx",
    "delete by pk, 1000-row tx",
];

/// Peers of the wasm bench, in legend order.
pub const WASM_PEERS: [&str; 6] = [
    "harmonylite",
    "harmonylite+drain",
    "plain (same build)",
    "cr-sqlite",
    "plain (cr-sqlite build)",
    "sqlite-wasm",
];

fn bar(f: Option<&Figure>) -> Bar {
    f.map(|f| (f.median, f.min, f.max))
}

fn scaled(f: Option<&Figure>, by: f64) -> Bar {
    f.map(|f| (f.median * by, f.min * by, f.max * by))
}

/// A drawn chart: file name and what it shows.
pub struct Chart {
    /// File name inside the charts directory.
    pub file: String,
    /// Alt text.
    pub title: String,
}

/// Native capture overhead ratio of a workload (`<name> (<n> rows...): ratio`).
pub fn native_ratio<'a>(data: &'a Data, workload: &str) -> Option<&'a Figure> {
    data.find(
        "capture",
        &format!("{workload} ("),
        ": ratio",
        "harmonylite vs sqlite",
    )
}

/// A wasm-peer figure of a workload (`<name> (<n> rows): <what>`).
pub fn wasm<'a>(data: &'a Data, workload: &str, what: &str, peer: &str) -> Option<&'a Figure> {
    data.find("peers", &format!("{workload} ("), what, peer)
}

/// The node counts whose replication suite measured latency, and whether it has hop
/// figures: `(n, suite, has hops)`.
pub fn hop_runs(data: &Data) -> Vec<(usize, String, bool)> {
    [3, 5, 7]
        .into_iter()
        .map(|n| (n, format!("replication-{n}")))
        .filter(|(_, s)| data.named(s, &hops::end_to_end("p50")).is_some())
        .map(|(n, s)| {
            let has = hops::HOPS.iter().any(|(h, _, _)| {
                hops::QUANTILES
                    .iter()
                    .any(|q| data.named(&s, &hops::metric(h, q)).is_some())
            });
            (n, s, has)
        })
        .collect()
}

/// Draws every chart whose figures exist; returns the charts drawn.
pub fn draw_all(data: &Data, dir: &Path) -> Result<Vec<Chart>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut drawn = Vec::new();
    let mut draw = |file: &str, title: &str, result: Result<(), Box<dyn std::error::Error>>| {
        result.map_err(|e| format!("drawing {file}: {e}"))?;
        drawn.push(Chart {
            file: file.into(),
            title: title.into(),
        });
        Ok::<(), String>(())
    };

    if data.suite("capture").is_some() {
        let cats: Vec<String> = NATIVE_WORKLOADS.iter().map(|s| s.to_string()).collect();
        let series = [Series {
            name: "time with capture / time without (same run)".into(),
            bars: NATIVE_WORKLOADS
                .iter()
                .map(|w| bar(native_ratio(data, w)))
                .collect(),
        }];
        let title = "Native capture overhead (lower is better; 1 = no overhead)";
        draw(
            "capture-native.svg",
            title,
            charts::bars(
                &dir.join("capture-native.svg"),
                title,
                "x",
                &cats,
                &series,
                Some(1.0),
            ),
        )?;
    }

    if data.suite("peers").is_some() {
        let workloads: Vec<&str> = NATIVE_WORKLOADS
            .iter()
            .copied()
            .filter(|w| wasm(data, w, ": rate", "harmonylite").is_some())
            .collect();
        let cats: Vec<String> = workloads.iter().map(|s| s.to_string()).collect();
        let series: Vec<Series> = WASM_PEERS
            .iter()
            .map(|p| Series {
                name: p.to_string(),
                bars: workloads
                    .iter()
                    .map(|w| scaled(wasm(data, w, ": rate", p), 1e-3))
                    .collect(),
            })
            .collect();
        let title = "Writes in node, wasm builds (higher is better)";
        draw(
            "capture-wasm.svg",
            title,
            charts::bars(
                &dir.join("capture-wasm.svg"),
                title,
                "thousand rows/s",
                &cats,
                &series,
                None,
            ),
        )?;
        let ratios = [
            (
                "harmonylite / plain (same build)",
                ": time ratio harmonylite / plain (same build)",
            ),
            (
                "harmonylite+drain / plain (same build)",
                ": time ratio harmonylite+drain / plain (same build)",
            ),
            (
                "cr-sqlite / plain (cr-sqlite build)",
                ": time ratio cr-sqlite / plain (cr-sqlite build)",
            ),
        ];
        let series: Vec<Series> = ratios
            .iter()
            .map(|(name, suffix)| Series {
                name: name.to_string(),
                bars: workloads
                    .iter()
                    .map(|w| {
                        bar(data.of("peers").find(|f| {
                            f.metric.starts_with(&format!("{w} (")) && f.metric.ends_with(suffix)
                        }))
                    })
                    .collect(),
            })
            .collect();
        let title = "Capture overhead in wasm: each replicator vs its own build without it";
        draw(
            "capture-wasm-ratio.svg",
            title,
            charts::bars(
                &dir.join("capture-wasm-ratio.svg"),
                title,
                "x (time ratio, same run; lower is better)",
                &cats,
                &series,
                Some(1.0),
            ),
        )?;
        let sizes: Vec<&str> = ["harmonylite", "cr-sqlite", "sqlite-wasm"].to_vec();
        let series = [("raw", "wasm size, raw"), ("gzip -9", "wasm size, gzip -9")]
            .iter()
            .map(|(name, metric)| Series {
                name: name.to_string(),
                bars: sizes
                    .iter()
                    .map(|p| scaled(data.find("peers", metric, "", p), 1e-6))
                    .collect(),
            })
            .collect::<Vec<_>>();
        let cats: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        let title = "wasm module size (lower is better)";
        draw(
            "wasm-size.svg",
            title,
            charts::bars(
                &dir.join("wasm-size.svg"),
                title,
                "MB",
                &cats,
                &series,
                None,
            ),
        )?;
    }

    if let Some(s) = data.suite("replication-3") {
        let mut series = Vec::new();
        for (key, values) in s
            .doc
            .get("histograms")
            .and_then(|h| h.as_object())
            .into_iter()
            .flatten()
        {
            let samples: Vec<f64> = values
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default();
            if !samples.is_empty() {
                series.push((key.clone(), samples));
            }
        }
        if !series.is_empty() {
            let title = "Latency, 3 nodes on loopback: harmonylite commit -> visible elsewhere; dqlite commit";
            draw(
                "latency-histogram.svg",
                title,
                charts::histogram(&dir.join("latency-histogram.svg"), title, &series),
            )?;
        }
        let rows = [
            (
                "harmonylite: 1 writer, autocommit (converged)",
                data.find(
                    "replication-3",
                    "converged throughput, 1 writer, autocommit",
                    "",
                    "harmonylite",
                ),
            ),
            (
                "dqlite: 1 worker, autocommit (committed)",
                data.find("replication-3", "dqlite: write throughput", "", "dqlite"),
            ),
            (
                "harmonylite: 3 writers, 100-row tx (converged)",
                data.find(
                    "replication-3",
                    "converged throughput, 3 writers",
                    "",
                    "harmonylite",
                ),
            ),
        ];
        let cats: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let series = [Series {
            name: String::new(),
            bars: rows.iter().map(|r| bar(r.1)).collect(),
        }];
        let title = "Replicated writes/s, 3 nodes on loopback (higher is better)";
        draw(
            "replication-throughput.svg",
            title,
            charts::bars(
                &dir.join("replication-throughput.svg"),
                title,
                "rows/s",
                &cats,
                &series,
                None,
            ),
        )?;
    }

    let node_counts: Vec<usize> = [3, 5, 7]
        .into_iter()
        .filter(|n| data.suite(&format!("replication-{n}")).is_some())
        .collect();
    if node_counts.len() > 1 {
        let line = |name: &str, prefix: &str| -> charts::Line {
            (
                name.to_string(),
                node_counts
                    .iter()
                    .filter_map(|n| {
                        data.find(&format!("replication-{n}"), prefix, "", "harmonylite")
                            .map(|f| (*n as f64, f.median, f.min, f.max))
                    })
                    .collect(),
            )
        };
        let title = "Commit -> visible latency by node count";
        draw(
            "scaling-latency.svg",
            title,
            charts::over_nodes(
                &dir.join("scaling-latency.svg"),
                title,
                "ms",
                &[
                    line("p50", "commit -> visible latency p50"),
                    line("p99", "commit -> visible latency p99"),
                ],
            ),
        )?;
        let title = "Converged throughput by node count";
        draw(
            "scaling-throughput.svg",
            title,
            charts::over_nodes(
                &dir.join("scaling-throughput.svg"),
                title,
                "rows/s",
                &[
                    line("every node writes, 100-row tx", "converged throughput, "),
                    line(
                        "1 writer, autocommit",
                        "converged throughput, 1 writer, autocommit",
                    ),
                ],
            ),
        )?;
    }

    let with_hops: Vec<(usize, String, bool)> =
        hop_runs(data).into_iter().filter(|r| r.2).collect();
    if !with_hops.is_empty() {
        let mut cats: Vec<String> = hops::HOPS.iter().map(|h| h.1.to_string()).collect();
        cats.push("end to end: commit → visible".into());
        let mut series = Vec::new();
        for (n, s, _) in &with_hops {
            for q in hops::QUANTILES {
                let mut bars: Vec<Bar> = hops::HOPS
                    .iter()
                    .map(|(h, _, _)| bar(data.named(s, &hops::metric(h, q))))
                    .collect();
                bars.push(bar(data.named(s, &hops::end_to_end(q))));
                series.push(Series {
                    name: format!("{n} nodes, {q}"),
                    bars,
                });
            }
        }
        let title = "Commit -> visible by hop, p50 and p99 (lower is better)";
        draw(
            "replication-hops.svg",
            title,
            charts::bars(
                &dir.join("replication-hops.svg"),
                title,
                "ms (median of the runs; whiskers: min to max)",
                &cats,
                &series,
                None,
            ),
        )?;
    }

    let apply = [
        (
            "native: Store::receive, 1000-row batches",
            data.find(
                "capture",
                "apply new rows, 1000-row batches",
                "",
                "harmonylite",
            ),
        ),
        (
            "wasm replica in node: 1000-row batches",
            data.find("npm", "wasm replica: apply rate", "", "harmonylite"),
        ),
        (
            "returning node catching up (sidecar + nats)",
            data.find(
                "replication-3",
                "catch-up: ",
                "applied by the returning node",
                "harmonylite",
            ),
        ),
    ];
    if apply.iter().any(|a| a.1.is_some()) {
        let cats: Vec<String> = apply.iter().map(|a| a.0.to_string()).collect();
        let series = [Series {
            name: String::new(),
            bars: apply.iter().map(|a| bar(a.1)).collect(),
        }];
        let title = "Apply rate (higher is better)";
        draw(
            "apply.svg",
            title,
            charts::bars(
                &dir.join("apply.svg"),
                title,
                "rows/s",
                &cats,
                &series,
                None,
            ),
        )?;
    }

    if data.suite("snapshot").is_some() {
        let steps: Vec<&Figure> = data.of("snapshot").filter(|f| f.unit == "MiB/s").collect();
        let cats: Vec<String> = steps
            .iter()
            .map(|f| {
                f.metric
                    .trim_start_matches("snapshot ")
                    .trim_end_matches(": throughput")
                    .to_string()
            })
            .collect();
        let series = [Series {
            name: String::new(),
            bars: steps.iter().map(|f| bar(Some(f))).collect(),
        }];
        let title = "Snapshot take and restore vs cp of the same file (higher is better)";
        draw(
            "snapshot.svg",
            title,
            charts::bars(
                &dir.join("snapshot.svg"),
                title,
                "MiB/s",
                &cats,
                &series,
                None,
            ),
        )?;
    }
    Ok(drawn)
}
