//! `[scopes]`: which rows untrusted (scoped) replicas such as browsers may see and write, and
//! how their tokens are checked (decision 13 of the design; docs/security.md).
//!
//! ```toml
//! [scopes]
//! shared = ["tags"]
//! hidden = ["audit_log"]
//!
//! [[scopes.partition]]
//! name = "user"
//! claims = ["sub"]
//! tables = { notes = "owner_id", todos = ["user_id"] }
//!
//! [scopes.auth]
//! audience = "notes-app"
//! hs256_secret_file = "hs256.secret"
//! callout_seed_file = "callout.nk"
//! ```
//!
//! Scopes are on when a partition rule or a shared table is configured; then `[scopes.auth]`
//! must name the token audience, at least one verification key and the callout's account
//! seed. The rules themselves are [`harmonylite_core::scope::ScopeRules`]: identical on every
//! node. Like every path in the file, key files are used as written (relative to the
//! sidecar's working directory).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harmonylite_core::scope::{PartitionRule, ScopeError, ScopeRules};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Problems;

/// `[scopes]`: the scope rules and `[scopes.auth]`. Default: off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopesConfig {
    /// `shared` (default empty): tables every scoped client reads; only full nodes write them.
    pub shared: Vec<String>,
    /// `hidden` (default empty): tables never sent to scoped clients (also every table no
    /// rule names).
    pub hidden: Vec<String>,
    /// `[[scopes.partition]]` (default none): the partition rules.
    pub partition: Vec<PartitionConfig>,
    /// `[scopes.auth]`: how scoped clients' tokens are verified.
    pub auth: ScopesAuthConfig,
}

/// One `[[scopes.partition]]` rule: a kind of partition, the token claims that grant it and
/// the tables it partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// `name`: the rule's name, a subject token of `a-z`, `0-9`, `_` and `-`.
    pub name: String,
    /// `claims`: the token claims whose values name a user's partitions (an array claim
    /// grants one partition per element).
    pub claims: Vec<String>,
    /// `tables`: table → its partition column, or a list of columns (as many as `claims`).
    #[serde(deserialize_with = "columns_map")]
    pub tables: BTreeMap<String, Vec<String>>,
}

/// `[scopes.auth]`: verifying the app's tokens and signing the NATS users the callout issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopesAuthConfig {
    /// `audience` (required with scopes on): tokens must carry it in `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// `issuer`: when set, tokens must carry it in `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `hs256_secret_file`: the HS256 shared secret (the file's bytes, without a trailing
    /// newline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<PathBuf>,
    /// `public_key_file`: a PEM public key: Ed25519 (EdDSA tokens) or RSA (RS256 tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// `jwks_file`: a JWKS document; a token's `kid` picks its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// `leeway_seconds` (default 30): clock leeway for `exp` and `nbf`.
    #[serde(rename = "leeway_seconds", with = "super::seconds")]
    pub leeway: Duration,
    /// `callout_seed_file` (required with scopes on): the NKey seed of the account key that
    /// signs the callout's answers; the same file on every node (`--scopes-keygen` makes one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callout_seed_file: Option<PathBuf>,
}

impl Default for ScopesAuthConfig {
    fn default() -> Self {
        ScopesAuthConfig {
            audience: None,
            issuer: None,
            hs256_secret_file: None,
            public_key_file: None,
            jwks_file: None,
            leeway: Duration::from_secs(30),
            callout_seed_file: None,
        }
    }
}

impl ScopesConfig {
    /// Whether scopes are on: a partition rule or a shared table is configured.
    pub fn enabled(&self) -> bool {
        !self.partition.is_empty() || !self.shared.is_empty()
    }

    /// The rules as core's [`ScopeRules`] (checked when the configuration is validated).
    pub fn rules(&self) -> Result<ScopeRules, ScopeError> {
        let rules = self
            .partition
            .iter()
            .map(|p| PartitionRule {
                name: p.name.clone(),
                claims: p.claims.clone(),
                tables: p.tables.clone(),
            })
            .collect();
        ScopeRules::new(rules, self.shared.clone(), self.hidden.clone())
    }

    /// Problems visible without the filesystem.
    pub(super) fn value_problems(&self, out: &mut Problems) {
        if let Err(why) = self.rules() {
            out.add("scopes.partition", why.to_string());
        }
        for (i, rule) in self.partition.iter().enumerate() {
            if rule.claims.iter().any(|c| c.is_empty()) {
                out.add(
                    "scopes.partition",
                    format!("rule {} ({:?}) names an empty claim", i + 1, rule.name),
                );
            }
            let empty_column = rule.tables.values().flatten().any(|c| c.is_empty());
            if rule.tables.keys().any(|t| t.is_empty()) || empty_column {
                out.add(
                    "scopes.partition",
                    format!(
                        "rule {} ({:?}) names an empty table or column",
                        i + 1,
                        rule.name
                    ),
                );
            }
        }
        for (key, tables) in [
            ("scopes.shared", &self.shared),
            ("scopes.hidden", &self.hidden),
        ] {
            if tables.iter().any(|t| t.is_empty()) {
                out.add(key, "contains an empty table name");
            }
        }
        let auth = &self.auth;
        if !self.enabled() {
            if !self.hidden.is_empty() {
                out.add(
                    "scopes.hidden",
                    "scopes are off: add a `[[scopes.partition]]` rule or `scopes.shared` tables (every table is hidden from scoped clients unless a rule names it)",
                );
            }
            if *auth != ScopesAuthConfig::default() {
                out.add(
                    "scopes.auth",
                    "configures scoped clients' tokens, but scopes are off: add a `[[scopes.partition]]` rule or `scopes.shared` tables",
                );
            }
            return;
        }
        match &auth.audience {
            None => out.add(
                "scopes.auth.audience",
                "needed with scopes on: the `aud` every token must carry (e.g. your app's name)",
            ),
            Some(aud) if aud.is_empty() => out.add("scopes.auth.audience", "must not be empty"),
            Some(_) => {}
        }
        if auth.issuer.as_deref() == Some("") {
            out.add(
                "scopes.auth.issuer",
                "must not be empty (remove it to accept any `iss`)",
            );
        }
        if auth.hs256_secret_file.is_none()
            && auth.public_key_file.is_none()
            && auth.jwks_file.is_none()
        {
            out.add(
                "scopes.auth",
                "needs a key that verifies tokens: `hs256_secret_file`, `public_key_file` or `jwks_file`",
            );
        }
        if auth.callout_seed_file.is_none() {
            out.add(
                "scopes.auth.callout_seed_file",
                "needed with scopes on: the account NKey seed that signs the NATS users scoped clients get, the same file on every node (create one with `harmonylite --config <file> --scopes-keygen`)",
            );
        }
    }

    /// Problems with the key files: each must exist (the callout seed may be missing: start
    /// refuses to run without it, and `--scopes-keygen` creates it).
    pub(super) fn file_problems(&self, out: &mut Problems) {
        if !self.enabled() {
            return;
        }
        let auth = &self.auth;
        for (key, file) in [
            ("scopes.auth.hs256_secret_file", &auth.hs256_secret_file),
            ("scopes.auth.public_key_file", &auth.public_key_file),
            ("scopes.auth.jwks_file", &auth.jwks_file),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    out.add(key, format!("the file {} does not exist", file.display()));
                }
            }
        }
    }
}

/// A key file named by `[scopes.auth]` that cannot be used: the message names the key and
/// the path.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key is not set although scopes are on.
    #[error("`{key}` is not set")]
    Unset {
        /// The dotted key.
        key: &'static str,
    },
    /// The file could not be read.
    #[error("`{key}`: cannot read {}: {source}", path.display())]
    Read {
        /// The dotted key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What reading it reported.
        source: std::io::Error,
    },
    /// The file was read but does not hold a usable key.
    #[error("`{key}`: {} {why}", path.display())]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads the key file `path` named by `key`.
pub fn read_key_file(key: &'static str, path: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(path).map_err(|source| KeyFileError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

impl ScopesAuthConfig {
    /// The account key pair of `callout_seed_file`: it signs the auth callout's answers and
    /// the users they carry; its public key is the server's `auth_callout.issuer`.
    pub fn callout_account(&self) -> Result<nkeys::KeyPair, KeyFileError> {
        const KEY: &str = "scopes.auth.callout_seed_file";
        let path = self
            .callout_seed_file
            .as_deref()
            .ok_or(KeyFileError::Unset { key: KEY })?;
        let invalid = |why: String| KeyFileError::Invalid {
            key: KEY,
            path: path.to_owned(),
            why,
        };
        let text = String::from_utf8(read_key_file(KEY, path)?)
            .map_err(|_| invalid("is not text: expected an NKey account seed (SA...)".into()))?;
        let pair = nkeys::KeyPair::from_seed(text.trim())
            .map_err(|e| invalid(format!("is not an NKey seed ({e}); create one with `harmonylite --config <file> --scopes-keygen`")))?;
        if pair.key_pair_type() != nkeys::KeyPairType::Account {
            return Err(invalid(format!(
                "holds a {:?} seed, not an account seed (SA...)",
                pair.key_pair_type()
            )));
        }
        Ok(pair)
    }
}

/// `tables = { t = "col", u = ["a", "b"] }`: each value a column or a list of columns.
fn columns_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Columns(#[serde(deserialize_with = "columns")] Vec<String>);
    let map = BTreeMap::<String, Columns>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn columns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ColumnsVisitor;

    impl<'de> Visitor<'de> for ColumnsVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a column name or a list of column names")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(column) = seq.next_element::<String>()? {
                out.push(column);
            }
            Ok(out)
        }
    }

    d.deserialize_any(ColumnsVisitor)
}

#[cfg(test)]
mod tests {
    use harmonylite_core::scope::TableScope;

    use crate::config::{Config, ConfigError};

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A config with `scopes` TOML; key files named `hs.secret` exist in `dir`.
    fn text(dir: &std::path::Path, scopes: &str) -> String {
        std::fs::write(dir.join("hs.secret"), "s3cret").unwrap();
        format!(
            "db_path = {:?}\n{scopes}\n",
            dir.join("app.db").display().to_string()
        )
    }

    fn auth(dir: &std::path::Path) -> String {
        format!(
            "[scopes.auth]\naudience = \"app\"\nhs256_secret_file = {:?}\ncallout_seed_file = \"callout.nk\"\n",
            dir.join("hs.secret").display().to_string()
        )
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        match Config::from_toml_str(text, "test.toml") {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.key, p.message)).collect()
            }
            Err(other) => panic!("expected validation problems, got {other}"),
            Ok(_) => panic!("expected validation problems, the config was accepted"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Config::from_toml_str(text, "test.toml") {
            Err(e @ ConfigError::Parse { .. }) => e.to_string(),
            Err(other) => panic!("expected a parse error, got {other}"),
            Ok(_) => panic!("expected a parse error, the config was accepted"),
        }
    }

    #[test]
    fn off_by_default() {
        let d = dir();
        let c = Config::from_toml_str(&text(d.path(), ""), "test.toml").unwrap();
        assert!(!c.scopes.enabled());
        assert!(!c.scopes.rules().unwrap().is_enabled());
        assert_eq!(c.scopes.auth.leeway.as_secs(), 30);
    }

    #[test]
    fn rules_are_read_with_one_column_or_a_list() {
        let d = dir();
        let c = Config::from_toml_str(
            &text(
                d.path(),
                &format!(
                    "[scopes]\nshared = [\"tags\"]\nhidden = [\"audit_log\"]\n[[scopes.partition]]\nname = \"user\"\nclaims = [\"sub\"]\ntables = {{ notes = \"owner_id\", todos = [\"user_id\"] }}\n[[scopes.partition]]\nname = \"team\"\nclaims = [\"org\", \"teams\"]\ntables = {{ projects = [\"org_id\", \"team_id\"] }}\n{}issuer = \"https://login.example\"\nleeway_seconds = 5\n",
                    auth(d.path())
                ),
            ),
            "test.toml",
        )
        .unwrap();
        let rules = c.scopes.rules().unwrap();
        assert!(c.scopes.enabled() && rules.is_enabled());
        assert!(matches!(
            rules.table_scope("todos"),
            TableScope::Partitioned { rule, columns } if rule.name == "user" && columns == ["user_id"]
        ));
        assert!(matches!(
            rules.table_scope("projects"),
            TableScope::Partitioned { rule, columns } if rule.name == "team" && columns == ["org_id", "team_id"]
        ));
        assert_eq!(rules.table_scope("tags"), TableScope::Shared);
        assert_eq!(rules.table_scope("audit_log"), TableScope::Hidden);
        assert_eq!(c.scopes.auth.audience.as_deref(), Some("app"));
        assert_eq!(
            c.scopes.auth.issuer.as_deref(),
            Some("https://login.example")
        );
        assert_eq!(c.scopes.auth.leeway.as_secs(), 5);
    }

    #[test]
    fn unknown_keys_are_named() {
        let d = dir();
        for (extra, needle) in [
            ("[scopes]\nshard = [\"t\"]", "shard"),
            (
                "[[scopes.partition]]\nname = \"u\"\nclaim = [\"sub\"]\ntables = { t = \"c\" }",
                "claim",
            ),
            ("[scopes.auth]\naudiences = [\"a\"]", "audiences"),
        ] {
            let message = parse_error(&text(d.path(), extra));
            assert!(message.contains(needle), "{message}");
        }
        let message = parse_error(&text(
            d.path(),
            "[[scopes.partition]]\nname = \"u\"\nclaims = [\"sub\"]\ntables = { t = 3 }",
        ));
        assert!(message.contains("column name"), "{message}");
    }

    #[test]
    fn bad_rules_name_scopes_partition() {
        let d = dir();
        for (rule, needle) in [
            (
                "name = \"User\"\nclaims = [\"sub\"]\ntables = { t = \"c\" }",
                "\"User\"",
            ),
            (
                "name = \"u\"\nclaims = []\ntables = { t = \"c\" }",
                "no claims",
            ),
            ("name = \"u\"\nclaims = [\"sub\"]\ntables = {}", "no tables"),
            (
                "name = \"u\"\nclaims = [\"sub\"]\ntables = { t = [\"a\", \"b\"] }",
                "2 partition column(s) for 1 claim(s)",
            ),
            (
                "name = \"u\"\nclaims = [\"\"]\ntables = { t = \"c\" }",
                "empty claim",
            ),
        ] {
            let found = problems(&text(
                d.path(),
                &format!("[[scopes.partition]]\n{rule}\n{}", auth(d.path())),
            ));
            assert!(
                found
                    .iter()
                    .any(|(k, m)| k == "scopes.partition" && m.contains(needle)),
                "{needle}: {found:?}"
            );
        }
        let found = problems(&text(
            d.path(),
            &format!(
                "[scopes]\nshared = [\"T\"]\n[[scopes.partition]]\nname = \"u\"\nclaims = [\"sub\"]\ntables = {{ t = \"c\" }}\n{}",
                auth(d.path())
            ),
        ));
        assert!(
            found[0].0 == "scopes.partition" && found[0].1.contains("both"),
            "{found:?}"
        );
    }

    #[test]
    fn auth_is_required_with_scopes_on() {
        let d = dir();
        let found = problems(&text(d.path(), "[scopes]\nshared = [\"tags\"]"));
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "scopes.auth.audience",
                "scopes.auth",
                "scopes.auth.callout_seed_file"
            ],
            "{found:?}"
        );
        assert!(found[2].1.contains("--scopes-keygen"), "{found:?}");
    }

    #[test]
    fn auth_or_hidden_without_rules_is_refused() {
        let d = dir();
        let found = problems(&text(d.path(), &auth(d.path())));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "scopes.auth");
        let found = problems(&text(d.path(), "[scopes]\nhidden = [\"a\"]"));
        assert_eq!(found[0].0, "scopes.hidden", "{found:?}");
    }

    #[test]
    fn the_callout_seed_must_be_an_account_seed() {
        let d = dir();
        let path = d.path().join("callout.nk");
        let auth = |file: &std::path::Path| crate::config::scopes::ScopesAuthConfig {
            callout_seed_file: Some(file.to_owned()),
            ..Default::default()
        };
        let message = auth(&path).callout_account().unwrap_err().to_string();
        assert!(
            message.contains("scopes.auth.callout_seed_file") && message.contains("callout.nk"),
            "{message}"
        );
        std::fs::write(&path, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
        let message = auth(&path).callout_account().unwrap_err().to_string();
        assert!(message.contains("not an account seed"), "{message}");
        std::fs::write(&path, "garbage").unwrap();
        let message = auth(&path).callout_account().unwrap_err().to_string();
        assert!(message.contains("not an NKey seed"), "{message}");
        let account = nkeys::KeyPair::new_account();
        std::fs::write(&path, format!("{}\n", account.seed().unwrap())).unwrap();
        assert_eq!(
            auth(&path).callout_account().unwrap().public_key(),
            account.public_key()
        );
    }

    #[test]
    fn key_files_must_exist_but_the_seed_may_not_yet() {
        let d = dir();
        let missing = d.path().join("nope.pem").display().to_string();
        for key in ["public_key_file", "jwks_file", "hs256_secret_file"] {
            let found = problems(&text(
                d.path(),
                &format!(
                    "[scopes]\nshared = [\"tags\"]\n[scopes.auth]\naudience = \"a\"\ncallout_seed_file = \"missing.nk\"\n{key} = {missing:?}\n"
                ),
            ));
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].0, format!("scopes.auth.{key}"));
            assert!(found[0].1.contains(&missing), "{found:?}");
        }
    }
}
