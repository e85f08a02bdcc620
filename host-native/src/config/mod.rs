//! The sidecar's configuration: the TOML file users write, its defaults and its validation.
//!
//! Keys follow HarmonyLite's names where the concept is the same. `docs/configuration.md` is
//! the reference for every key; tests in this module keep it, `examples/node.toml` and the
//! code in step (every key, every default).
//!
//! Loading is strict: an unknown key, a value of the wrong type or an unusable value is an
//! error that names the file and the key ([`ConfigError`]). Relative paths are used as
//! written, i.e. relative to the sidecar's working directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harmonylite_core::column_merge::MergeConfig;
use harmonylite_core::engine::EngineConfig;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::sqlite::StoreOptions;
use harmonylite_core::wire::Compression;
use serde::{Deserialize, Serialize};

pub mod cli;
pub mod scopes;

/// URL schemes accepted by `nats.urls` and `nats.leaf_servers`.
pub const CLIENT_URL_SCHEMES: &[&str] = &["nats://", "tls://", "ws://", "wss://"];

/// URL schemes accepted by `nats.cluster_peers`.
pub const ROUTE_URL_SCHEMES: &[&str] = &["nats://", "dns://"];

/// The most JetStream stream replicas NATS supports.
pub const MAX_STREAM_REPLICAS: u32 = 5;

/// Everything the sidecar reads from its TOML file (top-level keys plus one struct per
/// section). Build it with [`Config::load`] or [`Config::from_toml_str`]; both validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `db_path` (required): the application's SQLite file. Its directory must exist; the
    /// file itself may be missing (a new node bootstraps from a snapshot).
    pub db_path: PathBuf,
    /// `node_id`: this replica's id, a positive integer or a string of 1 to 32 hex digits.
    /// Unset: the id stored in the database by an earlier run, else a newly generated one.
    #[serde(
        default,
        with = "node_id_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_id: Option<NodeId>,
    /// `publish` (default `true`): publish local writes. `false` makes a read-only replica.
    #[serde(default = "yes")]
    pub publish: bool,
    /// `replicate` (default `true`): apply changes from other nodes. `false` only publishes.
    #[serde(default = "yes")]
    pub replicate: bool,
    /// `scan_max_changes` (default 512): most stream messages applied per transaction.
    #[serde(default = "default_scan_max_changes")]
    pub scan_max_changes: usize,
    /// `cleanup_interval` (milliseconds, default 5000): how often parked messages are
    /// retried. (Acknowledged outbox entries and the parts of a completed multi-part batch
    /// are removed as soon as they are done, not on this interval.)
    #[serde(default = "default_cleanup_interval", with = "millis")]
    pub cleanup_interval: Duration,
    /// `polling_interval` (milliseconds, default 1000): drain the change log at least this
    /// often, besides file-change notifications.
    #[serde(default = "default_polling_interval", with = "millis")]
    pub polling_interval: Duration,
    /// `exclude_tables` (default empty): tables never replicated.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// `data_dir`: where the embedded NATS server keeps its JetStream store and the sidecar
    /// its state. Unset: `<db_path>.harmonylite` beside the database
    /// ([`Config::effective_data_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `max_clock_ahead` (seconds, default 300): remote timestamps further ahead of local time
    /// than this are refused (the message is parked).
    #[serde(default = "default_max_clock_ahead", with = "seconds")]
    pub max_clock_ahead: Duration,
    /// `sleep_timeout` (milliseconds, default 0 = never): serverless mode. After this long
    /// without local writes captured or remote changes applied, the sidecar takes a snapshot
    /// (when it can take the snapshot lease) and exits 0; a restart resumes where it stopped.
    #[serde(default, with = "millis")]
    pub sleep_timeout: Duration,
    /// `[replication_log]`: the JetStream streams changes travel through.
    #[serde(default)]
    pub replication_log: ReplicationLogConfig,
    /// `[nats]`: connection to NATS, or the embedded server's settings.
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[prometheus]`: the metrics endpoint.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// `[health_check]`: the HTTP health endpoint.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// `[logging]`: log verbosity and format.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// `[snapshot]`: when snapshots are taken, where they are stored, how many are kept.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// `[scopes]`: what untrusted (scoped) replicas may see and write, and how their tokens
    /// are checked. Default: off.
    #[serde(default)]
    pub scopes: scopes::ScopesConfig,
    /// `[merge]`: tables that merge by column and counter columns (see
    /// `docs/column-merge.md`). Unset: every table merges as the database records (by row
    /// unless a replicated migration switched it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeSection>,
}

/// `[merge]`: how tables merge concurrent changes; identical on every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeSection {
    /// `column`: tables that merge by column (each column keeps its own last writer).
    pub column: Vec<String>,
    /// `counters`: counter columns as `"table.column"`; they merge by adding every replica's
    /// increments (their tables merge by column).
    pub counters: Vec<String>,
}

impl MergeSection {
    /// The core's merge configuration.
    pub fn config(&self) -> Result<MergeConfig, String> {
        MergeConfig::new(&self.column, &self.counters)
    }
}

/// `[replication_log]`: the JetStream streams changes travel through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationLogConfig {
    /// `shards` (default 1): number of change-log streams. Only 1 is supported: a batch is a
    /// whole transaction and must stay on one stream, and the cursor is per stream. Kept so
    /// HarmonyLite configs parse; any other value is refused with an explanation.
    pub shards: u32,
    /// `max_entries` (default 1,000,000): stream retention, in messages. A node whose cursor
    /// falls behind the oldest retained message restores from a snapshot.
    pub max_entries: u64,
    /// `replicas` (default 1, at most 5): JetStream stream replicas.
    pub replicas: u32,
    /// `compress` (default `true`): LZ4-compress published batches.
    pub compress: bool,
}

impl Default for ReplicationLogConfig {
    fn default() -> Self {
        ReplicationLogConfig {
            shards: 1,
            max_entries: 1_000_000,
            replicas: 1,
            compress: true,
        }
    }
}

/// `[nats]`: external NATS servers to connect to, or the embedded server's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `urls` (default empty): external NATS servers (`nats://`, `tls://`, `ws://`, `wss://`).
    /// Empty: the sidecar starts and supervises an embedded `nats-server`.
    pub urls: Vec<String>,
    /// `bind_address` (default `127.0.0.1:4222`): client listener of the embedded server.
    pub bind_address: SocketAddr,
    /// `cluster_addr`: route listener of the embedded server (`--cluster-addr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_addr: Option<SocketAddr>,
    /// `cluster_peers` (default empty): route URLs (`nats://host:port`) of the other embedded
    /// servers, or `dns://name:port` names that resolve to them (`--cluster-peers`).
    pub cluster_peers: Vec<String>,
    /// `leaf_servers` (default empty): remote servers the embedded server joins as a leaf
    /// node (`--leaf-servers`).
    pub leaf_servers: Vec<String>,
    /// `websocket_bind`: WebSocket listener of the embedded server, for browser replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_bind: Option<SocketAddr>,
    /// `server_config`: a nats-server configuration file included into the generated one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_config: Option<PathBuf>,
    /// `server_binary`: the `nats-server` executable. Unset: found on `PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_binary: Option<PathBuf>,
    /// `subject_prefix` (default `harmonylite-change-log`): prefix of the change subjects.
    pub subject_prefix: String,
    /// `stream_prefix` (default `harmonylite-changes`): prefix of the JetStream stream names.
    pub stream_prefix: String,
    /// `user_name`: user for user/password authentication (with `user_password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// `user_password`: password for user/password authentication (with `user_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_password: Option<Secret>,
    /// `token`: token authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// `seed_file`: NKey seed file for NKey authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_file: Option<PathBuf>,
    /// `creds_file`: credentials file (JWT + NKey) for decentralized authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// `ca_file`: CA certificates (PEM) that verify the servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: client certificate (PEM) for mutual TLS (with `key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// `key_file`: client private key (PEM) for mutual TLS (with `cert_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `reconnect_wait_seconds` (default 2): pause between reconnection attempts.
    #[serde(rename = "reconnect_wait_seconds", with = "seconds")]
    pub reconnect_wait: Duration,
    /// `connect_timeout_seconds` (default 5): how long one connection attempt may take.
    #[serde(rename = "connect_timeout_seconds", with = "seconds")]
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            bind_address: SocketAddr::from(([127, 0, 0, 1], 4222)),
            cluster_addr: None,
            cluster_peers: Vec::new(),
            leaf_servers: Vec::new(),
            websocket_bind: None,
            server_config: None,
            server_binary: None,
            subject_prefix: "harmonylite-change-log".into(),
            stream_prefix: "harmonylite-changes".into(),
            user_name: None,
            user_password: None,
            token: None,
            seed_file: None,
            creds_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// Whether the sidecar runs its own `nats-server` (no external `urls` configured).
    pub fn embedded(&self) -> bool {
        self.urls.is_empty()
    }
}

/// `[prometheus]`: the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `enable` (default `false`): serve metrics.
    pub enable: bool,
    /// `bind` (default `127.0.0.1:3010`): listener of the metrics endpoint.
    pub bind: SocketAddr,
    /// `namespace` (default `harmonylite`): prefix of every metric name.
    pub namespace: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enable: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 3010)),
            namespace: "harmonylite".into(),
        }
    }
}

/// `[health_check]`: the HTTP health endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `enable` (default `false`): serve the health endpoint.
    pub enable: bool,
    /// `bind` (default `127.0.0.1:8090`): listener of the health endpoint.
    pub bind: SocketAddr,
    /// `path` (default `/health`): URL path of the health endpoint.
    pub path: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enable: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 8090)),
            path: "/health".into(),
        }
    }
}

/// `[logging]`: log verbosity and format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `verbose` (default `false`): log at debug level instead of info.
    pub verbose: bool,
    /// `format` (default `console`): `console` (human-readable) or `json` (one object a line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Console,
    /// One JSON object per line.
    Json,
}

/// `[snapshot]`: consistent copies of the database that new nodes, nodes that fell behind the
/// stream's retention and nodes whose file is damaged restore from (docs/snapshots.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `enable` (default `true`; HarmonyLite's `enabled` is accepted too): take periodic
    /// snapshots and restore from them at start when needed.
    #[serde(alias = "enabled")]
    pub enable: bool,
    /// `interval` (milliseconds, default 3,600,000 = 1 h; 0 = off): take a snapshot when the
    /// newest one is older than this.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// `every_messages` (default 100,000; 0 = off): take a snapshot when the stream has grown
    /// by this many messages since the newest one covers.
    pub every_messages: u64,
    /// `store` (default `nats`): `nats` (a JetStream object store bucket) or `file` (a
    /// directory, normally shared by every node).
    pub store: SnapshotStoreKind,
    /// `nats_bucket` (default `harmonylite-snapshots`): the object store bucket. The
    /// snapshot lease lives in the key-value bucket `<nats_bucket>-lease`.
    pub nats_bucket: String,
    /// `nats_replicas` (1 to 5; unset: `replication_log.replicas`): replicas of both buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_replicas: Option<u32>,
    /// `file_dir`: the directory of the `file` store (required with `store = "file"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_dir: Option<PathBuf>,
    /// `keep` (default 3, at least 1): snapshots kept; older ones are deleted.
    pub keep: usize,
    /// `[snapshot.s3]`: the S3 store (used with `store = "s3"`).
    pub s3: S3Config,
}

/// `[snapshot.s3]`: an S3 bucket (AWS or any S3-protocol server) holding the snapshots.
/// Credentials: `access_key` and `secret` when set, else the standard AWS environment
/// chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, web identity,
/// ECS container credentials, EC2 instance metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `endpoint`: `host:port` or an `http://`/`https://` URL of an S3-protocol server
    /// (MinIO, Ceph, ...). Unset: AWS S3 of `region` (or `AWS_ENDPOINT` from the
    /// environment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `bucket` (required with `store = "s3"`): the bucket; it must exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `path` (default empty): key prefix inside the bucket, e.g. `harmonylite/snapshots`.
    pub path: String,
    /// `region`: the bucket's region. Unset: `AWS_REGION`/`AWS_DEFAULT_REGION`, else
    /// `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `path_style` (default `false`): address the bucket as `endpoint/bucket/key` instead
    /// of `bucket.endpoint/key` (most self-hosted servers need `true`).
    pub path_style: bool,
    /// `use_ssl` (default `true`): HTTPS for an `endpoint` written as `host:port` (a URL's
    /// own scheme wins).
    pub use_ssl: bool,
    /// `access_key`: a static access key id (needs `secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    /// `secret`: the static secret access key (needs `access_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// `session_token`: a session token for temporary static credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            path: String::new(),
            region: None,
            path_style: false,
            use_ssl: true,
            access_key: None,
            secret: None,
            session_token: None,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enable: true,
            interval: Duration::from_secs(3600),
            every_messages: 100_000,
            store: SnapshotStoreKind::Nats,
            nats_bucket: "harmonylite-snapshots".into(),
            nats_replicas: None,
            file_dir: None,
            keep: 3,
            s3: S3Config::default(),
        }
    }
}

/// Where snapshots are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStoreKind {
    /// A JetStream object store bucket.
    #[default]
    Nats,
    /// A directory.
    File,
    /// An S3 bucket (`[snapshot.s3]`).
    S3,
}

/// A configured secret (password, token): `Debug` never shows it, so logging a [`Config`] is
/// safe.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, to hand to the NATS client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a configuration could not be used. Every variant names the file (or other origin)
/// and, where one is at fault, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it reported.
        error: std::io::Error,
    },
    /// Not TOML, an unknown key, a missing required key or a value of the wrong type. The
    /// message carries the line, the column and the offending text.
    #[error(
        "invalid configuration in {origin}{}: {}",
        key_suffix(key.as_deref()),
        error.to_string().trim_end()
    )]
    Parse {
        /// The file (or other origin) parsed.
        origin: String,
        /// Dotted path of the key (or section) at fault, when the error concerns one.
        key: Option<String>,
        /// The TOML parser's error (with line, column and a snippet).
        error: Box<toml::de::Error>,
    },
    /// Well-formed, but values that cannot work (missing files, bad combinations).
    #[error("invalid configuration in {origin}:{}", ProblemList(problems))]
    Invalid {
        /// The file (or other origin) checked.
        origin: String,
        /// One entry per problem, each naming its key.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Dotted keys this error is about (empty for an unreadable file or a syntax error).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::Read { .. } => Vec::new(),
            ConfigError::Parse { key, .. } => key.as_deref().into_iter().collect(),
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.key.as_str()).collect()
            }
        }
    }
}

/// One unusable value: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `nats.cert_file`.
    pub key: String,
    /// What is wrong, as a sentence fragment following the key.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, " {one}"),
            many => many.iter().try_for_each(|p| write!(f, "\n  - {p}")),
        }
    }
}

fn key_suffix(key: Option<&str>) -> String {
    key.map(|k| format!(" at `{k}`")).unwrap_or_default()
}

/// A node id given as text (the CLI's `--node-id`, or a string `node_id` in the file) is not
/// 1 to 32 hex digits with a non-zero value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a node id: expected 1 to 32 hex digits, not all zero")]
pub struct InvalidNodeId {
    /// The text given.
    pub input: String,
}

/// Parses a node id written as hex (the form logs print), e.g. `"1a2b"`.
pub fn parse_node_id(text: &str) -> Result<NodeId, InvalidNodeId> {
    let invalid = || InvalidNodeId {
        input: text.to_owned(),
    };
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    text.parse::<NodeId>().map_err(|_| invalid())
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(path.as_ref())?;
        config.validate(&path.as_ref().display().to_string())?;
        Ok(config)
    }

    /// Reads and parses the file at `path`; values are checked later, by
    /// [`Config::validate`] (so command-line overrides can complete it first).
    pub(crate) fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in error messages (a file path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(text, origin)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Parses without validating values.
    fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|error: toml::de::Error| ConfigError::Parse {
            origin: origin.to_owned(),
            key: error_key(&error),
            error: Box::new(error),
        })
    }

    /// Checks every value (including that named files exist); `origin` names the
    /// configuration in the error. Call it again after changing a loaded configuration
    /// (e.g. after [`crate::config::cli::Cli::apply_overrides`]).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let mut problems = self.value_problems();
        problems.extend(self.file_problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Problems visible without looking at the filesystem.
    fn value_problems(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        if self.db_path.as_os_str().is_empty() {
            out.add("db_path", "must not be empty");
        }
        if self.exclude_tables.iter().any(|t| t.is_empty()) {
            out.add("exclude_tables", "contains an empty table name");
        }
        if self.scan_max_changes == 0 {
            out.add("scan_max_changes", "must be at least 1");
        }
        for (key, value) in [
            ("cleanup_interval", self.cleanup_interval),
            ("polling_interval", self.polling_interval),
            ("max_clock_ahead", self.max_clock_ahead),
            ("nats.reconnect_wait_seconds", self.nats.reconnect_wait),
            ("nats.connect_timeout_seconds", self.nats.connect_timeout),
        ] {
            if value.is_zero() {
                out.add(key, "must be greater than 0");
            }
        }

        let log = &self.replication_log;
        if log.shards != 1 {
            out.add(
                "replication_log.shards",
                "only 1 is supported: transactions are replicated whole through one stream \
                 (HarmonyLite's per-row sharding would split them); remove the key or set it to 1",
            );
        }
        if log.max_entries == 0 {
            out.add("replication_log.max_entries", "must be at least 1");
        }
        if !(1..=MAX_STREAM_REPLICAS).contains(&log.replicas) {
            out.add(
                "replication_log.replicas",
                format!(
                    "must be between 1 and {MAX_STREAM_REPLICAS}, not {}",
                    log.replicas
                ),
            );
        }

        let nats = &self.nats;
        check_urls(&mut out, "nats.urls", &nats.urls, CLIENT_URL_SCHEMES);
        check_urls(
            &mut out,
            "nats.cluster_peers",
            &nats.cluster_peers,
            ROUTE_URL_SCHEMES,
        );
        for peer in &nats.cluster_peers {
            if let Some(Err(why)) = parse_dns_peer(peer) {
                out.add("nats.cluster_peers", why);
            }
        }
        check_urls(
            &mut out,
            "nats.leaf_servers",
            &nats.leaf_servers,
            CLIENT_URL_SCHEMES,
        );
        if !nats.embedded() {
            for (key, set) in [
                ("nats.cluster_addr", nats.cluster_addr.is_some()),
                ("nats.cluster_peers", !nats.cluster_peers.is_empty()),
                ("nats.leaf_servers", !nats.leaf_servers.is_empty()),
                ("nats.websocket_bind", nats.websocket_bind.is_some()),
                ("nats.server_config", nats.server_config.is_some()),
                ("nats.server_binary", nats.server_binary.is_some()),
            ] {
                if set {
                    out.add(
                        key,
                        "configures the embedded NATS server, which does not run when `nats.urls` is set",
                    );
                }
            }
        }
        if !nats.cluster_peers.is_empty() && nats.cluster_addr.is_none() {
            out.add(
                "nats.cluster_peers",
                "needs `nats.cluster_addr` (the local route listener)",
            );
        }
        if let Err(why) = check_subject_prefix(&nats.subject_prefix) {
            out.add("nats.subject_prefix", why);
        }
        if let Err(why) = check_stream_prefix(&nats.stream_prefix) {
            out.add("nats.stream_prefix", why);
        }
        match (&nats.user_name, &nats.user_password) {
            (Some(_), None) => out.add("nats.user_name", "needs `nats.user_password`"),
            (None, Some(_)) => out.add("nats.user_password", "needs `nats.user_name`"),
            _ => {}
        }
        let methods: Vec<&str> = [
            (
                "nats.user_name/nats.user_password",
                nats.user_name.is_some() || nats.user_password.is_some(),
            ),
            ("nats.token", nats.token.is_some()),
            ("nats.seed_file", nats.seed_file.is_some()),
            ("nats.creds_file", nats.creds_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if methods.len() > 1 {
            out.add(
                methods[methods.len() - 1],
                format!(
                    "only one authentication method may be configured, found {}",
                    methods
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        match (&nats.cert_file, &nats.key_file) {
            (Some(_), None) => out.add("nats.cert_file", "needs `nats.key_file`"),
            (None, Some(_)) => out.add("nats.key_file", "needs `nats.cert_file`"),
            _ => {}
        }

        let snap = &self.snapshot;
        if snap.keep == 0 {
            out.add("snapshot.keep", "must be at least 1");
        }
        if let Err(why) = check_bucket_name(&snap.nats_bucket) {
            out.add("snapshot.nats_bucket", why);
        }
        if let Some(replicas) = snap.nats_replicas {
            if !(1..=MAX_STREAM_REPLICAS).contains(&replicas) {
                out.add(
                    "snapshot.nats_replicas",
                    format!("must be between 1 and {MAX_STREAM_REPLICAS}, not {replicas}"),
                );
            }
        }
        match (snap.store, &snap.file_dir) {
            (SnapshotStoreKind::File, None) => out.add(
                "snapshot.file_dir",
                "needed with `snapshot.store = \"file\"` (a directory every node can reach)",
            ),
            (SnapshotStoreKind::Nats | SnapshotStoreKind::S3, Some(_)) => out.add(
                "snapshot.file_dir",
                "configures the file store, which is not used unless `snapshot.store = \"file\"`",
            ),
            _ => {}
        }
        s3_problems(&mut out, snap);

        if let Err(why) = check_metric_namespace(&self.prometheus.namespace) {
            out.add("prometheus.namespace", why);
        }
        if !self.health_check.path.starts_with('/') {
            out.add("health_check.path", "must start with `/`");
        }
        self.scopes.value_problems(&mut out);
        if let Some(Err(why)) = self.merge.as_ref().map(MergeSection::config) {
            out.add("merge", why.trim_start_matches("merge: "));
        }
        out.0
    }

    /// Problems with the files and directories the configuration names.
    fn file_problems(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        if !self.db_path.as_os_str().is_empty() {
            let parent = match self.db_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                out.add(
                    "db_path",
                    format!(
                        "the directory {} does not exist (the database file itself may be missing, its directory may not)",
                        parent.display()
                    ),
                );
            } else if self.db_path.is_dir() {
                out.add(
                    "db_path",
                    format!(
                        "{} is a directory, not a database file",
                        self.db_path.display()
                    ),
                );
            }
        }
        if let Some(dir) = &self.snapshot.file_dir {
            if !dir.is_dir() {
                out.add(
                    "snapshot.file_dir",
                    format!("the directory {} does not exist", dir.display()),
                );
            }
        }
        let nats = &self.nats;
        for (key, file) in [
            ("nats.server_config", &nats.server_config),
            ("nats.server_binary", &nats.server_binary),
            ("nats.seed_file", &nats.seed_file),
            ("nats.creds_file", &nats.creds_file),
            ("nats.ca_file", &nats.ca_file),
            ("nats.cert_file", &nats.cert_file),
            ("nats.key_file", &nats.key_file),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    out.add(key, format!("the file {} does not exist", file.display()));
                }
            }
        }
        self.scopes.file_problems(&mut out);
        out.0
    }

    /// The data directory: `data_dir`, or `<db_path>.harmonylite` beside the database.
    pub fn effective_data_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(dir) => dir.clone(),
            None => {
                let mut name = self.db_path.as_os_str().to_owned();
                name.push(".harmonylite");
                PathBuf::from(name)
            }
        }
    }

    /// Replicas of the snapshot buckets: `snapshot.nats_replicas`, else
    /// `replication_log.replicas`.
    pub fn snapshot_replicas(&self) -> usize {
        self.snapshot
            .nats_replicas
            .unwrap_or(self.replication_log.replicas) as usize
    }

    /// The core store's options for a replica with id `node_id`: `exclude_tables`,
    /// `publish`, `max_clock_ahead`, `replication_log.compress`, `[scopes]` and `[merge]` map onto it; frame size
    /// and busy timeout keep [`StoreOptions::new`]'s defaults.
    pub fn store_options(&self, node_id: NodeId) -> StoreOptions {
        StoreOptions {
            exclude_tables: self.exclude_tables.clone(),
            publish: self.publish,
            compression: if self.replication_log.compress {
                Compression::Lz4
            } else {
                Compression::None
            },
            max_clock_ahead: self.max_clock_ahead,
            // Checked when the configuration was loaded: an error cannot happen here.
            scopes: self.scopes.rules().unwrap_or_default(),
            merge: self.merge.as_ref().map(|m| m.config().unwrap_or_default()),
            ..StoreOptions::new(node_id)
        }
    }

    /// The core engine's tuning: `polling_interval`, `scan_max_changes` (as `apply_batch`),
    /// `cleanup_interval` (as `parked_retry_interval`) and `publish` map onto it; the
    /// publish window and retry backoff keep [`EngineConfig::default`]'s values.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            polling_interval: self.polling_interval,
            apply_batch: self.scan_max_changes,
            parked_retry_interval: self.cleanup_interval,
            publish: self.publish,
            ..EngineConfig::default()
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }
}

fn check_urls(out: &mut Problems, key: &str, urls: &[String], schemes: &[&str]) {
    for url in urls {
        let ok = schemes
            .iter()
            .any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s));
        if !ok {
            out.add(
                key,
                format!(
                    "{url:?} must start with {} followed by host:port",
                    schemes.join(", ")
                ),
            );
        }
    }
}

/// URL scheme of peers found through DNS.
pub const DNS_SCHEME: &str = "dns://";

/// Splits `dns://name:port` into its name and port; `None` when `peer` is not a `dns://`
/// peer, `Some(Err(why))` when it is one but malformed.
pub fn parse_dns_peer(peer: &str) -> Option<Result<(&str, u16), String>> {
    let scheme = peer.get(..DNS_SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(DNS_SCHEME) {
        return None;
    }
    let rest = &peer[DNS_SCHEME.len()..];
    let parsed = rest
        .rsplit_once(':')
        .filter(|(name, _)| !name.is_empty() && !name.contains(['/', '@', '[', ']']))
        .and_then(|(name, port)| Some((name, port.parse::<u16>().ok().filter(|p| *p != 0)?)));
    Some(parsed.ok_or_else(|| {
        format!("{peer:?} must look like dns://name:port (e.g. dns://harmonylite-headless:6222)")
    }))
}

/// A subject prefix: dot-separated non-empty tokens without wildcards or whitespace.
fn check_subject_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("must not be empty");
    }
    if prefix.split('.').any(str::is_empty) {
        return Err("must not start or end with `.` or contain `..`");
    }
    if prefix
        .chars()
        .any(|c| c == '*' || c == '>' || c.is_whitespace())
    {
        return Err("must not contain `*`, `>` or whitespace");
    }
    Ok(())
}

/// A stream-name prefix: JetStream stream names cannot contain `.`, `*`, `>`, path separators
/// or whitespace.
fn check_stream_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("must not be empty");
    }
    if prefix
        .chars()
        .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
    {
        return Err("must not contain `.`, `*`, `>`, `/`, `\\` or whitespace");
    }
    Ok(())
}

/// Problems of `[snapshot.s3]`: required with `store = "s3"`, refused without it.
fn s3_problems(out: &mut Problems, snap: &SnapshotConfig) {
    let s3 = &snap.s3;
    if snap.store != SnapshotStoreKind::S3 {
        if *s3 != S3Config::default() {
            out.add(
                "snapshot.s3",
                "configures the S3 store, which is not used unless `snapshot.store = \"s3\"`",
            );
        }
        return;
    }
    match &s3.bucket {
        None => out.add(
            "snapshot.s3.bucket",
            "needed with `snapshot.store = \"s3\"` (an existing bucket)",
        ),
        Some(bucket) => {
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
                && !bucket.starts_with(['.', '-'])
                && !bucket.ends_with(['.', '-']);
            if !valid {
                out.add(
                    "snapshot.s3.bucket",
                    format!("{bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, `.` and `-`)"),
                );
            }
        }
    }
    if let Some(endpoint) = &s3.endpoint {
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        let host = rest.unwrap_or(endpoint);
        if host.is_empty() || (rest.is_none() && endpoint.contains("://")) {
            out.add(
                "snapshot.s3.endpoint",
                format!("{endpoint:?} must be host:port or an http:// or https:// URL"),
            );
        }
    }
    let path = s3.path.trim_matches('/');
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        && !path.is_empty()
    {
        out.add(
            "snapshot.s3.path",
            "must be a key prefix like `harmonylite/snapshots` (no empty, `.` or `..` segments)",
        );
    }
    match (&s3.access_key, &s3.secret) {
        (Some(_), None) => out.add("snapshot.s3.access_key", "needs `snapshot.s3.secret`"),
        (None, Some(_)) => out.add("snapshot.s3.secret", "needs `snapshot.s3.access_key`"),
        _ => {}
    }
    if s3.session_token.is_some() && s3.access_key.is_none() {
        out.add(
            "snapshot.s3.session_token",
            "needs `snapshot.s3.access_key` and `snapshot.s3.secret`",
        );
    }
}

/// A JetStream object store or key-value bucket name: letters, digits, `-` and `_`.
fn check_bucket_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may contain only letters, digits, `-` and `_`");
    }
    Ok(())
}

/// A Prometheus metric-name prefix: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn check_metric_namespace(namespace: &str) -> Result<(), &'static str> {
    let mut chars = namespace.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if valid {
        Ok(())
    } else {
        Err("must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    }
}

/// The dotted key a TOML error concerns. `toml` tracks it but only prints it when it has no
/// source text to show, so render a copy without the source and read the `in `...`` line.
fn error_key(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let text = bare.to_string();
    let line = text.lines().rev().find(|l| l.starts_with("in `"))?;
    let key = line.strip_prefix("in `")?.strip_suffix('`')?;
    (!key.is_empty()).then(|| key.to_owned())
}

fn yes() -> bool {
    true
}

fn default_scan_max_changes() -> usize {
    512
}

fn default_cleanup_interval() -> Duration {
    Duration::from_millis(5000)
}

fn default_polling_interval() -> Duration {
    Duration::from_millis(1000)
}

fn default_max_clock_ahead() -> Duration {
    Duration::from_secs(300)
}

/// A duration written as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A duration written as whole seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// `node_id`: a positive integer, or a string of hex digits; written back as hex.
mod node_id_serde {
    use std::fmt;

    use harmonylite_core::hlc::NodeId;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(id) => s.serialize_str(&id.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
        d.deserialize_any(NodeIdVisitor).map(Some)
    }

    struct NodeIdVisitor;

    impl Visitor<'_> for NodeIdVisitor {
        type Value = NodeId;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a positive integer or a string of 1 to 32 hex digits")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeId, E> {
            u128::try_from(v)
                .ok()
                .and_then(NodeId::from_u128)
                .ok_or_else(|| {
                    E::custom(format_args!(
                        "node_id {v} is not a node id: expected a positive integer or a string of 1 to 32 hex digits"
                    ))
                })
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeId, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(-1))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeId, E> {
            super::parse_node_id(v).map_err(|e| E::custom(format_args!("node_id {e}")))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/node.toml");
    const DOCS: &str = include_str!("../../../docs/configuration.md");

    /// A directory that exists, for `db_path`'s parent.
    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn minimal(dir: &Path) -> String {
        format!("db_path = {:?}\n", dir.join("app.db").display().to_string())
    }

    fn with(dir: &Path, extra: &str) -> String {
        format!("{}{extra}\n", minimal(dir))
    }

    /// Loads `text`, expecting an error; returns its message.
    fn error_of(text: &str) -> (ConfigError, String) {
        let error = Config::from_toml_str(text, "test.toml").expect_err("should be refused");
        let message = error.to_string();
        assert!(
            message.contains("test.toml"),
            "message names the origin: {message}"
        );
        (error, message)
    }

    /// Asserts `text` is refused during validation with exactly one problem about `key`.
    fn invalid(text: &str, key: &str) -> String {
        let (error, message) = error_of(text);
        match &error {
            ConfigError::Invalid { problems, .. } => {
                assert_eq!(problems.len(), 1, "{message}");
                assert_eq!(problems[0].key, key, "{message}");
            }
            other => panic!("expected a validation error for {key}, got {other}"),
        }
        assert!(
            message.contains(&format!("`{key}`")),
            "message names {key}: {message}"
        );
        message
    }

    /// Asserts `text` is refused by the parser and the message names `needle`.
    fn refused(text: &str, needle: &str) -> String {
        let (error, message) = error_of(text);
        assert!(
            matches!(error, ConfigError::Parse { .. }),
            "expected a parse error: {message}"
        );
        assert!(
            message.contains(needle),
            "message names {needle}: {message}"
        );
        message
    }

    #[test]
    fn defaults() {
        let dir = tmp();
        let c = Config::from_toml_str(&minimal(dir.path()), "test.toml").unwrap();
        assert_eq!(c.db_path, dir.path().join("app.db"));
        assert_eq!(c.node_id, None);
        assert!(c.publish);
        assert!(c.replicate);
        assert_eq!(c.scan_max_changes, 512);
        assert_eq!(c.cleanup_interval, Duration::from_millis(5000));
        assert_eq!(c.polling_interval, Duration::from_millis(1000));
        assert!(c.exclude_tables.is_empty());
        assert_eq!(c.data_dir, None);
        assert_eq!(
            c.effective_data_dir(),
            dir.path().join("app.db.harmonylite")
        );
        assert_eq!(c.max_clock_ahead, Duration::from_secs(300));
        assert_eq!(c.sleep_timeout, Duration::ZERO, "serverless mode is off");

        assert_eq!(c.replication_log.shards, 1);
        assert_eq!(c.replication_log.max_entries, 1_000_000);
        assert_eq!(c.replication_log.replicas, 1);
        assert!(c.replication_log.compress);

        let n = &c.nats;
        assert!(n.urls.is_empty());
        assert!(n.embedded());
        assert_eq!(n.bind_address, "127.0.0.1:4222".parse().unwrap());
        assert_eq!(n.cluster_addr, None);
        assert!(n.cluster_peers.is_empty());
        assert!(n.leaf_servers.is_empty());
        assert_eq!(n.websocket_bind, None);
        assert_eq!(n.server_config, None);
        assert_eq!(n.server_binary, None);
        assert_eq!(n.subject_prefix, "harmonylite-change-log");
        assert_eq!(n.stream_prefix, "harmonylite-changes");
        assert_eq!(n.user_name, None);
        assert_eq!(n.user_password, None);
        assert_eq!(n.token, None);
        assert_eq!(n.seed_file, None);
        assert_eq!(n.creds_file, None);
        assert_eq!(n.ca_file, None);
        assert_eq!(n.cert_file, None);
        assert_eq!(n.key_file, None);
        assert_eq!(n.reconnect_wait, Duration::from_secs(2));
        assert_eq!(n.connect_timeout, Duration::from_secs(5));

        assert!(!c.prometheus.enable);
        assert_eq!(c.prometheus.bind, "127.0.0.1:3010".parse().unwrap());
        assert_eq!(c.prometheus.namespace, "harmonylite");

        assert!(!c.health_check.enable);
        assert_eq!(c.health_check.bind, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(c.health_check.path, "/health");

        assert!(!c.logging.verbose);
        assert_eq!(c.logging.format, LogFormat::Console);

        let snap = &c.snapshot;
        assert!(snap.enable);
        assert_eq!(snap.interval, Duration::from_secs(3600));
        assert_eq!(snap.every_messages, 100_000);
        assert_eq!(snap.store, SnapshotStoreKind::Nats);
        assert_eq!(snap.nats_bucket, "harmonylite-snapshots");
        assert_eq!(snap.nats_replicas, None);
        assert_eq!(c.snapshot_replicas(), 1);
        assert_eq!(snap.file_dir, None);
        assert_eq!(snap.keep, 3);
    }

    #[test]
    fn snapshot_section() {
        let dir = tmp();
        let snaps = dir.path().join("snaps");
        std::fs::create_dir(&snaps).unwrap();
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                &format!(
                    "[replication_log]\nreplicas = 3\n[snapshot]\nenabled = false\ninterval = 60000\nevery_messages = 0\nstore = \"file\"\nfile_dir = {:?}\nkeep = 5",
                    snaps.display().to_string()
                ),
            ),
            "test.toml",
        )
        .unwrap();
        assert!(!c.snapshot.enable, "HarmonyLite's `enabled` is accepted");
        assert_eq!(c.snapshot.interval, Duration::from_secs(60));
        assert_eq!(c.snapshot.every_messages, 0);
        assert_eq!(c.snapshot.store, SnapshotStoreKind::File);
        assert_eq!(c.snapshot.file_dir.as_deref(), Some(snaps.as_path()));
        assert_eq!(c.snapshot.keep, 5);
        assert_eq!(c.snapshot_replicas(), 3);

        invalid(&with(dir.path(), "[snapshot]\nkeep = 0"), "snapshot.keep");
        invalid(
            &with(dir.path(), "[snapshot]\nnats_bucket = \"a.b\""),
            "snapshot.nats_bucket",
        );
        invalid(
            &with(dir.path(), "[snapshot]\nnats_replicas = 6"),
            "snapshot.nats_replicas",
        );
        invalid(
            &with(dir.path(), "[snapshot]\nstore = \"file\""),
            "snapshot.file_dir",
        );
        invalid(
            &with(
                dir.path(),
                &format!("[snapshot]\nfile_dir = {:?}", snaps.display().to_string()),
            ),
            "snapshot.file_dir",
        );
        invalid(
            &with(
                dir.path(),
                "[snapshot]\nstore = \"file\"\nfile_dir = \"/no/such/dir\"",
            ),
            "snapshot.file_dir",
        );
        refused(
            &with(dir.path(), "[snapshot]\nstore = \"webdav\""),
            "snapshot.store",
        );
    }

    #[test]
    fn s3_snapshot_store_section() {
        let dir = tmp();
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = \"127.0.0.1:9000\"\nbucket = \"snaps\"\npath = \"hl/prod\"\nregion = \"eu-west-1\"\npath_style = true\nuse_ssl = false\naccess_key = \"AK\"\nsecret = \"SK\"\nsession_token = \"ST\"",
            ),
            "test.toml",
        )
        .unwrap();
        let s3 = &c.snapshot.s3;
        assert_eq!(c.snapshot.store, SnapshotStoreKind::S3);
        assert_eq!(s3.endpoint.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(s3.bucket.as_deref(), Some("snaps"));
        assert_eq!(s3.path, "hl/prod");
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert!(s3.path_style && !s3.use_ssl);
        assert_eq!(s3.access_key.as_deref(), Some("AK"));
        assert_eq!(s3.secret.as_ref().map(Secret::expose), Some("SK"));
        assert!(
            !format!("{c:?}").contains("SK"),
            "secrets stay out of Debug"
        );

        let s3 = |extra: &str| {
            with(
                dir.path(),
                &format!("[snapshot]\nstore = \"s3\"\n[snapshot.s3]\n{extra}"),
            )
        };
        Config::from_toml_str(&s3("bucket = \"b-1.x\""), "test.toml").unwrap();
        invalid(&s3(""), "snapshot.s3.bucket");
        invalid(&s3("bucket = \"Bad_Name\""), "snapshot.s3.bucket");
        invalid(
            &s3("bucket = \"b-1\"\naccess_key = \"a\""),
            "snapshot.s3.access_key",
        );
        invalid(
            &s3("bucket = \"b-1\"\nsecret = \"s\""),
            "snapshot.s3.secret",
        );
        invalid(
            &s3("bucket = \"b-1\"\nsession_token = \"t\""),
            "snapshot.s3.session_token",
        );
        invalid(
            &s3("bucket = \"b-1\"\nendpoint = \"ftp://x\""),
            "snapshot.s3.endpoint",
        );
        invalid(&s3("bucket = \"b-1\"\npath = \"a//b\""), "snapshot.s3.path");
        refused(&s3("bucket = \"b-1\"\nbukket = \"x\""), "bukket");
        invalid(
            &with(dir.path(), "[snapshot.s3]\nbucket = \"b-1\""),
            "snapshot.s3",
        );
    }

    #[test]
    fn sections_default_like_their_default_impls() {
        let dir = tmp();
        let c = Config::from_toml_str(&minimal(dir.path()), "test.toml").unwrap();
        assert_eq!(c.replication_log, ReplicationLogConfig::default());
        assert_eq!(c.nats, NatsConfig::default());
        assert_eq!(c.prometheus, PrometheusConfig::default());
        assert_eq!(c.health_check, HealthCheckConfig::default());
        assert_eq!(c.logging, LoggingConfig::default());
        assert_eq!(c.snapshot, SnapshotConfig::default());
        assert_eq!(c.scopes, scopes::ScopesConfig::default());
    }

    #[test]
    fn values_are_read() {
        let dir = tmp();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let text = with(
            dir.path(),
            &format!(
                r#"node_id = "1a"
publish = false
replicate = false
scan_max_changes = 64
cleanup_interval = 250
polling_interval = 100
exclude_tables = ["sessions", "cache"]
data_dir = "/var/lib/hl"
max_clock_ahead = 60
sleep_timeout = 30000

[replication_log]
shards = 1
max_entries = 5000
replicas = 3
compress = false

[nats]
urls = ["nats://a:4222", "tls://b:4222"]
subject_prefix = "app.changes"
stream_prefix = "app-changes"
token = "s3cret"
ca_file = {ca:?}
reconnect_wait_seconds = 7
connect_timeout_seconds = 9

[prometheus]
enable = true
bind = "0.0.0.0:9100"
namespace = "app"

[health_check]
enable = true
bind = "[::1]:8091"
path = "/healthz"

[logging]
verbose = true
format = "json"
"#,
                ca = ca.display().to_string()
            ),
        );
        let c = Config::from_toml_str(&text, "test.toml").unwrap();
        assert_eq!(c.node_id, NodeId::from_u128(0x1a));
        assert!(!c.publish && !c.replicate);
        assert_eq!(c.scan_max_changes, 64);
        assert_eq!(c.cleanup_interval, Duration::from_millis(250));
        assert_eq!(c.polling_interval, Duration::from_millis(100));
        assert_eq!(c.exclude_tables, ["sessions", "cache"]);
        assert_eq!(c.effective_data_dir(), PathBuf::from("/var/lib/hl"));
        assert_eq!(c.max_clock_ahead, Duration::from_secs(60));
        assert_eq!(c.sleep_timeout, Duration::from_secs(30));
        assert_eq!(
            c.replication_log,
            ReplicationLogConfig {
                shards: 1,
                max_entries: 5000,
                replicas: 3,
                compress: false
            }
        );
        assert!(!c.nats.embedded());
        assert_eq!(c.nats.urls, ["nats://a:4222", "tls://b:4222"]);
        assert_eq!(c.nats.subject_prefix, "app.changes");
        assert_eq!(c.nats.stream_prefix, "app-changes");
        assert_eq!(c.nats.token.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(c.nats.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(c.nats.reconnect_wait, Duration::from_secs(7));
        assert_eq!(c.nats.connect_timeout, Duration::from_secs(9));
        assert!(c.prometheus.enable);
        assert_eq!(c.prometheus.bind, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(c.prometheus.namespace, "app");
        assert!(c.health_check.enable);
        assert_eq!(c.health_check.bind, "[::1]:8091".parse().unwrap());
        assert_eq!(c.health_check.path, "/healthz");
        assert!(c.logging.verbose);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides secrets");
    }

    #[test]
    fn node_id_forms() {
        let dir = tmp();
        let id = |v: &str| {
            Config::from_toml_str(&with(dir.path(), &format!("node_id = {v}")), "test.toml")
                .map(|c| c.node_id.unwrap().as_u128())
        };
        assert_eq!(id("26").unwrap(), 26);
        assert_eq!(id("\"1A\"").unwrap(), 0x1a);
        assert_eq!(id(&format!("\"{}\"", "f".repeat(32))).unwrap(), u128::MAX);
        assert_eq!(parse_node_id("00ff").unwrap().as_u128(), 0xff);
        assert!(parse_node_id("").is_err());
        assert!(parse_node_id("+1").is_err());
        assert!(parse_node_id("0x1").is_err());
        assert!(parse_node_id(&format!("0{}", "f".repeat(32))).is_err());
    }

    #[test]
    fn node_id_errors_name_the_key() {
        let dir = tmp();
        let too_long = format!("\"1{}\"", "0".repeat(32));
        for bad in [
            "0",
            "-3",
            "\"0\"",
            "\"00000\"",
            "\"xyz\"",
            "\"\"",
            too_long.as_str(),
            "1.5",
            "true",
        ] {
            let message = refused(&with(dir.path(), &format!("node_id = {bad}")), "node_id");
            assert!(message.contains("line 2"), "{message}");
        }
    }

    #[test]
    fn merge_section_maps_onto_the_store_and_names_bad_counters() {
        let dir = tmp();
        let c = Config::from_toml_str(&minimal(dir.path()), "test.toml").unwrap();
        assert_eq!(c.store_options(NodeId::from_u128(1).unwrap()).merge, None);
        let text = with(
            dir.path(),
            "[merge]\ncolumn = [\"notes\"]\ncounters = [\"stock.qty\"]",
        );
        let c = Config::from_toml_str(&text, "test.toml").unwrap();
        let merge = c
            .store_options(NodeId::from_u128(1).unwrap())
            .merge
            .unwrap();
        assert!(merge.table("notes").is_some());
        assert!(merge.table("stock").unwrap().is_counter("qty"));
        let message = invalid(&with(dir.path(), "[merge]\ncounters = [\"qty\"]"), "merge");
        assert!(message.contains("table.column"), "{message}");
    }

    #[test]
    fn missing_db_path_is_named() {
        refused("publish = true\n", "db_path");
    }

    #[test]
    fn db_path_parent_must_exist() {
        let dir = tmp();
        let text = format!(
            "db_path = {:?}\n",
            dir.path().join("missing/app.db").display().to_string()
        );
        let message = invalid(&text, "db_path");
        assert!(message.contains("missing"), "{message}");
    }

    #[test]
    fn db_path_may_be_missing_but_not_a_directory() {
        let dir = tmp();
        assert!(!dir.path().join("app.db").exists());
        Config::from_toml_str(&minimal(dir.path()), "test.toml").unwrap();
        let text = format!("db_path = {:?}\n", dir.path().display().to_string());
        invalid(&text, "db_path");
        invalid("db_path = \"\"\n", "db_path");
    }

    #[test]
    fn relative_db_path_in_working_directory() {
        Config::from_toml_str("db_path = \"app.db\"\n", "test.toml").unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tmp();
        let message = refused(&with(dir.path(), "dbpath = \"x\""), "dbpath");
        assert!(message.contains("line 2"), "{message}");
        for section in [
            "replication_log",
            "nats",
            "prometheus",
            "health_check",
            "logging",
            "scopes",
            "merge",
        ] {
            let text = with(dir.path(), &format!("[{section}]\nbogus_key = 1"));
            let (error, message) = error_of(&text);
            assert!(message.contains("bogus_key"), "{message}");
            assert!(message.contains("line 3"), "{message}");
            assert_eq!(error.keys(), [section], "{message}");
        }
        refused(&with(dir.path(), "[snapshots]\nenable = true"), "snapshots");
    }

    #[test]
    fn wrong_types_are_named() {
        let dir = tmp();
        for (extra, key) in [
            ("publish = \"yes\"", "publish"),
            ("scan_max_changes = -1", "scan_max_changes"),
            ("exclude_tables = \"t\"", "exclude_tables"),
            (
                "[replication_log]\nshards = \"two\"",
                "replication_log.shards",
            ),
            ("[nats]\nurls = \"nats://a:4222\"", "nats.urls"),
            ("[nats]\nbind_address = \"localhost\"", "nats.bind_address"),
            ("[nats]\ncluster_addr = \"nope\"", "nats.cluster_addr"),
            ("[nats]\nwebsocket_bind = 8080", "nats.websocket_bind"),
            ("[prometheus]\nbind = \"x:y\"", "prometheus.bind"),
            ("[health_check]\nbind = \"\"", "health_check.bind"),
            ("[logging]\nverbose = 1", "logging.verbose"),
        ] {
            let (error, message) = error_of(&with(dir.path(), extra));
            assert_eq!(error.keys(), [key], "{message}");
            assert!(message.contains(&format!("`{key}`")), "{message}");
            assert!(message.contains("line "), "{message}");
        }
    }

    #[test]
    fn log_format_lists_allowed_values() {
        let dir = tmp();
        let message = refused(
            &with(dir.path(), "[logging]\nformat = \"xml\""),
            "logging.format",
        );
        assert!(
            message.contains("console") && message.contains("json"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let dir = tmp();
        let message = refused(&with(dir.path(), "publish = "), "line 2");
        assert!(message.contains("test.toml"), "{message}");
    }

    #[test]
    fn counts_and_intervals_must_be_positive() {
        let dir = tmp();
        for (extra, key) in [
            ("scan_max_changes = 0", "scan_max_changes"),
            ("cleanup_interval = 0", "cleanup_interval"),
            ("polling_interval = 0", "polling_interval"),
            ("max_clock_ahead = 0", "max_clock_ahead"),
            ("[replication_log]\nshards = 0", "replication_log.shards"),
            ("[replication_log]\nshards = 2", "replication_log.shards"),
            (
                "[replication_log]\nmax_entries = 0",
                "replication_log.max_entries",
            ),
            (
                "[replication_log]\nreplicas = 0",
                "replication_log.replicas",
            ),
            (
                "[replication_log]\nreplicas = 6",
                "replication_log.replicas",
            ),
            (
                "[nats]\nreconnect_wait_seconds = 0",
                "nats.reconnect_wait_seconds",
            ),
            (
                "[nats]\nconnect_timeout_seconds = 0",
                "nats.connect_timeout_seconds",
            ),
        ] {
            invalid(&with(dir.path(), extra), key);
        }
        Config::from_toml_str(
            &with(dir.path(), "[replication_log]\nreplicas = 5"),
            "test.toml",
        )
        .unwrap();
    }

    #[test]
    fn names_and_prefixes_are_checked() {
        let dir = tmp();
        for (extra, key) in [
            ("exclude_tables = [\"ok\", \"\"]", "exclude_tables"),
            ("[nats]\nsubject_prefix = \"\"", "nats.subject_prefix"),
            ("[nats]\nsubject_prefix = \"a.*\"", "nats.subject_prefix"),
            ("[nats]\nsubject_prefix = \"a..b\"", "nats.subject_prefix"),
            ("[nats]\nsubject_prefix = \"a b\"", "nats.subject_prefix"),
            ("[nats]\nstream_prefix = \"a.b\"", "nats.stream_prefix"),
            ("[nats]\nstream_prefix = \"\"", "nats.stream_prefix"),
            (
                "[prometheus]\nnamespace = \"9lives\"",
                "prometheus.namespace",
            ),
            ("[prometheus]\nnamespace = \"a-b\"", "prometheus.namespace"),
            ("[health_check]\npath = \"health\"", "health_check.path"),
        ] {
            invalid(&with(dir.path(), extra), key);
        }
    }

    #[test]
    fn urls_need_a_known_scheme() {
        let dir = tmp();
        for url in ["nats://a:4222", "TLS://a:4222", "ws://a:80", "wss://a:443"] {
            Config::from_toml_str(
                &with(dir.path(), &format!("[nats]\nurls = [{url:?}]")),
                "test.toml",
            )
            .unwrap();
        }
        for url in ["a:4222", "http://a:4222", "nats://", ""] {
            invalid(
                &with(dir.path(), &format!("[nats]\nurls = [{url:?}]")),
                "nats.urls",
            );
        }
        invalid(
            &with(
                dir.path(),
                "[nats]\ncluster_addr = \"0.0.0.0:6222\"\ncluster_peers = [\"tls://b:6222\"]",
            ),
            "nats.cluster_peers",
        );
        invalid(
            &with(dir.path(), "[nats]\nleaf_servers = [\"b:7422\"]"),
            "nats.leaf_servers",
        );
    }

    #[test]
    fn dns_cluster_peers_need_a_name_and_port() {
        let dir = tmp();
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                "[nats]\ncluster_addr = \"0.0.0.0:6222\"\ncluster_peers = [\"dns://hl-headless:6222\"]",
            ),
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.nats.cluster_peers, ["dns://hl-headless:6222"]);
        let why = invalid(
            &with(
                dir.path(),
                "[nats]\ncluster_addr = \"0.0.0.0:6222\"\ncluster_peers = [\"dns://hl-headless\"]",
            ),
            "nats.cluster_peers",
        );
        assert!(why.contains("dns://name:port"), "{why}");
    }

    #[test]
    fn cluster_peers_need_cluster_addr() {
        let dir = tmp();
        invalid(
            &with(dir.path(), "[nats]\ncluster_peers = [\"nats://b:6222\"]"),
            "nats.cluster_peers",
        );
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                "[nats]\ncluster_addr = \"0.0.0.0:6222\"\ncluster_peers = [\"nats://b:6222\", \"nats://c:6222\"]\nleaf_servers = [\"tls://hub:7422\"]\nwebsocket_bind = \"127.0.0.1:8080\"",
            ),
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.nats.cluster_addr, Some("0.0.0.0:6222".parse().unwrap()));
        assert_eq!(c.nats.cluster_peers.len(), 2);
        assert_eq!(
            c.nats.websocket_bind,
            Some("127.0.0.1:8080".parse().unwrap())
        );
    }

    #[test]
    fn embedded_server_settings_conflict_with_urls() {
        let dir = tmp();
        let binary = dir.path().join("nats-server");
        std::fs::write(&binary, "").unwrap();
        let server_binary = format!("server_binary = {:?}", binary.display().to_string());
        let server_config = format!("server_config = {:?}", binary.display().to_string());
        for (extra, key) in [
            ("cluster_addr = \"0.0.0.0:6222\"", "nats.cluster_addr"),
            ("leaf_servers = [\"nats://hub:7422\"]", "nats.leaf_servers"),
            ("websocket_bind = \"0.0.0.0:8080\"", "nats.websocket_bind"),
            (server_binary.as_str(), "nats.server_binary"),
            (server_config.as_str(), "nats.server_config"),
        ] {
            invalid(
                &with(
                    dir.path(),
                    &format!("[nats]\nurls = [\"nats://a:4222\"]\n{extra}"),
                ),
                key,
            );
        }
    }

    #[test]
    fn named_files_must_exist() {
        let dir = tmp();
        let missing = dir.path().join("nope").display().to_string();
        for key in [
            "server_config",
            "server_binary",
            "seed_file",
            "creds_file",
            "ca_file",
        ] {
            let message = invalid(
                &with(dir.path(), &format!("[nats]\n{key} = {missing:?}")),
                &format!("nats.{key}"),
            );
            assert!(message.contains(&missing), "{message}");
        }
        let present = dir.path().join("present.pem");
        std::fs::write(&present, "pem").unwrap();
        let present = present.display().to_string();
        invalid(
            &with(
                dir.path(),
                &format!("[nats]\ncert_file = {missing:?}\nkey_file = {present:?}"),
            ),
            "nats.cert_file",
        );
        invalid(
            &with(
                dir.path(),
                &format!("[nats]\ncert_file = {present:?}\nkey_file = {missing:?}"),
            ),
            "nats.key_file",
        );
    }

    #[test]
    fn pairs_must_be_given_together() {
        let dir = tmp();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "pem").unwrap();
        let pem = pem.display().to_string();
        invalid(
            &with(dir.path(), &format!("[nats]\ncert_file = {pem:?}")),
            "nats.cert_file",
        );
        invalid(
            &with(dir.path(), &format!("[nats]\nkey_file = {pem:?}")),
            "nats.key_file",
        );
        invalid(
            &with(dir.path(), "[nats]\nuser_name = \"u\""),
            "nats.user_name",
        );
        invalid(
            &with(dir.path(), "[nats]\nuser_password = \"p\""),
            "nats.user_password",
        );
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                &format!(
                    "[nats]\nuser_name = \"u\"\nuser_password = \"p\"\ncert_file = {pem:?}\nkey_file = {pem:?}\nca_file = {pem:?}"
                ),
            ),
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.nats.user_name.as_deref(), Some("u"));
        assert_eq!(c.nats.user_password, Some(Secret::new("p")));
    }

    #[test]
    fn one_authentication_method() {
        let dir = tmp();
        let file = dir.path().join("auth").display().to_string();
        std::fs::write(&file, "x").unwrap();
        let user = "user_name = \"u\"\nuser_password = \"p\"";
        let token = "token = \"t\"";
        let seed = format!("seed_file = {file:?}");
        let creds = format!("creds_file = {file:?}");
        for (a, b, key) in [
            (user, token, "nats.token"),
            (user, seed.as_str(), "nats.seed_file"),
            (token, creds.as_str(), "nats.creds_file"),
            (seed.as_str(), creds.as_str(), "nats.creds_file"),
        ] {
            let message = invalid(&with(dir.path(), &format!("[nats]\n{a}\n{b}")), key);
            assert!(message.contains("only one authentication"), "{message}");
        }
    }

    #[test]
    fn several_problems_are_all_reported() {
        let dir = tmp();
        let (error, message) = error_of(&with(
            dir.path(),
            "scan_max_changes = 0\n[replication_log]\nshards = 0",
        ));
        assert_eq!(
            error.keys(),
            ["scan_max_changes", "replication_log.shards"],
            "{message}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tmp();
        let path = dir.path().join("node.toml");
        let error = Config::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().contains("node.toml"), "{error}");

        std::fs::write(&path, with(dir.path(), "[nats]\nurls = [1]")).unwrap();
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("nats.urls"), "{message}");

        std::fs::write(&path, minimal(dir.path())).unwrap();
        Config::load(&path).unwrap();
    }

    #[test]
    fn maps_onto_core_types() {
        let dir = tmp();
        let c = Config::from_toml_str(
            &with(
                dir.path(),
                "publish = false\nscan_max_changes = 7\ncleanup_interval = 1500\npolling_interval = 40\nexclude_tables = [\"t\"]\nmax_clock_ahead = 9\n[replication_log]\ncompress = false",
            ),
            "test.toml",
        )
        .unwrap();
        let id = NodeId::from_u128(5).unwrap();
        let store = c.store_options(id);
        let base = StoreOptions::new(id);
        assert_eq!(store.node_id, id);
        assert_eq!(store.exclude_tables, ["t"]);
        assert!(!store.publish);
        assert_eq!(store.compression, Compression::None);
        assert_eq!(store.max_clock_ahead, Duration::from_secs(9));
        assert_eq!(store.max_frame, base.max_frame);
        assert_eq!(store.busy_timeout, base.busy_timeout);

        let engine = c.engine_config();
        let base = EngineConfig::default();
        assert_eq!(engine.polling_interval, Duration::from_millis(40));
        assert_eq!(engine.apply_batch, 7);
        assert_eq!(engine.parked_retry_interval, Duration::from_millis(1500));
        assert!(!engine.publish);
        assert_eq!(engine.publish_window, base.publish_window);
        assert_eq!(engine.retry_min, base.retry_min);
        assert_eq!(engine.retry_max, base.retry_max);

        let defaults = Config::from_toml_str(&minimal(dir.path()), "test.toml").unwrap();
        assert_eq!(defaults.store_options(id).compression, Compression::Lz4);
        assert!(defaults.store_options(id).publish);
        assert!(defaults.engine_config().publish);
    }

    #[test]
    fn example_config_parses() {
        let c = Config::parse(EXAMPLE, "examples/node.toml").unwrap();
        let problems = c.value_problems();
        assert!(problems.is_empty(), "{problems:?}");
        // Every section appears in the example.
        for section in [
            "[replication_log]",
            "[nats]",
            "[prometheus]",
            "[health_check]",
            "[logging]",
            "[snapshot]",
            "[scopes]",
        ] {
            assert!(EXAMPLE.contains(section), "example lacks {section}");
        }
    }

    /// Every dotted key the code accepts, with its default (`None`: required or unset by
    /// default), derived from the structs themselves.
    fn code_keys() -> BTreeMap<String, Option<toml::Value>> {
        let dir = tmp();
        let defaults = Config::parse(&minimal(dir.path()), "test.toml").unwrap();
        let mut full = defaults.clone();
        full.node_id = NodeId::from_u128(1);
        full.data_dir = Some("d".into());
        let n = &mut full.nats;
        n.cluster_addr = Some(n.bind_address);
        n.websocket_bind = Some(n.bind_address);
        for file in [
            &mut n.server_config,
            &mut n.server_binary,
            &mut n.seed_file,
            &mut n.creds_file,
            &mut n.ca_file,
            &mut n.cert_file,
            &mut n.key_file,
        ] {
            *file = Some("f".into());
        }
        n.user_name = Some("u".into());
        n.user_password = Some(Secret::new("p"));
        n.token = Some(Secret::new("t"));
        full.snapshot.nats_replicas = Some(1);
        full.snapshot.file_dir = Some("f".into());
        let s3 = &mut full.snapshot.s3;
        s3.endpoint = Some("e".into());
        s3.bucket = Some("b".into());
        s3.region = Some("r".into());
        s3.access_key = Some("a".into());
        s3.secret = Some(Secret::new("s"));
        s3.session_token = Some(Secret::new("t"));
        let auth = &mut full.scopes.auth;
        auth.audience = Some("a".into());
        auth.issuer = Some("i".into());
        for file in [
            &mut auth.hs256_secret_file,
            &mut auth.public_key_file,
            &mut auth.jwks_file,
            &mut auth.callout_seed_file,
        ] {
            *file = Some("f".into());
        }
        full.merge = Some(MergeSection {
            column: vec!["t".into()],
            counters: vec!["t.c".into()],
        });

        let mut with_defaults = BTreeMap::new();
        flatten(
            "",
            &toml::Value::try_from(&defaults).unwrap(),
            &mut with_defaults,
        );
        let mut all = BTreeMap::new();
        flatten("", &toml::Value::try_from(&full).unwrap(), &mut all);
        all.into_keys()
            .map(|k| {
                let default = (k != "db_path").then(|| with_defaults.get(&k).cloned());
                (k, default.flatten())
            })
            .collect()
    }

    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }

    /// Body rows of the Markdown tables in `doc` whose header's first cell is `header`; cells
    /// trimmed, the first without its backticks. (Cells must not contain `|`.)
    pub(crate) fn doc_table_rows(doc: &str, header: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut current: Option<String> = None;
        for line in doc.lines() {
            let line = line.trim();
            let Some(inner) = line.strip_prefix('|').and_then(|l| l.strip_suffix('|')) else {
                current = None;
                continue;
            };
            let mut cells: Vec<String> = inner.split('|').map(|c| c.trim().to_owned()).collect();
            match &current {
                None => current = Some(cells[0].clone()),
                Some(h) if h == header && !cells[0].starts_with("---") => {
                    cells[0] = cells[0].trim_matches('`').to_owned();
                    rows.push(cells);
                }
                Some(_) => {}
            }
        }
        rows
    }

    /// The rows of the key tables of `docs/configuration.md` (tables whose header starts
    /// with `| Key |`): key (without backticks) → default cell.
    fn doc_keys() -> BTreeMap<String, String> {
        doc_table_rows(DOCS, "Key")
            .into_iter()
            .map(|cells| (cells[0].clone(), cells.get(2).cloned().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn docs_list_exactly_the_code_keys() {
        let code: BTreeSet<String> = code_keys().into_keys().collect();
        let docs: BTreeSet<String> = doc_keys().into_keys().collect();
        let undocumented: Vec<_> = code.difference(&docs).collect();
        let unknown: Vec<_> = docs.difference(&code).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "keys missing from docs/configuration.md: {undocumented:?}; documented keys the code does not know: {unknown:?}"
        );
    }

    #[test]
    fn docs_state_the_code_defaults() {
        let docs = doc_keys();
        for (key, default) in code_keys() {
            // A key missing from the docs is reported by `docs_list_exactly_the_code_keys`.
            let Some(cell) = docs.get(&key) else { continue };
            match default {
                Some(value) => {
                    let literal = cell
                        .strip_prefix('`')
                        .and_then(|c| c.strip_suffix('`'))
                        .unwrap_or_else(|| panic!("default of {key} should be a TOML literal in backticks, is {cell:?}"));
                    let parsed: toml::Table = toml::from_str(&format!("v = {literal}"))
                        .unwrap_or_else(|e| panic!("default of {key}: {e}"));
                    assert_eq!(parsed["v"], value, "documented default of {key}");
                }
                None => assert!(
                    !(cell.starts_with('`')
                        && cell.ends_with('`')
                        && cell.matches('`').count() == 2),
                    "{key} has no default, docs say {cell:?}"
                ),
            }
        }
    }

    #[test]
    fn example_mentions_every_key() {
        for key in code_keys().into_keys() {
            let leaf = key.rsplit('.').next().unwrap();
            let mentioned = EXAMPLE.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{leaf} ="))
                    || line.starts_with(&format!("{leaf}="))
                    // An array of tables, e.g. `[[scopes.partition]]`.
                    || line == format!("[[{key}]]")
            });
            assert!(mentioned, "examples/node.toml does not mention {key}");
        }
    }
}
