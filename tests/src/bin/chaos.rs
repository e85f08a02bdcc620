//! Long-mode chaos runs and the backlog measurement.
//!
//! ```text
//! cargo run -p harmonylite-tests --bin chaos -- --seed 1 --duration 30m [--run 120s] [--nodes 3]
//!     [--faults kill9-sidecar,pause-sidecar,kill9-nats,partition,clock-skew,disk-full,
//!               kill9-wasm,partition-wasm,clock-skew-wasm] [--no-wasm]
//! cargo run -p harmonylite-tests --bin chaos -- --backlog 1000000 [--per-transaction 1000]
//! ```
//!
//! The first form repeats chaos runs (seed, seed+1, ...) until the duration is spent and
//! prints figures: runs, operations, faults of each kind, divergences, lost writes, exits no
//! fault explains, panics in a log, messages parked at the end, and the time to converge
//! after the heal (p50/p99). Each run has a wasm replica (the built npm package in node)
//! unless `--no-wasm`. Each run injects every kind of fault in its first faults (see
//! `chaos::faults`). It exits with status 1 if any run failed; each
//! failed run's directory (seed, history, logs, databases) is printed. The second form
//! measures the sidecar's peak memory while a backlog of rows waits for NATS and while it is
//! published. Needs root, `ip` and libfaketime (scripts/lib/tools.sh installs them), and for
//! the wasm replica node and `npm/dist` (`cd npm && npm run build`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use harmonylite_tests::chaos::{self, backlog, faults::FaultKind, RunOptions};

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 90s, 30m, 2h"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("bad duration unit in {text:?}: use s, m or h")),
    }
}

struct Args {
    seed: u64,
    duration: Duration,
    run: Duration,
    nodes: usize,
    backlog: Option<u64>,
    per_transaction: u64,
    kinds: Vec<FaultKind>,
    wasm: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seed: 1,
        duration: Duration::from_secs(30 * 60),
        run: Duration::from_secs(120),
        nodes: 3,
        backlog: None,
        per_transaction: 1000,
        kinds: FaultKind::ALL.to_vec(),
        wasm: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--duration" => args.duration = parse_duration(&value()?)?,
            "--run" => args.run = parse_duration(&value()?)?,
            "--nodes" => args.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--backlog" => {
                args.backlog = Some(value()?.parse().map_err(|e| format!("--backlog: {e}"))?)
            }
            "--per-transaction" => {
                args.per_transaction = value()?
                    .parse()
                    .map_err(|e| format!("--per-transaction: {e}"))?
            }
            "--faults" => {
                args.kinds = value()?
                    .split(',')
                    .map(|n| {
                        FaultKind::from_name(n).ok_or_else(|| {
                            let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                            format!("unknown fault {n:?}: use {}", names.join(", "))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            "--no-wasm" => args.wasm = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(rows) = args.backlog {
        let figures = backlog::measure(rows, args.per_transaction);
        println!("{figures}");
        return ExitCode::SUCCESS;
    }
    // Build the sidecar, and find node and the npm package, before the clock starts.
    harmonylite_tests::chaos::cluster::chaos_sidecar_binary();
    if args.wasm {
        chaos::wasm::node_binary();
        chaos::wasm::package_entry();
    }
    let kinds: Vec<FaultKind> = args
        .kinds
        .iter()
        .copied()
        .filter(|k| args.wasm || !k.is_wasm())
        .collect();
    if kinds.is_empty() {
        eprintln!("chaos: no fault kinds left to inject");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let mut seed = args.seed;
    let mut runs = 0u64;
    let mut transactions = 0u64;
    let mut row_writes = 0u64;
    let mut failed_tx = 0u64;
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut divergences = 0usize;
    let mut lost = 0usize;
    let mut duplicates = 0usize;
    let mut not_converged = 0u64;
    let mut exits = 0usize;
    let mut unexpected_exits = 0usize;
    let mut panics = 0usize;
    let mut parked_findings = 0usize;
    let mut failed_runs = 0u64;
    let mut resent = 0u64;
    let mut parked = 0i64;
    let mut converge = Vec::new();
    let mut kept = Vec::new();
    let mut wasm = chaos::WasmFigures::default();
    while started.elapsed() < args.duration {
        let mut options = RunOptions::new(seed);
        options.nodes = args.nodes;
        options.chaos = args.run;
        options.kinds = kinds.clone();
        options.wasm = args.wasm;
        let report = chaos::run(&options);
        if let Some(w) = &report.wasm {
            wasm.incarnations += w.incarnations;
            wasm.transactions += w.transactions;
            wasm.uncertain += w.uncertain;
            wasm.exits.extend(w.exits.iter().cloned());
        }
        runs += 1;
        transactions += report.transactions;
        row_writes += report.row_writes;
        failed_tx += report.failed_transactions;
        for (kind, n) in &report.faults {
            *faults.entry(*kind).or_default() += n;
        }
        divergences += report.verdict.divergences.len();
        lost += report.verdict.lost_writes.len();
        duplicates += report.verdict.duplicates.len();
        exits += report.sidecar_exits.len();
        unexpected_exits += report.incidents.unexpected_exits.len();
        panics += report.incidents.panics.len();
        parked_findings += report.incidents.parked.len();
        resent += report.resent_parts;
        parked += report.parked;
        match report.converge {
            Some(d) => converge.push(d),
            None => not_converged += 1,
        }
        println!(
            "run {runs} seed {seed}: {} transactions, {} faults, converged {}, {}",
            report.transactions,
            report.faults.values().sum::<u64>(),
            report
                .converge
                .map(|d| format!("in {:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "NEVER".into()),
            if report.passed() { "ok" } else { "FAILED" }
        );
        for exit in report
            .sidecar_exits
            .iter()
            .chain(&report.nats_exits)
            .chain(report.wasm.iter().flat_map(|w| &w.exits))
        {
            println!("  {exit}");
        }
        if !report.passed() {
            failed_runs += 1;
            print!("{}", report.failures());
            kept.extend(report.kept.clone());
        }
        seed += 1;
    }
    converge.sort();
    println!(
        "\nchaos figures ({:.1} min, {} nodes{} per run, {} s of faults per run)",
        started.elapsed().as_secs_f64() / 60.0,
        args.nodes,
        if args.wasm { " + a wasm replica" } else { "" },
        args.run.as_secs()
    );
    println!(
        "  runs:                  {runs} (seeds {}..={})",
        args.seed,
        seed - 1
    );
    println!("  transactions:          {transactions} acknowledged ({row_writes} row writes), {failed_tx} failed or uncertain");
    if args.wasm {
        println!(
            "  wasm replica:          {} transactions acknowledged, {} uncertain (killed before JetStream acked, or COMMIT failed), {} node processes, {} exits",
            wasm.transactions,
            wasm.uncertain,
            wasm.incarnations,
            wasm.exits.len()
        );
    }
    for kind in FaultKind::ALL
        .into_iter()
        .filter(|k| args.wasm || !k.is_wasm())
    {
        println!(
            "  faults {:<15} {}",
            format!("{}:", kind.name()),
            faults.get(&kind).unwrap_or(&0)
        );
    }
    println!("  sidecar exits:         {exits} (restarted; each a failure)");
    println!("  unexplained exits:     {unexpected_exits} (any process; a full disk explains a nats-server's)");
    println!("  panics in logs:        {panics}");
    println!("  divergences:           {divergences}");
    println!("  lost writes:           {lost}");
    println!(
        "  duplicate writes:      {duplicates} ({resent} parts re-sent after the duplicate window)"
    );
    println!("  parked at end:         {parked} ({parked_findings} replicas)");
    println!("  failed runs:           {failed_runs}");
    println!("  not converged:         {not_converged}");
    println!(
        "  converge after heal:   p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        percentile(&converge, 50.0).as_secs_f64(),
        percentile(&converge, 99.0).as_secs_f64(),
        converge.last().copied().unwrap_or_default().as_secs_f64()
    );
    for dir in &kept {
        println!("  kept: {}", dir.display());
    }
    if failed_runs == 0 && divergences + lost + duplicates == 0 && not_converged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
