//! The `harmonylite` command line: which configuration file to load, flags that override it,
//! and one-shot maintenance commands.
//!
//! Flags take the GNU form (`--node-id 1a`, `--node-id=1a`). HarmonyLite's Go-style single
//! dash (`-config node.toml`, `-cleanup`) is accepted too, for every long flag:
//! [`normalize_args`] rewrites it before clap sees it, and also turns the command forms
//! `harmonylite migrate <file.sql> …` and `harmonylite parked …` into `--migrate <file.sql>`
//! and `--parked`; `harmonylite migrate --merge TABLE=MODE …` is `--merge TABLE=MODE`.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use harmonylite_core::column_merge::TableMerge;
use harmonylite_core::hlc::NodeId;

use crate::config::{parse_node_id, Config};

/// Command-line arguments of the `harmonylite` sidecar.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "harmonylite",
    version,
    about = "Replicates an application's SQLite database with every other node over NATS JetStream.",
    after_help = "Flags override the configuration file. Reference: docs/configuration.md"
)]
pub struct Cli {
    /// Path of the TOML configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,

    /// This replica's id, 1 to 32 hex digits (overrides `node_id`).
    #[arg(long, value_name = "HEX", value_parser = parse_node_id)]
    pub node_id: Option<NodeId>,

    /// Remove every harmonylite object (triggers, internal tables) from the database, then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Take a snapshot of the database, upload it to the `[snapshot]` store, prune old ones,
    /// then exit.
    #[arg(long, conflicts_with = "cleanup")]
    pub save_snapshot: bool,

    /// Publish the SQL file as a replicated schema migration (every replica applies it once,
    /// in order), wait until this node applied it, then exit. Also `harmonylite migrate FILE`.
    #[arg(long, value_name = "FILE.sql", conflicts_with_all = ["cleanup", "save_snapshot"])]
    pub migrate: Option<PathBuf>,

    /// With --migrate: allow destructive statements (DROP TABLE, ALTER TABLE … DROP COLUMN).
    #[arg(long, requires = "migrate")]
    pub allow_destructive: bool,

    /// Switch how TABLE merges concurrent changes on every replica (a replicated migration),
    /// wait until this node switched, then exit: TABLE=row, TABLE=column, or
    /// TABLE=column:COUNTER,COUNTER (counter columns add every replica's increments).
    /// Also `harmonylite migrate --merge TABLE=MODE`.
    #[arg(
        long,
        value_name = "TABLE=MODE",
        value_parser = parse_merge_switch,
        conflicts_with_all = ["cleanup", "save_snapshot", "migrate", "allow_destructive"]
    )]
    pub merge: Option<MergeSwitch>,

    /// Print the local schema fingerprint, migration version, each table's merge mode and
    /// parked messages, then exit.
    #[arg(long, conflicts_with_all = ["cleanup", "save_snapshot", "migrate", "merge"])]
    pub schema_status: bool,

    /// List the parked messages by table (and whether each table exists here), then exit.
    /// Also `harmonylite parked`.
    #[arg(long, conflicts_with_all = ["cleanup", "save_snapshot", "migrate", "merge", "schema_status"])]
    pub parked: bool,

    /// With --parked: discard the parked changes for TABLE (a table dropped on purpose) in one
    /// transaction, print how many, then exit.
    #[arg(long, value_name = "TABLE", requires = "parked")]
    pub discard: Option<String>,

    /// With --discard: discard even when TABLE exists here (its parked changes then wait for
    /// a column or a key, and are lost).
    #[arg(long, requires = "discard")]
    pub force: bool,

    /// With --parked: print JSON instead of text.
    #[arg(long, requires = "parked")]
    pub json: bool,

    /// Make this node apply the change stream from its first message at the next start (after
    /// the stream was deleted and created again on purpose), then exit. Needs the application
    /// and the sidecar stopped.
    #[arg(long, conflicts_with_all = ["cleanup", "save_snapshot", "migrate", "merge", "schema_status", "parked"])]
    pub adopt_stream: bool,

    /// Create the account NKey seed at `scopes.auth.callout_seed_file` (it signs the NATS
    /// users scoped clients get; copy the same file to every node), print its public key,
    /// then exit. Refused when the file exists.
    #[arg(long, conflicts_with_all = ["cleanup", "save_snapshot", "migrate", "merge", "schema_status", "parked", "adopt_stream"])]
    pub scopes_keygen: bool,

    /// Route listener of the embedded NATS server, host:port (overrides `nats.cluster_addr`).
    #[arg(long, value_name = "HOST:PORT")]
    pub cluster_addr: Option<SocketAddr>,

    /// Comma-separated route URLs of the other embedded servers, e.g.
    /// nats://node2:6222,nats://node3:6222, or dns://name:6222 for every address of a name
    /// (replaces `nats.cluster_peers`; "" clears it).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub cluster_peers: Option<Vec<String>>,

    /// Comma-separated URLs of servers the embedded server joins as a leaf node (replaces
    /// `nats.leaf_servers`; "" clears it).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub leaf_servers: Option<Vec<String>>,
}

impl Cli {
    /// Parses the process's arguments; prints usage and exits on an error, `--help` or
    /// `--version` (clap's behaviour).
    pub fn from_env() -> Cli {
        Cli::parse_from(normalize_args(std::env::args_os()))
    }

    /// Parses `args` (the first is the program name) without exiting.
    pub fn try_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Cli::try_parse_from(normalize_args(args))
    }

    /// Writes the flags given on the command line into `config` (flags win over the file).
    /// List flags replace the file's list; empty items are dropped. Validate the result again
    /// with [`Config::validate`].
    pub fn apply_overrides(&self, config: &mut Config) {
        if let Some(id) = self.node_id {
            config.node_id = Some(id);
        }
        if let Some(addr) = self.cluster_addr {
            config.nats.cluster_addr = Some(addr);
        }
        if let Some(peers) = &self.cluster_peers {
            config.nats.cluster_peers = non_empty(peers);
        }
        if let Some(servers) = &self.leaf_servers {
            config.nats.leaf_servers = non_empty(servers);
        }
    }

    /// Loads the configuration file, applies the flags, then validates the result (so a
    /// flag may complete the file, e.g. `--cluster-addr` for the file's `cluster_peers`).
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = Config::load_unvalidated(&self.config)?;
        self.apply_overrides(&mut config);
        let overridden = self.node_id.is_some()
            || self.cluster_addr.is_some()
            || self.cluster_peers.is_some()
            || self.leaf_servers.is_some();
        let origin = if overridden {
            format!("{} with command-line overrides", self.config.display())
        } else {
            self.config.display().to_string()
        };
        config.validate(&origin)?;
        Ok(config)
    }
}

fn non_empty(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What `--merge` asks for: switch `table` to `merge` (`None`: by row; `Some`: by column with
/// its counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSwitch {
    /// The table, as written.
    pub table: String,
    /// Its new merge mode.
    pub merge: Option<TableMerge>,
}

impl std::fmt::Display for MergeSwitch {
    /// The argument's own form: `notes=row`, `notes=column`, `stock=column:qty,reserved`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.merge {
            None => write!(f, "{}=row", self.table),
            Some(m) if m.counters.is_empty() => write!(f, "{}=column", self.table),
            Some(m) => write!(f, "{}=column:{}", self.table, m.counters.join(",")),
        }
    }
}

/// The forms `--merge` takes, for its error messages.
const MERGE_FORMS: &str = "expected TABLE=row, TABLE=column or TABLE=column:COUNTER,COUNTER";

/// Parses `--merge`'s argument: `TABLE=row`, `TABLE=column` or `TABLE=column:COUNTER,…`
/// (the mode in any ASCII case, blanks around names ignored). Refused, with what is wrong:
/// no `=`, an empty table name, an unknown mode, counters after `row`, an empty counter list
/// or name, a counter named twice, or a counter written `TABLE.COLUMN` (the table is the one
/// before `=`).
pub fn parse_merge_switch(arg: &str) -> Result<MergeSwitch, String> {
    let Some((table, mode)) = arg.split_once('=') else {
        return Err(format!("{MERGE_FORMS}; {arg:?} has no `=`"));
    };
    let table = table.trim();
    if table.is_empty() {
        return Err(format!("{MERGE_FORMS}; {arg:?} names no table before `=`"));
    }
    let (mode, counters) = match mode.split_once(':') {
        Some((mode, counters)) => (mode.trim(), Some(counters)),
        None => (mode.trim(), None),
    };
    let merge = if mode.eq_ignore_ascii_case("row") {
        if counters.is_some() {
            return Err(format!(
                "{arg:?}: a table that merges by row has no counter columns (counters need \
                 {table}=column:COUNTER,…)"
            ));
        }
        None
    } else if mode.eq_ignore_ascii_case("column") {
        Some(TableMerge {
            counters: parse_counters(table, counters)?,
        })
    } else if mode.is_empty() {
        return Err(format!("{MERGE_FORMS}; {arg:?} has no mode after `=`"));
    } else {
        return Err(format!(
            "{MERGE_FORMS}; unknown merge mode {mode:?} in {arg:?} (`row` or `column`)"
        ));
    };
    Ok(MergeSwitch {
        table: table.to_owned(),
        merge,
    })
}

/// The counter columns after `column:` (`None`: no `:`).
fn parse_counters(table: &str, counters: Option<&str>) -> Result<Vec<String>, String> {
    let Some(list) = counters else {
        return Ok(Vec::new());
    };
    if list.trim().is_empty() {
        return Err(format!(
            "no counter column after `{table}=column:` (write {table}=column for a table \
             without counters)"
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for counter in list.split(',').map(str::trim) {
        if counter.is_empty() {
            return Err(format!(
                "an empty counter name in {list:?} (counters are separated by single commas)"
            ));
        }
        if let Some(column) = counter
            .split_once('.')
            .filter(|(t, _)| t.eq_ignore_ascii_case(table))
            .map(|(_, c)| c)
        {
            return Err(format!(
                "counter {counter:?}: name the column only ({table}=column:{column}); the \
                 table is the one before `=`"
            ));
        }
        if out.iter().any(|c| c.eq_ignore_ascii_case(counter)) {
            return Err(format!("counter {counter:?} is named twice"));
        }
        out.push(counter.to_owned());
    }
    Ok(out)
}

/// Words accepted as commands, each the same as its flag (`parked` = `--parked`).
const COMMANDS: [&str; 2] = ["migrate", "parked"];

/// Whether `arg` is the `--merge` flag (`--merge`, `-merge`, with or without `=VALUE`).
fn is_merge_flag(arg: &OsStr) -> bool {
    arg.to_str().is_some_and(|a| {
        let name = a.strip_prefix("--").or_else(|| a.strip_prefix('-'));
        name.is_some_and(|n| n == "merge" || n.starts_with("merge="))
    })
}

/// Rewrites Go-style single-dash long flags (`-cleanup`, `-config=x`) to `--cleanup`,
/// `--config=x` for every long flag [`Cli`] defines; stops at `--`. The first argument (the
/// program name) and everything else pass through unchanged.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut command = Cli::command();
    command.build();
    let longs: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let with_values: Vec<String> = command
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // `migrate --merge TABLE=MODE`: the word is no `--migrate FILE` then.
    let end = args
        .iter()
        .position(|a| a == OsStr::new("--"))
        .unwrap_or(args.len());
    let merging = args.iter().take(end).skip(1).any(|a| is_merge_flag(a));
    let mut out: Vec<OsString> = Vec::new();
    let mut rest_verbatim = false;
    for (i, arg) in args.iter().cloned().enumerate() {
        if i == 0 || rest_verbatim {
            out.push(arg);
            continue;
        }
        // `migrate`, `parked` where no flag expects a value (the CLI has no positional
        // arguments).
        let previous_takes_value = out
            .last()
            .and_then(|p| p.to_str())
            .is_some_and(|p| i > 1 && with_values.iter().any(|f| f == p));
        if !previous_takes_value {
            if let Some(command) = COMMANDS.iter().find(|c| arg == OsStr::new(c)) {
                // `migrate` without a file after it, beside `--merge`, says nothing more.
                let file_follows = args
                    .get(i + 1)
                    .is_some_and(|next| next.to_str().is_none_or(|next| !next.starts_with('-')));
                if *command == "migrate" && merging && !file_follows {
                    continue;
                }
                out.push(OsString::from(format!("--{command}")));
                continue;
            }
        }
        if arg == OsStr::new("--") {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        let single_dash_long = arg.to_str().and_then(|s| {
            let name = s.strip_prefix('-').filter(|n| !n.starts_with('-'))?;
            let name = name.split('=').next().unwrap_or(name);
            longs.iter().any(|l| l == name).then(|| format!("-{s}"))
        });
        out.push(single_dash_long.map(OsString::from).unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::tests::doc_table_rows;

    const DOCS: &str = include_str!("../../../docs/configuration.md");

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_from_args(std::iter::once("harmonylite").chain(args.iter().copied()))
    }

    fn config(dir: &std::path::Path) -> Config {
        Config::from_toml_str(
            &format!(
                "db_path = {:?}\nnode_id = 7\n[nats]\ncluster_addr = \"127.0.0.1:6222\"\ncluster_peers = [\"nats://a:6222\"]\nleaf_servers = [\"nats://hub:7422\"]\n",
                dir.join("app.db").display().to_string()
            ),
            "test.toml",
        )
        .unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_is_required() {
        let error = parse(&[]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(error.to_string().contains("--config"), "{error}");
    }

    #[test]
    fn version_and_help_need_no_config() {
        assert_eq!(
            parse(&["--version"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayVersion
        );
        assert_eq!(
            parse(&["--help"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert_eq!(
            parse(&["-version"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn every_flag_parses() {
        let cli = parse(&[
            "--config",
            "node.toml",
            "--node-id",
            "1A",
            "--cleanup",
            "--cluster-addr",
            "0.0.0.0:6222",
            "--cluster-peers",
            "nats://b:6222,nats://c:6222",
            "--leaf-servers=tls://hub:7422",
        ])
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("node.toml"));
        assert_eq!(cli.node_id, NodeId::from_u128(0x1a));
        assert!(cli.cleanup);
        assert_eq!(cli.cluster_addr, Some("0.0.0.0:6222".parse().unwrap()));
        assert_eq!(
            cli.cluster_peers.as_deref(),
            Some(&["nats://b:6222".to_owned(), "nats://c:6222".to_owned()][..])
        );
        assert_eq!(
            cli.leaf_servers.as_deref(),
            Some(&["tls://hub:7422".to_owned()][..])
        );

        let bare = parse(&["--config", "node.toml"]).unwrap();
        assert_eq!(bare.node_id, None);
        assert!(!bare.cleanup);
        assert!(!bare.save_snapshot);
        assert_eq!(bare.cluster_addr, None);
        assert_eq!(bare.cluster_peers, None);
        assert_eq!(bare.leaf_servers, None);
    }

    #[test]
    fn migrate_takes_the_command_form_and_the_flag_form() {
        let cli = parse(&["migrate", "m.sql", "--config", "node.toml"]).unwrap();
        assert_eq!(cli.migrate, Some(PathBuf::from("m.sql")));
        let cli = parse(&["--config", "node.toml", "migrate", "m.sql"]).unwrap();
        assert_eq!(cli.migrate, Some(PathBuf::from("m.sql")));
        // A flag's value named "migrate" stays a value.
        let cli = parse(&["--config", "migrate"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("migrate"));
        assert_eq!(cli.migrate, None);
        assert!(!cli.allow_destructive);
        let cli = parse(&[
            "--config",
            "node.toml",
            "--migrate=m.sql",
            "--allow-destructive",
        ])
        .unwrap();
        assert_eq!(cli.migrate, Some(PathBuf::from("m.sql")));
        assert!(cli.allow_destructive);
        let error = parse(&["--config", "c.toml", "--allow-destructive"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let error = parse(&["--config", "c.toml", "--schema-status", "--cleanup"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(
            parse(&["--config", "c.toml", "-schema-status"])
                .unwrap()
                .schema_status
        );
    }

    fn switch(table: &str, counters: Option<&[&str]>) -> MergeSwitch {
        MergeSwitch {
            table: table.into(),
            merge: counters.map(|c| TableMerge {
                counters: c.iter().map(|c| c.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn merge_switches_parse_in_every_form() {
        for (arg, expected) in [
            ("notes=row", switch("notes", None)),
            ("notes=column", switch("notes", Some(&[]))),
            ("stock=column:qty", switch("stock", Some(&["qty"]))),
            (
                " stock = COLUMN : qty , reserved ",
                switch("stock", Some(&["qty", "reserved"])),
            ),
            ("Notes=Row", switch("Notes", None)),
            // A column whose name has a dot, not the table's prefix.
            ("stock=column:a.b", switch("stock", Some(&["a.b"]))),
        ] {
            assert_eq!(parse_merge_switch(arg), Ok(expected), "{arg}");
        }
        assert_eq!(
            switch("stock", Some(&["qty", "reserved"])).to_string(),
            "stock=column:qty,reserved"
        );
        assert_eq!(switch("notes", Some(&[])).to_string(), "notes=column");
        assert_eq!(switch("notes", None).to_string(), "notes=row");
    }

    #[test]
    fn malformed_merge_switches_say_what_is_wrong() {
        for (arg, says) in [
            ("notes", "has no `=`"),
            ("notes:column", "has no `=`"),
            ("=column", "names no table"),
            ("  =row", "names no table"),
            ("notes=", "has no mode"),
            ("notes=:qty", "has no mode"),
            ("notes=columns", "unknown merge mode \"columns\""),
            ("notes=lww", "`row` or `column`"),
            ("stock=row:qty", "merges by row has no counter"),
            ("stock=column:", "no counter column after `stock=column:`"),
            ("stock=column: ", "no counter column"),
            ("stock=column:qty,,reserved", "an empty counter name"),
            ("stock=column:qty,", "an empty counter name"),
            (
                "stock=column:stock.qty",
                "name the column only (stock=column:qty)",
            ),
            ("stock=column:qty,QTY", "counter \"QTY\" is named twice"),
        ] {
            let error = parse_merge_switch(arg).unwrap_err();
            assert!(error.contains(says), "{arg}: {error}");
        }
        // Through clap: the flag and the argument are named with the reason.
        let error = parse(&["--config", "c.toml", "--merge", "notes"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        let message = error.to_string();
        assert!(
            message.contains("--merge") && message.contains("has no `=`"),
            "{message}"
        );
        let error = parse(&["--config", "c.toml", "--merge"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn merge_takes_the_command_form_and_the_flag_form() {
        let expected = Some(switch("stock", Some(&["qty"])));
        for args in [
            &[
                "migrate",
                "--merge",
                "stock=column:qty",
                "--config",
                "n.toml",
            ][..],
            &[
                "--config",
                "n.toml",
                "migrate",
                "--merge",
                "stock=column:qty",
            ],
            &["migrate", "--config", "n.toml", "--merge=stock=column:qty"],
            &["--config", "n.toml", "--merge", "stock=column:qty"],
            &["-config", "n.toml", "-merge", "stock=column:qty"],
            &[
                "--merge",
                "stock=column:qty",
                "migrate",
                "--config",
                "n.toml",
            ],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.merge, expected, "{args:?}");
            assert_eq!(cli.migrate, None, "{args:?}");
            assert_eq!(cli.config, PathBuf::from("n.toml"), "{args:?}");
        }
        // A file and a switch at once: refused, not one of them silently.
        for args in [
            &[
                "--config",
                "c.toml",
                "migrate",
                "m.sql",
                "--merge",
                "notes=row",
            ][..],
            &[
                "--config",
                "c.toml",
                "--migrate",
                "m.sql",
                "--merge",
                "notes=row",
            ],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
        // `migrate` as a value stays a value; without --merge, `migrate` still needs a file.
        let cli = parse(&["--config", "migrate", "--merge", "migrate=row"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("migrate"));
        assert_eq!(cli.merge, Some(switch("migrate", None)));
        let error = parse(&["--config", "c.toml", "migrate"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        for other in ["--schema-status", "--parked", "--cleanup", "--adopt-stream"] {
            let error = parse(&["--config", "c.toml", "--merge", "notes=row", other]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{other}"
            );
        }
        let error = parse(&[
            "--config",
            "c.toml",
            "--merge",
            "notes=row",
            "--allow-destructive",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn parked_takes_the_command_form_and_discard_needs_it() {
        let cli = parse(&["parked", "--config", "node.toml"]).unwrap();
        assert!(cli.parked && cli.discard.is_none() && !cli.force && !cli.json);
        let cli = parse(&[
            "--config",
            "node.toml",
            "parked",
            "--discard",
            "old_notes",
            "--force",
            "--json",
        ])
        .unwrap();
        assert!(cli.parked && cli.force && cli.json);
        assert_eq!(cli.discard.as_deref(), Some("old_notes"));
        // A table named `parked` is a value, not the command.
        let cli = parse(&["-parked", "--config", "c.toml", "-discard", "parked"]).unwrap();
        assert_eq!(cli.discard.as_deref(), Some("parked"));
        for args in [
            &["--config", "c.toml", "--discard", "t"][..],
            &["--config", "c.toml", "--json"],
            &["--config", "c.toml", "parked", "--force"],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{args:?}"
            );
        }
        let error = parse(&["--config", "c.toml", "parked", "--schema-status"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn save_snapshot_is_a_command_of_its_own() {
        let cli = parse(&["--config", "node.toml", "-save-snapshot"]).unwrap();
        assert!(cli.save_snapshot && !cli.cleanup);
        let error = parse(&["--config", "c.toml", "--save-snapshot", "--cleanup"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn scopes_keygen_is_a_command_of_its_own() {
        let cli = parse(&["--config", "node.toml", "-scopes-keygen"]).unwrap();
        assert!(cli.scopes_keygen && !cli.cleanup);
        let error = parse(&["--config", "c.toml", "--scopes-keygen", "--parked"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (flag, value) in [
            ("--node-id", "0"),
            ("--node-id", "xyz"),
            ("--cluster-addr", "a"),
        ] {
            let error = parse(&["--config", "c.toml", flag, value]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.to_string().contains(flag), "{error}");
        }
        let error = parse(&["--config", "c.toml", "--bogus"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn go_style_single_dash_flags_are_accepted() {
        let cli = parse(&[
            "-config",
            "node.toml",
            "-cleanup",
            "-node-id=ff",
            "-cluster-peers",
            "nats://b:6222",
        ])
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("node.toml"));
        assert!(cli.cleanup);
        assert_eq!(cli.node_id, NodeId::from_u128(0xff));
        assert_eq!(cli.cluster_peers, Some(vec!["nats://b:6222".to_owned()]));
        // Not a flag name: left alone (clap then reports it); after `--`: verbatim.
        let args = normalize_args(["harmonylite", "-x", "--", "-cleanup"]);
        assert_eq!(args, ["harmonylite", "-x", "--", "-cleanup"]);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        let unchanged = c.clone();
        parse(&["--config", "x"]).unwrap().apply_overrides(&mut c);
        assert_eq!(c, unchanged, "no flags, no change");

        parse(&[
            "--config",
            "x",
            "--node-id",
            "abc",
            "--cluster-addr",
            "0.0.0.0:7222",
            "--cluster-peers",
            "nats://d:7222,,nats://e:7222",
            "--leaf-servers",
            "",
        ])
        .unwrap()
        .apply_overrides(&mut c);
        assert_eq!(c.node_id, NodeId::from_u128(0xabc));
        assert_eq!(c.nats.cluster_addr, Some("0.0.0.0:7222".parse().unwrap()));
        assert_eq!(c.nats.cluster_peers, ["nats://d:7222", "nats://e:7222"]);
        assert!(c.nats.leaf_servers.is_empty());
        c.validate("test").unwrap();
    }

    #[test]
    fn load_config_validates_the_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            format!(
                "db_path = {:?}\n",
                dir.path().join("app.db").display().to_string()
            ),
        )
        .unwrap();
        let path = path.display().to_string();
        let c = parse(&["--config", &path, "--node-id", "5"])
            .unwrap()
            .load_config()
            .unwrap();
        assert_eq!(c.node_id, NodeId::from_u128(5));

        let error = parse(&["--config", &path, "--cluster-peers", "nats://b:6222"])
            .unwrap()
            .load_config()
            .unwrap_err();
        assert_eq!(error.keys(), ["nats.cluster_peers"]);
        let message = error.to_string();
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("command-line"), "{message}");

        // A flag may complete the file: peers in the file, route listener on the command line.
        std::fs::write(
            &path,
            format!(
                "db_path = {:?}\n[nats]\ncluster_peers = [\"nats://b:6222\"]\n",
                dir.path().join("app.db").display().to_string()
            ),
        )
        .unwrap();
        let error = parse(&["--config", &path])
            .unwrap()
            .load_config()
            .unwrap_err();
        assert_eq!(error.keys(), ["nats.cluster_peers"]);
        assert!(!error.to_string().contains("command-line"), "{error}");
        let c = parse(&["--config", &path, "--cluster-addr", "0.0.0.0:6222"])
            .unwrap()
            .load_config()
            .unwrap();
        assert_eq!(c.nats.cluster_addr, Some("0.0.0.0:6222".parse().unwrap()));
    }

    #[test]
    fn every_flag_has_help() {
        let mut command = Cli::command();
        command.build();
        for arg in command.get_arguments() {
            assert!(
                arg.get_help().is_some(),
                "--{} has no help text",
                arg.get_long().unwrap_or_default()
            );
        }
    }

    #[test]
    fn docs_list_exactly_the_flags() {
        let mut command = Cli::command();
        command.build();
        let code: BTreeSet<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let docs: BTreeSet<String> = doc_table_rows(DOCS, "Flag")
            .into_iter()
            .map(|cells| {
                cells[0]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(code, docs, "flags in code vs docs/configuration.md");
    }
}
