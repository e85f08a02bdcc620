//! What the processes of a run did besides replicating: exits nobody asked for, panics in a
//! log, and messages still parked at the end. Each is a failure of the run, named with the
//! process and an excerpt of its log (or of the parked rows).
//!
//! The harness restarts a process that exited on its own (as a supervisor would) so the run
//! goes on, but records the exit ([`ExitRecord`]) when it first sees it, wherever that is: in
//! the run loop, while healing a full disk, in the final heal, or after convergence. An exit is
//! *expected* only when the fault schedule caused it: a nats-server stops when its store's
//! disk is full ([`explain_exit`]). The harness's own `kill -9`s are not exits on their own
//! (it takes the process before killing it), so every other exit is a crash.
//!
//! The functions here are pure, so the verdict is unit-tested on made-up logs and records.

/// Lines of log kept with an exit.
const TAIL_LINES: usize = 25;
/// Lines of log shown after a panic line.
const PANIC_CONTEXT: usize = 6;

/// A process that exited on its own, as first seen by the harness.
#[derive(Debug, Clone)]
pub struct ExitRecord {
    /// Which process: `sidecar 1`, `nats-server 0`, `wasm replica (node 4)`.
    pub process: String,
    /// Its exit status, as the OS reported it.
    pub status: String,
    /// When the harness saw it (ms since the epoch).
    pub at_ms: i64,
    /// The fault that explains the exit, if one does ([`explain_exit`]).
    pub explained_by: Option<String>,
    /// The end of the process's log when the exit was seen.
    pub log_tail: String,
}

/// Which kind of process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// A `harmonylite` sidecar.
    Sidecar,
    /// A nats-server.
    Nats,
    /// The wasm replica's node process.
    Wasm,
}

/// The fault that explains an exit, or `None` for a crash. Only one is expected: a nats-server
/// whose disk is full (the disk-full fault is in place on its node) stops when it cannot write
/// its store, and its log since the disk filled says so. A sidecar or the wasm replica never
/// has a reason to exit on its own under any fault.
pub fn explain_exit(kind: ProcessKind, disk_full: bool, log_since_fault: &str) -> Option<String> {
    if kind != ProcessKind::Nats || !disk_full {
        return None;
    }
    let log = log_since_fault.to_lowercase();
    [
        "no space left on device",
        "jetstream out of resources",
        "can't start jetstream",
        "insufficient storage",
    ]
    .iter()
    .any(|needle| log.contains(needle))
    .then(|| "the disk-full fault on its node (its log names the full disk)".to_string())
}

/// Whether `text` names a full disk in the words SQLite or the OS use: "database or disk is
/// full" (`SQLITE_FULL`) or "No space left on device" (`ENOSPC`). A bare "full" is not enough
/// ("successfully" contains it).
pub fn names_full_disk(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("database or disk is full") || text.contains("no space left on device")
}

/// The last `TAIL_LINES` lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Whether a log line reports a panic: Rust's `panicked at` (the sidecar, and the wasm
/// replica's panic hook), Go's `panic: ` or `fatal error: ` at the start of a line
/// (nats-server), and a wasm trap (`RuntimeError: unreachable`, a panic in wasm without a
/// hook).
pub fn is_panic_line(line: &str) -> bool {
    line.contains("panicked at")
        || line.starts_with("panic: ")
        || line.starts_with("fatal error: ")
        || line.contains("RuntimeError: unreachable")
}

/// Every panic in the log `text` of `process`: the line, its number and the lines after it.
pub fn panics(process: &str, log_name: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| is_panic_line(line))
        .map(|(i, line)| {
            let after = &lines[i + 1..(i + 1 + PANIC_CONTEXT).min(lines.len())];
            let mut out = format!("{process} panicked ({log_name}, line {}):\n  {line}", i + 1);
            for l in after {
                out.push_str("\n  ");
                out.push_str(l);
            }
            out
        })
        .collect()
}

/// Messages still parked on one replica at the end of a run.
#[derive(Debug, Clone)]
pub struct ParkedAt {
    /// The replica (`node 1`, `the wasm replica (node 4)`).
    pub replica: String,
    /// How many, with a few of them (stream sequence, kind, table, reason), or why they could
    /// not be read.
    pub parked: Result<(i64, Vec<String>), String>,
}

/// The findings of this module, each a failure of the run.
#[derive(Debug, Default, Clone)]
pub struct Incidents {
    /// Exits no fault explains, with the log's end.
    pub unexpected_exits: Vec<String>,
    /// Panic lines in any log.
    pub panics: Vec<String>,
    /// Replicas with messages parked at the end (or whose parked messages could not be read).
    pub parked: Vec<String>,
}

impl Incidents {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.unexpected_exits.is_empty() && self.panics.is_empty() && self.parked.is_empty()
    }
}

/// The verdict on a run's processes: `exits` as recorded, `logs` as (process, log name, text),
/// `parked` per replica after convergence.
pub fn assess(
    exits: &[ExitRecord],
    logs: &[(String, String, String)],
    parked: &[ParkedAt],
) -> Incidents {
    let mut found = Incidents::default();
    for exit in exits.iter().filter(|e| e.explained_by.is_none()) {
        found.unexpected_exits.push(format!(
            "{} exited on its own ({}) and no fault explains it; the end of its log then:\n{}",
            exit.process,
            exit.status,
            indent(&exit.log_tail)
        ));
    }
    for (process, log_name, text) in logs {
        found.panics.extend(panics(process, log_name, text));
    }
    for at in parked {
        match &at.parked {
            Ok((0, _)) => {}
            Ok((n, rows)) => found.parked.push(format!(
                "{} still holds {n} parked message(s) at the end:\n{}",
                at.replica,
                indent(&rows.join("\n"))
            )),
            Err(e) => found
                .parked
                .push(format!("cannot read {}'s parked messages: {e}", at.replica)),
        }
    }
    found
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDECAR_LOG: &str = "\
2026-01-01T00:00:01Z  INFO harmonylite: connected to NATS
2026-01-01T00:00:02Z  WARN harmonylite: disconnected from NATS; reconnecting
thread 'tokio-runtime-worker' panicked at host-native/src/driver.rs:123:45:
called `Option::unwrap()` on a `None` value
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
";

    fn exit(process: &str, explained_by: Option<String>) -> ExitRecord {
        ExitRecord {
            process: process.into(),
            status: "exit status: 101".into(),
            at_ms: 0,
            explained_by,
            log_tail: tail(SIDECAR_LOG),
        }
    }

    #[test]
    fn a_panic_line_fails_the_run_and_names_the_process_and_the_line() {
        let logs = [(
            "sidecar 2".to_string(),
            "node2.sidecar.log".to_string(),
            SIDECAR_LOG.to_string(),
        )];
        let found = assess(&[], &logs, &[]);
        assert!(!found.is_clean());
        assert_eq!(found.panics.len(), 1, "{found:?}");
        let panic = &found.panics[0];
        assert!(
            panic.starts_with("sidecar 2 panicked (node2.sidecar.log, line 3)"),
            "{panic}"
        );
        assert!(panic.contains("driver.rs:123:45"), "{panic}");
        assert!(
            panic.contains("Option::unwrap()"),
            "the excerpt misses the message: {panic}"
        );
    }

    #[test]
    fn go_panics_and_wasm_traps_are_panics_and_ordinary_lines_are_not() {
        assert!(is_panic_line(
            "panic: runtime error: index out of range [3] with length 3"
        ));
        assert!(is_panic_line("fatal error: concurrent map writes"));
        assert!(is_panic_line("RuntimeError: unreachable"));
        assert!(is_panic_line("panicked at core/src/merge.rs:1:1:"));
        for line in [
            "[1] 2026/01/01 00:00:00.000000 [INF] Server is ready",
            "2026-01-01T00:00:00Z  WARN harmonylite: publish failed, will retry: timed out",
            "the replica recovered from a panic-free restart",
        ] {
            assert!(!is_panic_line(line), "{line}");
        }
        let clean = assess(
            &[],
            &[(
                "nats-server 0".into(),
                "node0.nats.log".into(),
                "[INF] ready\n[WRN] slow\n".into(),
            )],
            &[],
        );
        assert!(clean.is_clean(), "{clean:?}");
    }

    #[test]
    fn an_exit_no_fault_explains_fails_the_run_with_the_log_tail() {
        let found = assess(&[exit("sidecar 1", None)], &[], &[]);
        assert_eq!(found.unexpected_exits.len(), 1, "{found:?}");
        let text = &found.unexpected_exits[0];
        assert!(
            text.starts_with("sidecar 1 exited on its own (exit status: 101)"),
            "{text}"
        );
        assert!(
            text.contains("panicked at host-native/src/driver.rs"),
            "{text}"
        );
        // An explained exit is no failure.
        let explained = assess(&[exit("nats-server 0", Some("disk full".into()))], &[], &[]);
        assert!(explained.is_clean(), "{explained:?}");
    }

    #[test]
    fn only_a_nats_server_on_a_full_disk_that_says_so_may_exit() {
        let full = "[ERR] JetStream out of resources, will be DISABLED\n[FTL] write: no space left on device";
        assert!(explain_exit(ProcessKind::Nats, true, full).is_some());
        // The disk is full but the log says something else: a crash.
        assert!(explain_exit(ProcessKind::Nats, true, "panic: nil map").is_none());
        // The log names a full disk but the fault is not in place (an old message): a crash.
        assert!(explain_exit(ProcessKind::Nats, false, full).is_none());
        // Sidecars and the wasm replica never exit on their own, full disk or not.
        assert!(explain_exit(ProcessKind::Sidecar, true, "database or disk is full").is_none());
        assert!(explain_exit(ProcessKind::Wasm, true, full).is_none());
    }

    #[test]
    fn a_message_parked_at_the_end_fails_the_run_and_names_the_replica() {
        let parked = [
            ParkedAt {
                replica: "node 0".into(),
                parked: Ok((0, vec![])),
            },
            ParkedAt {
                replica: "node 2".into(),
                parked: Ok((
                    1,
                    vec!["stream_seq 17, kind batch, table items: no such column: x".into()],
                )),
            },
            ParkedAt {
                replica: "the wasm replica (node 3)".into(),
                parked: Err("the wasm replica exited".into()),
            },
        ];
        let found = assess(&[], &[], &parked);
        assert_eq!(found.parked.len(), 2, "{found:?}");
        assert!(found.parked[0].starts_with("node 2 still holds 1 parked message(s)"));
        assert!(found.parked[0].contains("stream_seq 17"));
        assert!(found.parked[1].contains("the wasm replica (node 3)"));
    }

    #[test]
    fn a_full_disk_is_named_only_in_sqlites_or_the_oss_words() {
        assert!(names_full_disk(
            "ERROR harmonylite: apply failed: database or disk is full"
        ));
        assert!(names_full_disk(
            "write /data/js/msgs/1.blk: No space left on device"
        ));
        for text in [
            "INFO harmonylite: connected successfully",
            "published the full batch",
            "disk usage is high",
        ] {
            assert!(!names_full_disk(text), "{text}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with(&format!("line {}", 100 - TAIL_LINES)));
        assert!(t.ends_with("line 99"));
    }
}
