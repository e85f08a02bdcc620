//! `harmonylite` command-line entry point: parse the flags, load the configuration, set up
//! logging, then either `--cleanup`, `--save-snapshot`, `--migrate`, `--merge`,
//! `--schema-status` or `--parked` and exit, or run the sidecar until it stops.
//!
//! This is the binary's edge: the only place errors become `anyhow` and then an exit code.
//!
//! Every log line is inside the `node` span, whose `node_id` field is set here when the
//! configuration or `--node-id` names the id. Otherwise the code that resolves the id (from
//! the database, or a new one: `harmonylite::startup`) records it with
//! `tracing::Span::current().record("node_id", tracing::field::display(id))`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use harmonylite::config::cli::Cli;
use harmonylite::config::{Config, LogFormat, LoggingConfig};
use tracing::field::{display, Empty};
use tracing::{info, Instrument, Span};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::from_env();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("harmonylite: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = init_tracing(&config.logging) {
        eprintln!("harmonylite: {error:#}");
        return ExitCode::FAILURE;
    }
    let span = tracing::info_span!("node", node_id = Empty);
    if let Some(id) = config.node_id {
        span.record("node_id", display(id));
    }
    let result = if cli.cleanup {
        span.in_scope(|| harmonylite::commands::cleanup::cleanup(&config))
    } else if cli.save_snapshot {
        save_snapshot(config, span.clone())
    } else if let Some(file) = &cli.migrate {
        span.in_scope(|| {
            harmonylite::commands::schema::migrate(&config, file, cli.allow_destructive)
        })
    } else if let Some(switch) = &cli.merge {
        span.in_scope(|| harmonylite::commands::schema::merge(&config, switch))
    } else if cli.schema_status {
        span.in_scope(|| harmonylite::commands::schema::print_status(&config))
    } else if cli.adopt_stream {
        span.in_scope(|| adopt_stream(&config))
    } else if cli.scopes_keygen {
        span.in_scope(|| harmonylite::commands::scopes_keygen::scopes_keygen(&config).map(drop))
    } else if cli.parked {
        span.in_scope(|| {
            harmonylite::commands::schema::parked(
                &config,
                cli.discard.as_deref(),
                cli.force,
                cli.json,
            )
        })
    } else {
        serve(config, span.clone())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The error and its causes, each once (some causes repeat their own cause).
            let message = harmonylite::util::error::report(&*error);
            span.in_scope(|| tracing::error!("{message}"));
            ExitCode::FAILURE
        }
    }
}

/// `--adopt-stream`: resets the cursor so the next start applies the stream from its start.
fn adopt_stream(config: &Config) -> Result<()> {
    let cursor = harmonylite::commands::adopt_stream::adopt_stream(&config.db_path)?;
    info!(
        db = %config.db_path.display(),
        previous_cursor = cursor,
        "the next start applies the change stream from its first message and records it as this node's stream"
    );
    Ok(())
}

/// Logs to stderr, as console lines or JSON objects; `verbose` turns on debug for
/// harmonylite's own modules. `RUST_LOG`, when set, replaces the level selection.
fn init_tracing(logging: &LoggingConfig) -> Result<()> {
    let directives = if logging.verbose {
        "info,harmonylite=debug,harmonylite_core=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match logging.format {
        LogFormat::Console => builder.try_init(),
        LogFormat::Json => builder.json().with_span_list(false).try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
    .context("setting up logging")
}

/// `--save-snapshot`: takes, stores and prunes snapshots once, then returns.
fn save_snapshot(config: Config, span: Span) -> Result<()> {
    let runtime = runtime(&span)?;
    runtime.block_on(
        async move {
            let taken = harmonylite::commands::save_snapshot::save_snapshot(&config).await?;
            info!(
                covered_seq = taken.info.covered_seq.get(),
                bytes = taken.bytes,
                took_ms = taken.took.as_millis() as u64,
                "saved snapshot {}",
                taken.info.name
            );
            Ok(())
        }
        .instrument(span),
    )
}

/// Runs the sidecar on a multi-threaded tokio runtime until it stops.
fn serve(config: Config, span: Span) -> Result<()> {
    let runtime = runtime(&span)?;
    runtime.block_on(harmonylite::run::driver::run(config).instrument(span))
}

/// A multi-threaded tokio runtime whose threads are all inside `span` (the `node` span), so
/// that tasks spawned without a span of their own (async-nats's connection task, the
/// embedded nats-server's output forwarders, ...) log with the node id too.
fn runtime(span: &Span) -> Result<tokio::runtime::Runtime> {
    let span = span.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            // Entered for the thread's whole life: never exited, so the guard is forgotten.
            std::mem::forget(span.clone().entered());
        })
        .build()
        .context("starting the tokio runtime")
}
