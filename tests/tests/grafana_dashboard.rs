//! The Grafana dashboard (`deploy/grafana/harmonylite.json`) and the operator's guide stay in
//! step with the metrics the sidecar exports: every metric a dashboard query uses is one the
//! sidecar records (`host-native/src/ops/metrics.rs`, histograms with their `_bucket`, `_sum`,
//! `_count` series), and the guide's monitoring table names every exported metric.

use std::collections::BTreeSet;
use std::path::Path;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// (every metric name, the histograms among them) recorded in metrics.rs, with the default
/// namespace: the `self.name("…")` arguments of its `counter!`, `gauge!` and `histogram!`
/// calls.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let source =
        std::fs::read_to_string(workspace().join("host-native/src/ops/metrics.rs")).unwrap();
    let (mut all, mut histograms) = (BTreeSet::new(), BTreeSet::new());
    for (kind, rest) in ["counter!", "gauge!", "histogram!"]
        .iter()
        .flat_map(|kind| source.split(kind).skip(1).map(move |rest| (*kind, rest)))
    {
        let rest = rest.trim_start_matches(['(', ' ', '\n']);
        let Some(rest) = rest.strip_prefix("self.name(\"") else {
            continue;
        };
        let name = format!("harmonylite_{}", rest.split('"').next().unwrap());
        if kind == "histogram!" {
            histograms.insert(name.clone());
        }
        all.insert(name);
    }
    (all, histograms)
}

/// Every string value under a key named `expr` or `query`/`definition` (template queries).
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `harmonylite_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("harmonylite_") {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let (exported, histograms) = exported();
    assert!(
        exported.len() >= 15 && histograms.contains("harmonylite_apply_seconds"),
        "metrics.rs was not parsed: {exported:?}"
    );
    let text = std::fs::read_to_string(workspace().join("deploy/grafana/harmonylite.json"))
        .expect("deploy/grafana/harmonylite.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["title"], "harmonylite");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            panel["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{panel}"
        );
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        let grid = &panel["gridPos"];
        for key in ["x", "y", "w", "h"] {
            assert!(grid[key].is_u64(), "{} lacks gridPos.{key}", panel["title"]);
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{} has no query",
                panel["title"]
            );
        }
    }

    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "a query without a harmonylite metric: {expr}"
        );
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| histograms.contains(*base))
                })
                .unwrap_or(&name)
                .to_owned();
            assert!(
                exported.contains(&base),
                "the dashboard queries {name}, which the sidecar does not export (metrics.rs exports {exported:?}):\n{expr}"
            );
            queried.insert(base);
        }
    }
    let unqueried: Vec<_> = exported.difference(&queried).collect();
    assert!(
        unqueried.is_empty(),
        "metrics with no dashboard panel: {unqueried:?}"
    );
}

#[test]
fn the_operator_guide_explains_every_exported_metric() {
    let (exported, _) = exported();
    let guide = std::fs::read_to_string(workspace().join("docs/operator-guide.md")).unwrap();
    let missing: Vec<_> = exported
        .iter()
        .filter(|name| !guide.contains(&format!("| `{name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operator-guide.md's monitoring table lacks {missing:?}"
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(harmonylite_apply_seconds_bucket{instance=~\"$instance\"}[5m])))"),
        ["harmonylite_apply_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "rate(harmonylite_a_sum[5m]) / rate(harmonylite_a_count[5m]) + x_harmonylite_b"
        ),
        ["harmonylite_a_sum", "harmonylite_a_count"]
    );
}
