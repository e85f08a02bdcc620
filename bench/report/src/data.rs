//! The suites' JSON output (`bench/out/*.json`), loaded into one list of figures.
//!
//! Each suite file is `{"suite": ..., "figures": [{"metric", "value", "unit", "peer",
//! "runs", "min", "median", "max"}], ...}`, a figure with a target adding `"target":
//! {"at_most" | "at_least": n}` and the suite's `"verdict": "MET" | "MISSED"`; `meta.json`
//! (written by `scripts/bench`) holds the machine, the date, the load averages and the exact
//! commands.
//!
//! `catch-up.json` (`tests/benches/catch_up.rs`) has no `"figures"` array: it is one run's
//! named fields (`rows`, `snapshot_bytes`, `catch_up_seconds`, `rows_per_second`,
//! `app_baseline_ms`, `app_during_ms`, `p99_ratio`, ...) and a `"targets"` list of `{"name",
//! "target": "<= 2.0x", "value", "verdict"}`; [`catch_up_figures`] turns it into figures (one
//! run each) so it is kept in `bench/results.json` like every other suite.

use std::path::Path;

use serde_json::Value;

/// One figure: the median of `runs` runs, with min and max.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The suite file it came from (`capture`, `replication-3`, ...).
    pub suite: String,
    /// The metric's name inside its suite.
    pub metric: String,
    /// Unit (`rows/s`, `ms`, `x` for a ratio, ...).
    pub unit: String,
    /// Who the figure is about (`harmonylite`, `dqlite`, `harmonylite vs sqlite`, ...).
    pub peer: String,
    /// How many runs it is made of.
    pub runs: u64,
    /// Smallest run.
    pub min: f64,
    /// Median run (also the figure's value).
    pub median: f64,
    /// Largest run.
    pub max: f64,
    /// The target the suite judged this figure against, and its verdict, when it has one.
    pub target: Option<Verdict>,
}

/// A target a suite set for one of its figures and what the suite concluded on the median
/// (`"target": {"at_most": v} | {"at_least": v}, "verdict": "MET" | "MISSED"` in its JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// `true`: the median must be at most `bound`; `false`: at least.
    pub at_most: bool,
    /// The target's value, in the figure's unit.
    pub bound: f64,
    /// What the suite concluded: met or missed.
    pub met: bool,
}

impl Verdict {
    /// Reads `"target"` and `"verdict"` of one figure; `None` without a target. A verdict
    /// that contradicts the median and the target is refused (the page prints the suite's
    /// verdict, so it must be the one the figures give).
    fn parse(v: &Value, median: f64, file: &Path) -> Result<Option<Verdict>, String> {
        let Some(target) = v.get("target") else {
            return Ok(None);
        };
        let (at_most, bound) = match (
            target.get("at_most").and_then(Value::as_f64),
            target.get("at_least").and_then(Value::as_f64),
        ) {
            (Some(b), None) => (true, b),
            (None, Some(b)) => (false, b),
            _ => {
                return Err(format!(
                    "{}: a target is neither {{\"at_most\": n}} nor {{\"at_least\": n}}: {v}",
                    file.display()
                ))
            }
        };
        Verdict::checked(at_most, bound, v, median, file).map(Some)
    }

    /// The verdict of `v` (`"verdict": "MET" | "MISSED"`), refused when it contradicts
    /// `median` and the target.
    fn checked(
        at_most: bool,
        bound: f64,
        v: &Value,
        median: f64,
        file: &Path,
    ) -> Result<Verdict, String> {
        let met = match v.get("verdict").and_then(Value::as_str) {
            Some("MET") => true,
            Some("MISSED") => false,
            _ => {
                return Err(format!(
                    "{}: a figure with a target lacks \"verdict\": \"MET\" or \"MISSED\": {v}",
                    file.display()
                ))
            }
        };
        let computed = if at_most {
            median <= bound
        } else {
            median >= bound
        };
        if computed != met {
            return Err(format!(
                "{}: the verdict contradicts the median and the target: {v}",
                file.display()
            ));
        }
        Ok(Verdict {
            at_most,
            bound,
            met,
        })
    }
}

impl Figure {
    /// The name used in `bench/results.json` and BENCHMARKS.md: suite label and metric.
    pub fn full_name(&self) -> String {
        format!("{}: {}", suite_label(&self.suite), self.metric)
    }

    /// The `bench/results.json` record as text, keys in the documented order (`metric`,
    /// `value`, `unit`, `peer`, `runs`, `min`, `median`, `max`).
    pub fn to_json_text(&self) -> String {
        let s = |v: &str| Value::from(v).to_string();
        let n = |v: f64| Value::from(v).to_string();
        let target = match &self.target {
            Some(t) => format!(
                ", \"target\": {{\"{}\": {}}}, \"verdict\": {}",
                if t.at_most { "at_most" } else { "at_least" },
                n(t.bound),
                s(if t.met { "MET" } else { "MISSED" })
            ),
            None => String::new(),
        };
        format!(
            "{{\"metric\": {}, \"value\": {}, \"unit\": {}, \"peer\": {}, \"runs\": {}, \"min\": {}, \"median\": {}, \"max\": {}{target}}}",
            s(&self.full_name()),
            n(self.median),
            s(&self.unit),
            s(&self.peer),
            self.runs,
            n(self.min),
            n(self.median),
            n(self.max)
        )
    }

    /// The `bench/results.json` record as a JSON value (what the text must parse to).
    #[cfg(test)]
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "metric": self.full_name(),
            "value": self.median,
            "unit": self.unit,
            "peer": self.peer,
            "runs": self.runs,
            "min": self.min,
            "median": self.median,
            "max": self.max,
        });
        if let Some(t) = &self.target {
            let key = if t.at_most { "at_most" } else { "at_least" };
            v["target"] = serde_json::json!({ key: t.bound });
            v["verdict"] = (if t.met { "MET" } else { "MISSED" }).into();
        }
        v
    }
}

/// A human label for a suite file name.
pub fn suite_label(suite: &str) -> String {
    match suite {
        "capture" => "native capture".into(),
        "column-merge" => "column-level merge".into(),
        "peers" => "wasm peers".into(),
        "npm" => "wasm replica".into(),
        "snapshot" => "snapshot".into(),
        "s3-snapshot" => "snapshot, S3 store on moto".into(),
        "catch-up" => "catch-up in place".into(),
        other => match (
            other.strip_prefix("replication-"),
            other.strip_prefix("rowsize-"),
        ) {
            (Some(n), _) => format!("replication, {n} nodes"),
            (_, Some(bytes)) => format!("replication, 3 nodes, {bytes}-byte rows"),
            _ => other.into(),
        },
    }
}

/// One suite file.
pub struct Suite {
    /// File stem.
    pub name: String,
    /// The whole document (for fields besides the figures).
    pub doc: Value,
}

/// Everything one `scripts/bench` run produced.
pub struct Data {
    /// `meta.json`.
    pub meta: Value,
    /// Suite files, in a fixed order.
    pub suites: Vec<Suite>,
    /// Every figure of every suite.
    pub figures: Vec<Figure>,
}

/// The suite files read, in report order.
pub const SUITES: [&str; 12] = [
    "capture",
    "column-merge",
    "peers",
    "npm",
    "replication-3",
    "rowsize-1024",
    "rowsize-8192",
    "replication-5",
    "replication-7",
    "snapshot",
    "s3-snapshot",
    "catch-up",
];

fn number(v: &Value, key: &str, file: &Path) -> Result<f64, String> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{}: a figure lacks the number {key:?}: {v}", file.display()))
}

fn text(v: &Value, key: &str, file: &Path) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{}: a figure lacks the string {key:?}: {v}", file.display()))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

/// The metric names of `catch-up.json`'s fields, as kept in `bench/results.json`.
pub mod catch_up {
    /// `rows`.
    pub const ROWS: &str = "row versions merged";
    /// `snapshot_bytes`.
    pub const SNAPSHOT: &str = "snapshot size";
    /// `catch_up_seconds`.
    pub const SECONDS: &str = "time to merge every row";
    /// `rows_per_second`.
    pub const RATE: &str = "merge rate";
    /// `rows_per_step`.
    pub const STEP: &str = "rows per merge step";
    /// `busy_retries`.
    pub const BUSY: &str = "busy retries";
    /// `p99_ratio`, the name of its entry in `targets`.
    pub const RATIO: &str = "app write p99 during catch-up / without";
    /// `app_baseline_ms` and `app_during_ms`, as `"{prefix} {without|during} catch-up"` with
    /// `writes`, `p50`, `p99`, `max`.
    pub const APP: &str = "app writes";
    /// The two sides of the application's latency: the JSON key and the metric's words.
    pub const SIDES: [(&str, &str); 2] = [
        ("app_baseline_ms", "without catch-up"),
        ("app_during_ms", "during catch-up"),
    ];
    /// The application's figures: the JSON key, the metric's words and the unit.
    pub const APP_FIGURES: [(&str, &str, &str); 4] = [
        ("writes", "count", "writes"),
        ("p50", "latency p50", "ms"),
        ("p99", "latency p99", "ms"),
        ("max", "latency max", "ms"),
    ];

    /// The metric of one application figure: `app writes during catch-up: latency p99`.
    pub fn app_metric(side: &str, what: &str) -> String {
        format!("{APP} {side}: {what}")
    }
}

/// The figures of `column-merge.json` (`core/benches/column_merge.rs`), named
/// `"<workload>, <mode> merge: <what>"` for capture and `"apply <workload> from <n>-row
/// frames, <mode> merge[: rate ratio to row merge]"` for apply.
pub mod column_merge {
    /// The suite file's stem.
    pub const SUITE: &str = "column-merge";
    /// The capture workloads, in the bench's order.
    pub const WORKLOADS: [&str; 4] = [
        "INSERT",
        "UPDATE 1 of 8 columns",
        "UPDATE n = n - 1",
        "DELETE",
    ];
    /// The workload whose column / row capture time ratio the bench judges.
    pub const TARGET_WORKLOAD: &str = "UPDATE 1 of 8 columns";
    /// The apply workloads.
    pub const APPLY_WORKLOADS: [&str; 2] = ["INSERT", "UPDATE 1 of 8 columns"];
    /// The capture time ratio, column / row (`what` of [`capture`]).
    pub const CAPTURE_RATIO: &str = "capture time ratio to row merge";
    /// The capture + drain time ratio, column / row.
    pub const DRAIN_RATIO: &str = "capture + drain time ratio to row merge";
    /// Bytes the drain published, per row.
    pub const BYTES: &str = "bytes published per row";

    /// A capture figure: `UPDATE 1 of 8 columns, column merge: capture + drain`.
    pub fn capture(workload: &str, mode: &str, what: &str) -> String {
        format!("{workload}, {mode} merge: {what}")
    }
}

/// The hops of commit -> visible that `tests/benches/replication.rs` figures from the
/// sidecars' `harmonylite_hop_seconds{hop}` histograms, as `"  hop <name> p50|p99"` (ms).
pub mod hops {
    /// Each hop in path order: its label in the metric, how the page names it, where it is
    /// measured.
    pub const HOPS: [(&str, &str, &str); 5] = [
        (
            "commit_to_notice",
            "commit → notice",
            "writer: the app's commit to the sidecar noticing it",
        ),
        (
            "notice_to_captured",
            "notice → captured",
            "writer: to the drain's commit into the outbox",
        ),
        (
            "captured_to_acked",
            "captured → acked",
            "writer: to JetStream's publish ack",
        ),
        (
            "stored_to_delivered",
            "stored → delivered",
            "receiver: JetStream's stored timestamp to delivery",
        ),
        (
            "delivered_to_applied",
            "delivered → applied",
            "receiver: to the apply's commit",
        ),
    ];
    /// The quantiles figured for every hop.
    pub const QUANTILES: [&str; 2] = ["p50", "p99"];

    /// The metric of one hop's quantile (without the replication suite's indent).
    pub fn metric(hop: &str, quantile: &str) -> String {
        format!("hop {hop} {quantile}")
    }

    /// The end-to-end figure the hops split.
    pub fn end_to_end(quantile: &str) -> String {
        format!("commit -> visible latency {quantile}")
    }
}

/// A target written as text (`"<= 2.0x"`, `">= 150000 rows/s"`): `(at_most, bound, unit)`.
fn text_target(t: &str) -> Option<(bool, f64, String)> {
    let t = t.trim();
    let (at_most, rest) = if let Some(r) = t.strip_prefix("<=") {
        (true, r)
    } else if let Some(r) = t.strip_prefix(">=") {
        (false, r)
    } else {
        return None;
    };
    let rest = rest.trim();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))
        .unwrap_or(rest.len());
    let bound = rest[..end].parse().ok()?;
    Some((at_most, bound, rest[end..].trim().to_string()))
}

/// The figures of `catch-up.json` (one run: min = median = max); its targets become the
/// verdicts of the figures they name, or figures of their own.
pub fn catch_up_figures(doc: &Value, file: &Path) -> Result<Vec<Figure>, String> {
    let one = |metric: &str, unit: &str, value: f64| Figure {
        suite: "catch-up".into(),
        metric: metric.into(),
        unit: unit.into(),
        peer: "harmonylite".into(),
        runs: 1,
        min: value,
        median: value,
        max: value,
        target: None,
    };
    let mut figures = Vec::new();
    for (key, metric, unit) in [
        ("rows", catch_up::ROWS, "rows"),
        ("snapshot_bytes", catch_up::SNAPSHOT, "bytes"),
        ("catch_up_seconds", catch_up::SECONDS, "s"),
        ("rows_per_second", catch_up::RATE, "rows/s"),
        ("rows_per_step", catch_up::STEP, "rows"),
        ("busy_retries", catch_up::BUSY, "count"),
    ] {
        figures.push(one(metric, unit, number(doc, key, file)?));
    }
    for (key, side) in catch_up::SIDES {
        let app = doc
            .get(key)
            .ok_or_else(|| format!("{}: no {key:?}", file.display()))?;
        for (field, what, unit) in catch_up::APP_FIGURES {
            figures.push(one(
                &catch_up::app_metric(side, what),
                unit,
                number(app, field, file)?,
            ));
        }
    }
    let mut ratio = one(catch_up::RATIO, "x", number(doc, "p99_ratio", file)?);
    ratio.peer = "during vs without catch-up".into();
    figures.push(ratio);
    let targets = doc
        .get("targets")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no \"targets\" array", file.display()))?;
    for t in targets {
        let name = text(t, "name", file)?;
        let value = number(t, "value", file)?;
        let target = text(t, "target", file)?;
        let (at_most, bound, unit) = text_target(&target).ok_or_else(|| {
            format!(
                "{}: a target is neither \"<= n\" nor \">= n\": {t}",
                file.display()
            )
        })?;
        let verdict = Verdict::checked(at_most, bound, t, value, file)?;
        match figures.iter_mut().find(|f| f.metric == name) {
            Some(f) if f.median == value => f.target = Some(verdict),
            Some(f) => {
                return Err(format!(
                    "{}: the target {name:?} judges {value}, the figure is {}",
                    file.display(),
                    f.median
                ))
            }
            None => {
                let mut f = one(&name, &unit, value);
                f.target = Some(verdict);
                figures.push(f);
            }
        }
    }
    Ok(figures)
}

impl Data {
    /// Reads `dir/meta.json` (required) and every suite file present.
    pub fn load(dir: &Path) -> Result<Data, String> {
        let meta = read_json(&dir.join("meta.json"))?;
        let mut suites = Vec::new();
        let mut figures = Vec::new();
        for name in SUITES {
            let path = dir.join(format!("{name}.json"));
            if !path.is_file() {
                continue;
            }
            let doc = read_json(&path)?;
            if name == "catch-up" {
                figures.extend(catch_up_figures(&doc, &path)?);
                suites.push(Suite {
                    name: name.to_string(),
                    doc,
                });
                continue;
            }
            let list = doc
                .get("figures")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{}: no \"figures\" array", path.display()))?;
            for f in list {
                let median = number(f, "median", &path)?;
                figures.push(Figure {
                    suite: name.to_string(),
                    metric: text(f, "metric", &path)?,
                    unit: text(f, "unit", &path)?,
                    peer: text(f, "peer", &path)?,
                    runs: number(f, "runs", &path)? as u64,
                    min: number(f, "min", &path)?,
                    median,
                    max: number(f, "max", &path)?,
                    target: Verdict::parse(f, median, &path)?,
                });
            }
            suites.push(Suite {
                name: name.to_string(),
                doc,
            });
        }
        Ok(Data {
            meta,
            suites,
            figures,
        })
    }

    /// The suite file `name`, if it was produced.
    pub fn suite(&self, name: &str) -> Option<&Suite> {
        self.suites.iter().find(|s| s.name == name)
    }

    /// Figures of one suite.
    pub fn of(&self, suite: &str) -> impl Iterator<Item = &Figure> {
        let suite = suite.to_string();
        self.figures.iter().filter(move |f| f.suite == suite)
    }

    /// The first figure of `suite` whose metric starts with `prefix` and ends with `suffix`
    /// and whose peer is `peer`.
    pub fn find(&self, suite: &str, prefix: &str, suffix: &str, peer: &str) -> Option<&Figure> {
        self.of(suite)
            .find(|f| f.metric.starts_with(prefix) && f.metric.ends_with(suffix) && f.peer == peer)
    }

    /// The figure of `suite` whose metric, leading and trailing blanks aside, is `metric`
    /// (the replication suite indents the lines that belong to the one above).
    pub fn named(&self, suite: &str, metric: &str) -> Option<&Figure> {
        self.of(suite).find(|f| f.metric.trim() == metric)
    }

    /// Where a suite's figures come from when not from the run `meta.json` describes
    /// (`"separate_runs": {"<suite>": "<text>"}` in `meta.json`, written by hand when one
    /// suite is measured again on its own).
    pub fn separate_run(&self, suite: &str) -> Option<String> {
        self.meta
            .get("separate_runs")
            .and_then(|r| r.get(suite))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// A string field of `meta.json`, or `"?"`.
    pub fn meta_str(&self, key: &str) -> String {
        match self.meta.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "?".into(),
            Some(other) => other.to_string(),
        }
    }
}
