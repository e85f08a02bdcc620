//! `harmonylite-bench-report`: turns what `scripts/bench` collected in `bench/out/` (one JSON
//! file per suite plus `meta.json`) into `bench/results.json`, the SVG charts and
//! `BENCHMARKS.md`. It measures nothing itself.
//!
//! ```text
//! cargo run -p harmonylite-bench-report -- --input bench/out --results bench/results.json \
//!     --charts bench/charts --markdown BENCHMARKS.md
//! ```

mod charts;
mod data;
mod markdown;
mod plots;

use std::path::PathBuf;
use std::process::ExitCode;

fn arg(args: &[String], flag: &str) -> Result<PathBuf, String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .ok_or_else(|| format!("missing {flag} <path>"))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let input = arg(&args, "--input")?;
    let results = arg(&args, "--results")?;
    let charts_dir = arg(&args, "--charts")?;
    let markdown_path = arg(&args, "--markdown")?;

    let data = data::Data::load(&input)?;
    if data.figures.is_empty() {
        return Err(format!("no figures in {}", input.display()));
    }
    let charts = plots::draw_all(&data, &charts_dir)?;

    let records: Vec<String> = data.figures.iter().map(|f| f.to_json_text()).collect();
    std::fs::write(&results, format!("[\n  {}\n]\n", records.join(",\n  ")))
        .map_err(|e| format!("writing {}: {e}", results.display()))?;

    // Chart links are relative to the markdown file.
    let base = markdown_path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let rel = charts_dir
        .strip_prefix(if base.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            &base
        })
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|_| charts_dir.clone());
    let text = markdown::render(&data, &charts, &rel.display().to_string());
    std::fs::write(&markdown_path, text)
        .map_err(|e| format!("writing {}: {e}", markdown_path.display()))?;
    println!(
        "wrote {} ({} figures), {} charts in {}, {}",
        results.display(),
        records.len(),
        charts.len(),
        charts_dir.display(),
        markdown_path.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harmonylite-bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `meta.json` and one replication suite in, every output out, consistent.
    #[test]
    fn report_from_suite_files() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("out");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(
            input.join("meta.json"),
            r#"{"mode": "quick", "load_start": "1.5 1.0 0.5", "commands": ["scripts/bench --quick"], "notes": ["dqlite missing: E: no package"]}"#,
        )
        .unwrap();
        std::fs::write(
            input.join("replication-3.json"),
            r#"{"suite": "replication", "figures": [
                {"metric": "commit -> visible latency p50", "value": 2.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 1.5, "median": 2.0, "max": 3.0},
                {"metric": "converged throughput, 3 writers, 100-row tx", "value": 30000.0, "unit": "rows/s", "peer": "harmonylite", "runs": 5, "min": 25000.0, "median": 30000.0, "max": 31000.0}
            ], "histograms": {"harmonylite commit -> visible, 3 nodes (ms)": [1.0, 2.0, 2.5, 9.0]}}"#,
        )
        .unwrap();
        let results = dir.path().join("results.json");
        let charts = dir.path().join("charts");
        let md = dir.path().join("BENCHMARKS.md");
        let data = data::Data::load(&input).unwrap();
        let drawn = plots::draw_all(&data, &charts).unwrap();
        assert!(drawn.iter().any(|c| c.file == "latency-histogram.svg"));
        assert!(charts.join("latency-histogram.svg").is_file());
        let records: Vec<serde_json::Value> = data.figures.iter().map(|f| f.to_json()).collect();
        for (f, r) in data.figures.iter().zip(&records) {
            let parsed: serde_json::Value = serde_json::from_str(&f.to_json_text()).unwrap();
            assert_eq!(&parsed, r, "the text record and the JSON value agree");
        }
        std::fs::write(&results, serde_json::to_string(&records).unwrap()).unwrap();
        let text = markdown::render(&data, &drawn, "charts");
        std::fs::write(&md, &text).unwrap();

        assert_eq!(records.len(), 2);
        let keys: Vec<&String> = records[0].as_object().unwrap().keys().collect();
        for key in [
            "metric", "value", "unit", "peer", "runs", "min", "median", "max",
        ] {
            assert!(keys.iter().any(|k| *k == key), "results lack {key}");
        }
        assert_eq!(
            records[0]["metric"],
            "replication, 3 nodes: commit -> visible latency p50"
        );
        assert!(text.contains("**Quick run**"));
        assert!(text.contains("load average 1.5 1.0 0.5"));
        assert!(text.contains("dqlite missing: E: no package"));
        assert!(text.contains("2.00 (1.50–3.00)"));
        assert!(text.contains("30,000 (25,000–31,000)"));
        assert!(text.contains("](charts/latency-histogram.svg)"));
    }

    /// A suite's target and verdict are read, kept in bench/results.json, and a verdict that
    /// contradicts its figure is refused.
    #[test]
    fn verdicts_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.json"), r#"{"mode": "full"}"#).unwrap();
        let capture = |verdict: &str| {
            format!(
                r#"{{"suite": "capture", "figures": [
                    {{"metric": "insert, autocommit (20000 rows): ratio", "value": 1.49, "unit": "x", "peer": "harmonylite vs sqlite", "runs": 5, "min": 1.35, "median": 1.49, "max": 1.66, "target": {{"at_most": 1.05}}, "verdict": "{verdict}"}}
                ]}}"#
            )
        };
        std::fs::write(dir.path().join("capture.json"), capture("MISSED")).unwrap();
        let data = data::Data::load(dir.path()).unwrap();
        let f = &data.figures[0];
        assert_eq!(
            f.target,
            Some(data::Verdict {
                at_most: true,
                bound: 1.05,
                met: false
            })
        );
        let parsed: serde_json::Value = serde_json::from_str(&f.to_json_text()).unwrap();
        assert_eq!(parsed, f.to_json());
        assert_eq!(parsed["target"]["at_most"], 1.05);
        assert_eq!(parsed["verdict"], "MISSED");

        std::fs::write(dir.path().join("capture.json"), capture("MET")).unwrap();
        let err = data::Data::load(dir.path()).err().unwrap();
        assert!(err.contains("contradicts"), "{err}");
    }

    /// `catch-up.json` (no "figures" array) becomes one-run figures in bench/results.json,
    /// its target the verdict of its ratio; a verdict that contradicts the value is refused.
    #[test]
    fn catch_up_is_read_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.json"), r#"{"mode": "full"}"#).unwrap();
        let doc = |verdict: &str| {
            format!(
                r#"{{"suite": "catch-up", "quick": false, "rows": 1000000, "snapshot_bytes": 495321088,
                    "catch_up_seconds": 19.74, "rows_per_second": 50654.6, "rows_per_step": 100, "busy_retries": 0,
                    "app_baseline_ms": {{"writes": 6528, "p50": 0.19, "p99": 0.48, "max": 3.36}},
                    "app_during_ms": {{"writes": 7168, "p50": 0.28, "p99": 2.87, "max": 56.2}},
                    "p99_ratio": 5.98,
                    "targets": [{{"name": "app write p99 during catch-up / without", "target": "<= 2.0x", "value": 5.98, "verdict": "{verdict}"}}]}}"#
            )
        };
        std::fs::write(dir.path().join("catch-up.json"), doc("MISSED")).unwrap();
        let data = data::Data::load(dir.path()).unwrap();
        assert_eq!(data.figures.len(), 15);
        assert!(data.figures.iter().all(|f| f.runs == 1 && f.min == f.max));
        let records: Vec<serde_json::Value> = data
            .figures
            .iter()
            .map(|f| serde_json::from_str(&f.to_json_text()).unwrap())
            .collect();
        let find = |m: &str| records.iter().find(|r| r["metric"] == m).unwrap();
        assert_eq!(
            find("catch-up in place: row versions merged")["value"],
            1000000.0
        );
        assert_eq!(find("catch-up in place: snapshot size")["unit"], "bytes");
        assert_eq!(
            find("catch-up in place: app writes during catch-up: latency p99")["value"],
            2.87
        );
        let ratio = find("catch-up in place: app write p99 during catch-up / without");
        assert_eq!(ratio["value"], 5.98);
        assert_eq!(ratio["unit"], "x");
        assert_eq!(ratio["target"]["at_most"], 2.0);
        assert_eq!(ratio["verdict"], "MISSED");
        assert_eq!(
            records
                .iter()
                .filter(|r| r.get("verdict").is_some())
                .count(),
            1
        );

        std::fs::write(dir.path().join("catch-up.json"), doc("MET")).unwrap();
        let err = data::Data::load(dir.path()).err().unwrap();
        assert!(err.contains("contradicts"), "{err}");
    }

    /// `column-merge.json` as `core/benches/column_merge.rs --json` writes it, and a
    /// replication suite with hop figures: read, kept in bench/results.json, drawn and shown.
    #[test]
    fn column_merge_and_hops_from_suite_files() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("out");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join("meta.json"), r#"{"mode": "quick"}"#).unwrap();
        std::fs::write(
            input.join("column-merge.json"),
            r#"{"suite": "column-merge", "quick": true, "rows": 2000, "runs": 5, "tx_rows": 1000, "sqlite": "3.46.0", "figures": [
                {"metric": "UPDATE 1 of 8 columns, row merge: capture", "value": 9.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 8.0, "median": 9.0, "max": 12.0, "section": "capture"},
                {"metric": "UPDATE 1 of 8 columns, row merge: bytes published per row", "value": 230.0, "unit": "bytes", "peer": "harmonylite", "runs": 5, "min": 230.0, "median": 230.0, "max": 230.0, "section": "capture"},
                {"metric": "UPDATE 1 of 8 columns, column merge: capture", "value": 11.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 10.0, "median": 11.0, "max": 13.0, "section": "capture"},
                {"metric": "UPDATE 1 of 8 columns, column merge: bytes published per row", "value": 60.0, "unit": "bytes", "peer": "harmonylite", "runs": 5, "min": 60.0, "median": 60.0, "max": 60.0, "section": "capture"},
                {"metric": "UPDATE 1 of 8 columns, column merge: capture time ratio to row merge", "value": 1.25, "unit": "x", "peer": "column vs row merge", "runs": 5, "min": 1.1, "median": 1.25, "max": 1.4, "section": "capture", "target": {"at_most": 1.2}, "verdict": "MISSED"},
                {"metric": "apply INSERT from 1000-row frames, row merge", "value": 150000.0, "unit": "rows/s", "peer": "harmonylite", "runs": 5, "min": 140000.0, "median": 150000.0, "max": 160000.0, "section": "apply"},
                {"metric": "apply INSERT from 1000-row frames, column merge", "value": 90000.0, "unit": "rows/s", "peer": "harmonylite", "runs": 5, "min": 80000.0, "median": 90000.0, "max": 95000.0, "section": "apply"},
                {"metric": "apply INSERT from 1000-row frames, column merge: rate ratio to row merge", "value": 0.6, "unit": "x", "peer": "column vs row merge", "runs": 5, "min": 0.55, "median": 0.6, "max": 0.65, "section": "apply"}
            ]}"#,
        )
        .unwrap();
        std::fs::write(
            input.join("replication-3.json"),
            r#"{"suite": "replication", "figures": [
                {"metric": "commit -> visible latency p50", "value": 3.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 2.5, "median": 3.0, "max": 3.5},
                {"metric": "commit -> visible latency p99", "value": 9.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 8.0, "median": 9.0, "max": 11.0},
                {"metric": "Python sqlite3 app: commit -> visible latency p50", "value": 3.25, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 3.0, "median": 3.25, "max": 3.5},
                {"metric": "  hop commit_to_notice p50", "value": 0.4, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 0.3, "median": 0.4, "max": 0.5},
                {"metric": "  hop commit_to_notice p99", "value": 1.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 0.9, "median": 1.0, "max": 1.2},
                {"metric": "  hop stored_to_delivered p50", "value": 1.5, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 1.2, "median": 1.5, "max": 1.9},
                {"metric": "  hop stored_to_delivered p99", "value": 6.0, "unit": "ms", "peer": "harmonylite", "runs": 5, "min": 5.0, "median": 6.0, "max": 7.0}
            ]}"#,
        )
        .unwrap();
        let data = data::Data::load(&input).unwrap();
        assert_eq!(
            data.suites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["column-merge", "replication-3"]
        );
        let charts = dir.path().join("charts");
        let drawn = plots::draw_all(&data, &charts).unwrap();
        assert!(drawn.iter().any(|c| c.file == "replication-hops.svg"));
        let svg = std::fs::read_to_string(charts.join("replication-hops.svg")).unwrap();
        assert!(svg.contains("stored → delivered") && svg.contains("3 nodes, p99"));
        let records: Vec<serde_json::Value> = data
            .figures
            .iter()
            .map(|f| serde_json::from_str(&f.to_json_text()).unwrap())
            .collect();
        let ratio = records
            .iter()
            .find(|r| {
                r["metric"]
                    == "column-level merge: UPDATE 1 of 8 columns, column merge: capture time ratio to row merge"
            })
            .unwrap();
        assert_eq!(ratio["verdict"], "MISSED");
        assert_eq!(ratio["target"]["at_most"], 1.2);
        let text = markdown::render(&data, &drawn, "charts");
        assert!(text.contains("against a target of ≤ 1.20×: **MISSED**."));
        assert!(text.contains("| UPDATE 1 of 8 columns | 1.25 (1.10–1.40) | — | 230 | 60.0 |"));
        assert!(text.contains(
            "| INSERT | 150,000 (140,000–160,000) | 90,000 (80,000–95,000) | 0.600 (0.550–0.650) |"
        ));
        assert!(text.contains("| UPDATE 1 of 8 columns | — | — | — |"));
        assert!(text.contains(
            "| notice → captured | writer: to the drain's commit into the outbox | not measured in this run | not measured in this run |"
        ));
        assert!(text.contains("at p50 **stored → delivered** (1.50 ms of 3.00 ms end to end)"));
        assert!(text.contains("](charts/replication-hops.svg)"));
        assert!(text.contains(
            "| Python `sqlite3` app with its defaults: latency p50 (ms) | 3.25 (3.00–3.50) | — | — |"
        ));
        assert!(text.contains("| latency p50 (ms) | 3.00 (2.50–3.50) | — | — |"));
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(markdown::num(1234567.4), "1,234,567");
        assert_eq!(markdown::num(-2500.0), "-2,500");
        assert_eq!(markdown::num(150.4), "150");
        assert_eq!(markdown::num(12.34), "12.3");
        assert_eq!(markdown::num(1.234), "1.23");
        assert_eq!(markdown::num(0.01234), "0.012");
    }
}
