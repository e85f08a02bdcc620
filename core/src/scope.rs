//! Scopes: which rows an untrusted (scoped) replica may see and write, and the NATS subjects
//! that carry them.
//!
//! A scoped replica (a user's browser) holds only its *partitions*. The rules say, per
//! replicated table, which column(s) name a row's partition:
//!
//! - a **partitioned** table belongs to one [`PartitionRule`] (e.g. rule `user`, table
//!   `notes` partitioned by `owner_id`); a row's partition is the rule plus the row's values
//!   of those columns;
//! - a **shared** table is read by every scoped replica and written only by full nodes;
//! - every other table is **hidden**: never sent to scoped replicas.
//!
//! With scopes on, changes travel on subjects that name their route ([`Subjects`]):
//!
//! ```text
//! <prefix>.1                                 hidden tables (and everything, with scopes off)
//! <prefix>.schema                            replicated schema migrations
//! <prefix>.shared.<table>                    shared tables
//! <prefix>.p.<rule>.<value>[.<value>…].<writer>.<table>   a partition of a partitioned table
//! ```
//!
//! so a scoped replica's NATS permissions can name exactly what it may read
//! (`<prefix>.p.<rule>.<value>.>`) and write (`<prefix>.p.<rule>.<value>.c.*`). The writer
//! token says who published: `f` a full node, whose changes are trusted, `c` a scoped
//! replica, whose changes every node validates against the partition ([`Writer`]). Values and table names become subject tokens by
//! [`value_token`] and [`name_token`]: injective, and safe for any value (dots, spaces,
//! wildcards and non-ASCII text are hex-encoded).
//!
//! The rules are written once and must be identical on every node: [`ScopeRules::fingerprint`]
//! lets nodes compare them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::value::Value;

/// The subject of replicated schema migrations after the prefix, when scopes are on.
pub const SCHEMA_SUFFIX: &str = "schema";

/// What one scope rule says: a named kind of partition, the token claims that grant it, and
/// the tables it partitions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionRule {
    /// The rule's name, a subject token (`[a-z0-9_-]`), e.g. `user` or `team`.
    pub name: String,
    /// The token claims whose values name a user's partitions, one per partition column,
    /// e.g. `["sub"]` or `["teams"]`.
    pub claims: Vec<String>,
    /// Table (lowercase) → its partition columns, as many as `claims`.
    pub tables: BTreeMap<String, Vec<String>>,
}

/// How one table is scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableScope<'a> {
    /// Rows belong to partitions of `rule`, named by the values of `columns`.
    Partitioned {
        /// The rule.
        rule: &'a PartitionRule,
        /// The table's partition columns, in the rule's claim order.
        columns: &'a [String],
    },
    /// Every scoped replica reads it; only full nodes write it.
    Shared,
    /// Never sent to scoped replicas.
    Hidden,
}

/// One partition: a rule and the values of its columns, e.g. `user = ["u1"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    /// The rule's name.
    pub rule: String,
    /// The partition columns' values, in the rule's claim order.
    pub values: Vec<Value>,
}

impl Partition {
    /// The partition as subject tokens: the rule, then each value's [`value_token`],
    /// dot-separated (e.g. `user.tu1`).
    pub fn token(&self) -> String {
        let mut out = self.rule.clone();
        for value in &self.values {
            out.push('.');
            out.push_str(&value_token(value));
        }
        out
    }

    /// Reads [`Partition::token`] back.
    pub fn from_token(token: &str) -> Option<Partition> {
        let mut tokens = token.split('.');
        let rule = tokens.next().filter(|r| is_rule_name(r))?.to_owned();
        let values = tokens.map(parse_value_token).collect::<Option<Vec<_>>>()?;
        (!values.is_empty()).then_some(Partition { rule, values })
    }
}

impl std::fmt::Display for Partition {
    /// The rule and its values as SQL literals, e.g. `user='alice'` or `team=42,'eu'`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=", self.rule)?;
        for (i, value) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match value {
                Value::Null => f.write_str("NULL")?,
                Value::Integer(n) => write!(f, "{n}")?,
                Value::Real(r) => write!(f, "{r:?}")?,
                Value::Text(t) => write!(f, "'{}'", t.replace('\'', "''"))?,
                Value::Blob(b) => {
                    f.write_str("X'")?;
                    for byte in b {
                        write!(f, "{byte:02X}")?;
                    }
                    f.write_str("'")?;
                }
            }
        }
        Ok(())
    }
}

/// Why a set of scope rules is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A rule name that cannot be a subject token.
    #[error("scope rule name {0:?} must be 1-32 characters of a-z, 0-9, _ and -")]
    BadRuleName(String),
    /// Two rules with one name.
    #[error("scope rule {0:?} is defined twice")]
    DuplicateRule(String),
    /// A rule without claims.
    #[error("scope rule {0:?} names no claims")]
    NoClaims(String),
    /// A rule without tables.
    #[error("scope rule {0:?} partitions no tables")]
    NoTables(String),
    /// A table whose column count differs from its rule's claim count.
    #[error("table {table:?} of scope rule {rule:?} names {columns} partition column(s) for {claims} claim(s)")]
    ColumnCount {
        /// The rule.
        rule: String,
        /// The table.
        table: String,
        /// Its column count.
        columns: usize,
        /// The rule's claim count.
        claims: usize,
    },
    /// A table placed in two scopes.
    #[error("table {table:?} is both {first} and {second}; a table has one scope")]
    TableTwice {
        /// The table.
        table: String,
        /// Where it was first.
        first: String,
        /// Where it was again.
        second: String,
    },
}

/// Scope rules as data (JSON for scoped replicas, which take the rules from a full node,
/// never from their own configuration): what [`ScopeRules::to_doc`] writes and
/// [`ScopeRules::from_doc`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScopeRulesDoc {
    /// The partition rules.
    pub partition: Vec<PartitionRule>,
    /// Shared tables.
    pub shared: Vec<String>,
    /// Hidden tables (listed explicitly).
    pub hidden: Vec<String>,
}

/// The scope rules of a cluster: identical on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRules {
    rules: Vec<PartitionRule>,
    shared: BTreeSet<String>,
    hidden: BTreeSet<String>,
    /// [`ScopeRules::fingerprint`], computed once: every routed frame is checked against it.
    fingerprint: u32,
}

impl ScopeRules {
    /// Checks and builds rules. Table names compare case-insensitively (as SQLite's do).
    pub fn new(
        rules: Vec<PartitionRule>,
        shared: impl IntoIterator<Item = String>,
        hidden: impl IntoIterator<Item = String>,
    ) -> Result<Self, ScopeError> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut place = |table: &str, scope: String| -> Result<(), ScopeError> {
            match seen.insert(table.to_owned(), scope.clone()) {
                Some(first) => Err(ScopeError::TableTwice {
                    table: table.to_owned(),
                    first,
                    second: scope,
                }),
                None => Ok(()),
            }
        };
        let mut names = BTreeSet::new();
        let mut checked = Vec::with_capacity(rules.len());
        for rule in rules {
            if !is_rule_name(&rule.name) {
                return Err(ScopeError::BadRuleName(rule.name));
            }
            if !names.insert(rule.name.clone()) {
                return Err(ScopeError::DuplicateRule(rule.name));
            }
            if rule.claims.is_empty() {
                return Err(ScopeError::NoClaims(rule.name));
            }
            if rule.tables.is_empty() {
                return Err(ScopeError::NoTables(rule.name));
            }
            let mut tables = BTreeMap::new();
            for (table, columns) in rule.tables {
                let table = table.to_lowercase();
                if columns.len() != rule.claims.len() {
                    return Err(ScopeError::ColumnCount {
                        rule: rule.name,
                        table,
                        columns: columns.len(),
                        claims: rule.claims.len(),
                    });
                }
                place(&table, format!("partitioned by rule {:?}", rule.name))?;
                tables.insert(table, columns);
            }
            checked.push(PartitionRule {
                name: rule.name,
                claims: rule.claims,
                tables,
            });
        }
        checked.sort_by(|a, b| a.name.cmp(&b.name));
        let mut shared_set = BTreeSet::new();
        for table in shared {
            let table = table.to_lowercase();
            place(&table, "shared".into())?;
            shared_set.insert(table);
        }
        let mut hidden_set = BTreeSet::new();
        for table in hidden {
            let table = table.to_lowercase();
            place(&table, "hidden".into())?;
            hidden_set.insert(table);
        }
        let mut rules = ScopeRules {
            rules: checked,
            shared: shared_set,
            hidden: hidden_set,
            fingerprint: 0,
        };
        if rules.is_enabled() {
            rules.fingerprint = crc32fast::hash(rules.canonical().as_bytes());
        }
        Ok(rules)
    }

    /// The rules as data.
    pub fn to_doc(&self) -> ScopeRulesDoc {
        ScopeRulesDoc {
            partition: self.rules.clone(),
            shared: self.shared.iter().cloned().collect(),
            hidden: self.hidden.iter().cloned().collect(),
        }
    }

    /// Checks rules given as data (see [`ScopeRules::new`]).
    pub fn from_doc(doc: ScopeRulesDoc) -> Result<Self, ScopeError> {
        ScopeRules::new(doc.partition, doc.shared, doc.hidden)
    }

    /// Whether any rule or shared table is set (scopes are on).
    pub fn is_enabled(&self) -> bool {
        !self.rules.is_empty() || !self.shared.is_empty()
    }

    /// The partition rules, by name.
    pub fn rules(&self) -> &[PartitionRule] {
        &self.rules
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&PartitionRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// How `table` is scoped. Tables no rule names are hidden.
    pub fn table_scope(&self, table: &str) -> TableScope<'_> {
        let table = table.to_lowercase();
        for rule in &self.rules {
            if let Some(columns) = rule.tables.get(&table) {
                return TableScope::Partitioned { rule, columns };
            }
        }
        if self.shared.contains(&table) {
            TableScope::Shared
        } else {
            TableScope::Hidden
        }
    }

    /// The rules in one canonical text, identical on every node with the same rules.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            let _ = write!(out, "rule {} claims {}", rule.name, rule.claims.join(","));
            for (table, columns) in &rule.tables {
                let _ = write!(out, "; {table}({})", columns.join(","));
            }
            out.push('\n');
        }
        let shared: Vec<&str> = self.shared.iter().map(String::as_str).collect();
        let hidden: Vec<&str> = self.hidden.iter().map(String::as_str).collect();
        let _ = write!(
            out,
            "shared {}\nhidden {}\n",
            shared.join(","),
            hidden.join(",")
        );
        out
    }

    /// CRC-32 of [`ScopeRules::canonical`]: nodes with different rules have different
    /// fingerprints (0 when scopes are off).
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    /// The partitions a token grants: for each rule, the values of its claims (`claim`
    /// returns every value of one claim: one for a scalar, each element of an array, none
    /// when the token lacks it). A rule with several claims grants every combination.
    pub fn partitions_for(&self, claim: impl Fn(&str) -> Vec<Value>) -> Vec<Partition> {
        let mut out = BTreeSet::new();
        for rule in &self.rules {
            let mut combos: Vec<Vec<Value>> = vec![Vec::new()];
            for name in &rule.claims {
                let values = claim(name);
                combos = combos
                    .iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |v| {
                            let mut next = prefix.clone();
                            next.push(v.clone());
                            next
                        })
                    })
                    .collect();
            }
            for values in combos {
                out.insert(Partition {
                    rule: rule.name.clone(),
                    values,
                });
            }
        }
        out.into_iter().collect()
    }
}

fn is_rule_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where one change travels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// A hidden table's change (or any change, with scopes off).
    Unscoped,
    /// A shared table's change.
    Shared {
        /// The table (lowercase).
        table: String,
    },
    /// A partitioned table's change.
    Partition {
        /// The partition.
        partition: Partition,
        /// The table (lowercase).
        table: String,
    },
}

/// Who published a partition's change: a full node (trusted: its changes are applied as
/// they are) or a scoped replica (every node validates its changes against the partition
/// its subject names). Part of the subject, so NATS permissions decide it, not the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Writer {
    /// A full replica (native sidecar, trusted edge worker).
    Full,
    /// A scoped replica (a user's browser).
    Scoped,
}

impl Writer {
    fn token(self) -> &'static str {
        match self {
            Writer::Full => "f",
            Writer::Scoped => "c",
        }
    }
}

impl Route {
    /// The subject of this route after `<prefix>.`: `1`, `shared.<table>` or
    /// `p.<partition token>.<writer>.<table>` (writer `f` for a full node, `c` for a scoped
    /// replica; only partitions carry it: scoped replicas write nothing else).
    pub fn subject_suffix(&self, writer: Writer) -> String {
        match self {
            Route::Unscoped => "1".into(),
            Route::Shared { table } => format!("shared.{}", name_token(table)),
            Route::Partition { partition, table } => format!(
                "p.{}.{}.{}",
                partition.token(),
                writer.token(),
                name_token(table)
            ),
        }
    }

    /// Reads [`Route::subject_suffix`] back: `None` for anything else (the schema subject
    /// included). `rules` says how many value tokens each rule's partitions have.
    pub fn parse_suffix(suffix: &str, rules: &ScopeRules) -> Option<(Route, Writer)> {
        if suffix == "1" {
            return Some((Route::Unscoped, Writer::Full));
        }
        let tokens: Vec<&str> = suffix.split('.').collect();
        match tokens.as_slice() {
            ["shared", table] => Some((
                Route::Shared {
                    table: parse_name_token(table)?,
                },
                Writer::Full,
            )),
            ["p", rule, more @ ..] => {
                let rule = rules.rule(rule)?;
                let (table, more) = more.split_last()?;
                let (writer, values) = more.split_last()?;
                let writer = match *writer {
                    "f" => Writer::Full,
                    "c" => Writer::Scoped,
                    _ => return None,
                };
                if values.len() != rule.claims.len() {
                    return None;
                }
                let values = values
                    .iter()
                    .map(|t| parse_value_token(t))
                    .collect::<Option<Vec<_>>>()?;
                let route = Route::Partition {
                    partition: Partition {
                        rule: rule.name.clone(),
                        values,
                    },
                    table: parse_name_token(table)?,
                };
                Some((route, writer))
            }
            _ => None,
        }
    }
}

/// The subjects of one cluster's change stream (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (the `[nats] subject_prefix`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Subjects {
            prefix: prefix.into(),
        }
    }

    /// The subject of unscoped changes: every change when scopes are off.
    pub fn unscoped(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The subject of replicated schema migrations when scopes are on.
    pub fn schema(&self) -> String {
        format!("{}.{SCHEMA_SUFFIX}", self.prefix)
    }

    /// Every scoped replica's filter for shared tables.
    pub fn shared_filter(&self) -> String {
        format!("{}.shared.>", self.prefix)
    }

    /// The filter that selects one partition's changes, every table.
    pub fn partition_filter(&self, partition: &Partition) -> String {
        format!("{}.p.{}.>", self.prefix, partition.token())
    }

    /// The subject a change on `route` is published on.
    pub fn for_route(&self, route: &Route, writer: Writer) -> String {
        format!("{}.{}", self.prefix, route.subject_suffix(writer))
    }

    /// A subject's part after `<prefix>.`, `None` when it is not under the prefix.
    pub fn suffix_of<'s>(&self, subject: &'s str) -> Option<&'s str> {
        subject.strip_prefix(&self.prefix)?.strip_prefix('.')
    }

    /// The subject of an outbox frame whose subject after the prefix is `suffix` (`None`:
    /// unscoped).
    pub fn for_suffix(&self, suffix: Option<&str>) -> String {
        match suffix {
            Some(suffix) => format!("{}.{suffix}", self.prefix),
            None => self.unscoped(),
        }
    }

    /// What a scoped replica holding `partitions` may read and write: its consumers'
    /// filter subjects (schema migrations, shared tables, each partition) and the subjects it
    /// may publish changes on (each partition's, any table).
    pub fn client_subjects(&self, partitions: &[Partition]) -> ClientSubjects {
        let mut read = vec![self.schema(), self.shared_filter()];
        let mut publish = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let filter = self.partition_filter(partition);
            publish.push(format!(
                "{}{}.*",
                filter.trim_end_matches('>'),
                Writer::Scoped.token()
            ));
            read.push(filter);
        }
        ClientSubjects { read, publish }
    }

    /// The subject scoped replicas send bootstrap requests to (answered by any full node).
    pub fn bootstrap_request(&self) -> String {
        format!("{}.scope.bootstrap", self.prefix)
    }

    /// The subject scoped replicas send [`FeedRequest`]s to (answered by any full node).
    pub fn feed_request(&self) -> String {
        format!("{}.scope.feed", self.prefix)
    }

    /// Where a scoped replica's feed delivers: a subject in its own inbox namespace (so only
    /// it can subscribe), chosen by the full node that creates the feed, never by the client.
    pub fn feed_deliver_subject(subject_claim: &str, replica: &str) -> String {
        format!(
            "{}.feed.{replica}",
            Self::client_inbox_prefix(subject_claim)
        )
    }

    /// The name of a scoped replica's feed consumer: one per user and replica, so asking
    /// again replaces it.
    pub fn feed_consumer_name(subject_claim: &str, replica: &str) -> String {
        format!(
            "hl_feed_{}_{replica}",
            value_token(&Value::Text(subject_claim.to_owned()))
        )
    }

    /// The inbox prefix a scoped replica of user `subject_claim` (the token's `sub`) must
    /// use, so its permissions can let it receive only its own replies and deliveries.
    pub fn client_inbox_prefix(subject_claim: &str) -> String {
        format!(
            "_INBOX_{}",
            value_token(&Value::Text(subject_claim.to_owned()))
        )
    }

    /// The subjects the stream must hold with scopes on (with scopes off: only
    /// [`Subjects::unscoped`]).
    pub fn stream_subjects(&self, scopes_on: bool) -> Vec<String> {
        if scopes_on {
            vec![
                self.unscoped(),
                self.schema(),
                format!("{}.shared.>", self.prefix),
                format!("{}.p.>", self.prefix),
            ]
        } else {
            vec![self.unscoped()]
        }
    }

    /// Reads a subject back into its route and writer (see [`Route::parse_suffix`]).
    pub fn parse(&self, subject: &str, rules: &ScopeRules) -> Option<(Route, Writer)> {
        Route::parse_suffix(self.suffix_of(subject)?, rules)
    }
}

/// A scoped replica's request for its feed: the stream from `from` on, filtered to what its
/// token lets it read, delivered to [`Subjects::feed_deliver_subject`]. Sent as JSON to
/// [`Subjects::feed_request`]; any full node answers with a [`FeedReply`].
///
/// Scoped replicas never create or pull consumers themselves: JetStream delivers a pull's
/// messages to whatever reply subject the request names, whoever asks, so a client allowed
/// `CONSUMER.MSG.NEXT` could make JetStream publish its messages on subjects it may not
/// publish to. A full node creates a push consumer whose delivery subject lies in the
/// client's own inbox namespace instead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedRequest {
    /// The app's token (JWT), verified again by the answering node.
    pub token: String,
    /// The replica's node id (hex): names its consumer and delivery subject.
    pub replica: String,
    /// The first stream sequence to deliver (the replica's cursor + 1).
    pub from: u64,
}

/// A full node's answer to a [`FeedRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedReply {
    /// The feed delivers from the requested sequence.
    Started {
        /// The consumer's name.
        consumer: String,
        /// Where it delivers (the client subscribed before asking).
        deliver_subject: String,
        /// The read filters it delivers.
        filters: Vec<String>,
        /// The stream's first sequence.
        first_seq: u64,
        /// The stream's last sequence.
        last_seq: u64,
        /// When the stream was created (Unix ns), for the stream identity check.
        created_ns: u64,
        /// The cluster's scope rules: a scoped replica takes them from here (never from its
        /// own configuration) to route its writes.
        rules: ScopeRulesDoc,
        /// The partitions the token grants ([`Partition::token`]): the replica refuses its
        /// own writes outside them instead of publishing them, and forgets the rows of
        /// partitions it no longer has.
        #[serde(default)]
        partitions: Vec<String>,
    },
    /// Refused: the token is not valid (now), or the request is malformed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The subjects one scoped replica may use (see [`Subjects::client_subjects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubjects {
    /// Filter subjects it may consume, one consumer each.
    pub read: Vec<String>,
    /// Subjects it may publish changes on.
    pub publish: Vec<String>,
}

/// A value as one subject token. Injective and reversible ([`parse_value_token`]):
/// `n` null, `i<decimal>` integer, `r<hex bits>` real, `t<text>` text of `[A-Za-z0-9_-]`
/// (1–200 bytes), `x<hex>` any other text, `b<hex>` blob.
pub fn value_token(value: &Value) -> String {
    match value {
        Value::Null => "n".into(),
        Value::Integer(i) => format!("i{i}"),
        Value::Real(r) => format!("r{:016x}", r.to_bits()),
        Value::Text(t) if is_plain(t) => format!("t{t}"),
        Value::Text(t) => format!("x{}", hex(t.as_bytes())),
        Value::Blob(b) => format!("b{}", hex(b)),
    }
}

/// Reads a [`value_token`] back; `None` when it is not one.
pub fn parse_value_token(token: &str) -> Option<Value> {
    let (kind, rest) = token.split_at_checked(1)?;
    match kind {
        "n" if rest.is_empty() => Some(Value::Null),
        "i" => {
            let i: i64 = rest.parse().ok()?;
            (i.to_string() == rest).then_some(Value::Integer(i))
        }
        "r" if rest.len() == 16 => {
            let bits = u64::from_str_radix(rest, 16).ok()?;
            (format!("{bits:016x}") == rest).then_some(Value::Real(f64::from_bits(bits)))
        }
        "t" if is_plain(rest) => Some(Value::Text(rest.to_owned())),
        "x" => {
            let text = String::from_utf8(unhex(rest)?).ok()?;
            (!is_plain(&text)).then_some(Value::Text(text))
        }
        "b" => Some(Value::Blob(unhex(rest)?)),
        _ => None,
    }
}

/// A table name as one subject token: the [`value_token`] of its lowercase text.
pub fn name_token(name: &str) -> String {
    value_token(&Value::Text(name.to_lowercase()))
}

fn parse_name_token(token: &str) -> Option<String> {
    match parse_value_token(token)? {
        Value::Text(name) if name == name.to_lowercase() => Some(name),
        _ => None,
    }
}

fn is_plain(text: &str) -> bool {
    (1..=200).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Reads [`hex`] back (lowercase only); `None` when malformed.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2)?;
            if pair.bytes().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> ScopeRules {
        ScopeRules::new(
            vec![
                PartitionRule {
                    name: "user".into(),
                    claims: vec!["sub".into()],
                    tables: [("Notes".to_owned(), vec!["owner_id".to_owned()])].into(),
                },
                PartitionRule {
                    name: "team".into(),
                    claims: vec!["teams".into()],
                    tables: [
                        ("projects".to_owned(), vec!["team_id".to_owned()]),
                        ("tasks".to_owned(), vec!["team_id".to_owned()]),
                    ]
                    .into(),
                },
            ],
            ["tags".to_owned()],
            ["audit".to_owned()],
        )
        .unwrap()
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            ".*".prop_map(Value::Text),
            "[a-zA-Z0-9_-]{1,10}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn value_tokens_round_trip_and_are_subject_safe(v in value()) {
            let token = value_token(&v);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{token}");
            prop_assert_eq!(parse_value_token(&token), Some(v));
        }

        #[test]
        fn distinct_values_get_distinct_tokens(a in value(), b in value()) {
            prop_assert_eq!(a == b, value_token(&a) == value_token(&b));
        }

        #[test]
        fn routes_round_trip_through_subjects(v in value(), table in "[a-zA-Z_. ]{1,12}") {
            let subjects = Subjects::new("app.changes");
            let rules = rules();
            let route = Route::Partition {
                partition: Partition { rule: "team".into(), values: vec![v] },
                table: table.to_lowercase(),
            };
            for writer in [Writer::Full, Writer::Scoped] {
                let subject = subjects.for_route(&route, writer);
                prop_assert_eq!(subjects.parse(&subject, &rules), Some((route.clone(), writer)));
            }
        }
    }

    #[test]
    fn tokens_reject_non_canonical_forms() {
        for bad in [
            "", "i01", "i+1", "x4142", "t", "tA.B", "xAB", "b0", "n1", "q1", "r00",
        ] {
            assert_eq!(parse_value_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn subjects_name_rule_partition_and_table() {
        let s = Subjects::new("app");
        let u1 = Partition {
            rule: "user".into(),
            values: vec![Value::Text("u1".into())],
        };
        let route = Route::Partition {
            partition: u1.clone(),
            table: "notes".into(),
        };
        assert_eq!(s.for_route(&route, Writer::Full), "app.p.user.tu1.f.tnotes");
        assert_eq!(
            s.for_route(&route, Writer::Scoped),
            "app.p.user.tu1.c.tnotes"
        );
        assert_eq!(s.partition_filter(&u1), "app.p.user.tu1.>");
        let dotted = Partition {
            rule: "user".into(),
            values: vec![Value::Text("a.b c".into())],
        };
        assert_eq!(s.partition_filter(&dotted), "app.p.user.x612e622063.>");
        assert_eq!(
            s.for_route(
                &Route::Shared {
                    table: "tags".into()
                },
                Writer::Scoped
            ),
            "app.shared.ttags"
        );
        assert_eq!(s.for_route(&Route::Unscoped, Writer::Full), "app.1");
        assert_eq!(Partition::from_token(&u1.token()), Some(u1.clone()));
        assert_eq!(Partition::from_token("user"), None);
        assert_eq!(Partition::from_token("User.tu1"), None);
        assert_eq!(s.for_suffix(None), "app.1");
        assert_eq!(s.for_suffix(Some("shared.ttags")), "app.shared.ttags");
        assert_eq!(
            s.parse("app.p.user.tu1.c.tnotes", &rules()),
            Some((route, Writer::Scoped))
        );
        assert_eq!(s.parse("app.p.user.tu1.tnotes", &rules()), None);
        assert_eq!(s.parse("app.p.user.tu1.x.tnotes", &rules()), None);
        assert_eq!(s.parse("app.p.nope.tu1.f.tnotes", &rules()), None);
        assert_eq!(s.parse("app.p.user.tu1.tu2.f.tnotes", &rules()), None);
        assert_eq!(s.parse("app.schema", &rules()), None);
        assert_eq!(s.parse("other.1", &rules()), None);
    }

    #[test]
    fn a_client_reads_schema_shared_and_its_partitions_and_writes_only_its_partitions() {
        let s = Subjects::new("app");
        let parts = rules().partitions_for(|claim| match claim {
            "sub" => vec![Value::Text("u1".into())],
            _ => vec![Value::Integer(7)],
        });
        let c = s.client_subjects(&parts);
        assert_eq!(
            c.read,
            [
                "app.schema",
                "app.shared.>",
                "app.p.team.i7.>",
                "app.p.user.tu1.>"
            ]
        );
        assert_eq!(c.publish, ["app.p.team.i7.c.*", "app.p.user.tu1.c.*"]);
        assert_eq!(s.bootstrap_request(), "app.scope.bootstrap");
        assert_eq!(s.feed_request(), "app.scope.feed");
        assert_eq!(
            Subjects::feed_deliver_subject("u1", "1a2b"),
            "_INBOX_tu1.feed.1a2b"
        );
        assert_eq!(
            Subjects::feed_consumer_name("u1", "1a2b"),
            "hl_feed_tu1_1a2b"
        );
        assert_eq!(Subjects::client_inbox_prefix("u1"), "_INBOX_tu1");
        assert_eq!(Subjects::client_inbox_prefix("a.b"), "_INBOX_x612e62");
    }

    #[test]
    fn tables_are_classified_case_insensitively() {
        let r = rules();
        assert!(matches!(
            r.table_scope("NOTES"),
            TableScope::Partitioned { rule, columns } if rule.name == "user" && columns == ["owner_id"]
        ));
        assert_eq!(r.table_scope("Tags"), TableScope::Shared);
        assert_eq!(r.table_scope("audit"), TableScope::Hidden);
        assert_eq!(r.table_scope("unlisted"), TableScope::Hidden);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let rule = |name: &str, claims: &[&str], tables: &[(&str, &[&str])]| PartitionRule {
            name: name.into(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
            tables: tables
                .iter()
                .map(|(t, cols)| (t.to_string(), cols.iter().map(|c| c.to_string()).collect()))
                .collect(),
        };
        let err = |rules: Vec<PartitionRule>, shared: &[&str]| {
            ScopeRules::new(rules, shared.iter().map(|s| s.to_string()), [])
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![rule("User", &["sub"], &[("t", &["c"])])], &[]).contains("\"User\""));
        assert!(err(vec![rule("u", &[], &[("t", &["c"])])], &[]).contains("no claims"));
        assert!(err(vec![rule("u", &["sub"], &[])], &[]).contains("no tables"));
        assert!(err(vec![rule("u", &["sub"], &[("t", &["a", "b"])])], &[])
            .contains("2 partition column(s) for 1 claim(s)"));
        assert!(err(vec![rule("u", &["sub"], &[("t", &["c"])])], &["T"])
            .contains("is both partitioned by rule \"u\" and shared"));
        assert!(err(
            vec![
                rule("u", &["sub"], &[("t", &["c"])]),
                rule("u", &["x"], &[("s", &["c"])])
            ],
            &[]
        )
        .contains("defined twice"));
    }

    #[test]
    fn rules_survive_their_data_form_with_the_same_fingerprint() {
        let doc = rules().to_doc();
        let back = ScopeRules::from_doc(doc.clone()).unwrap();
        assert_eq!(back, rules());
        assert_eq!(back.fingerprint(), rules().fingerprint());
        let text = postcard::to_allocvec(&doc).unwrap();
        let decoded: ScopeRulesDoc = postcard::from_bytes(&text).unwrap();
        assert_eq!(decoded, doc);
    }

    #[test]
    fn fingerprint_changes_with_any_rule() {
        let base = rules();
        assert_eq!(base.fingerprint(), rules().fingerprint());
        assert_eq!(ScopeRules::default().fingerprint(), 0);
        let other = ScopeRules::new(base.rules().to_vec(), ["tags".to_owned()], []).unwrap();
        assert_ne!(base.fingerprint(), other.fingerprint());
    }

    #[test]
    fn partitions_follow_the_claims() {
        let r = rules();
        let parts = r.partitions_for(|claim| match claim {
            "sub" => vec![Value::Text("u1".into())],
            "teams" => vec![Value::Text("t1".into()), Value::Text("t2".into())],
            _ => vec![],
        });
        let names: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["team='t1'", "team='t2'", "user='u1'"]);
        assert!(r.partitions_for(|_| vec![]).is_empty());
    }
}
