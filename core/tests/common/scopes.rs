//! The scope rules and clock the scope tests share (`#[path]`-included by each).

use harmonylite_core::hlc::NTP64;
use harmonylite_core::scope::{Partition, PartitionRule, ScopeRules};
use harmonylite_core::value::Value;

/// Now, as an NTP64 wall time.
pub fn now() -> NTP64 {
    harmonylite_core::hlc::ntp64_from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// `notes` partitioned by `owner_id` (rule `user`, claim `sub`), `tags` shared, the rest
/// hidden.
pub fn rules() -> ScopeRules {
    ScopeRules::new(
        vec![PartitionRule {
            name: "user".into(),
            claims: vec!["sub".into()],
            tables: [("notes".to_owned(), vec!["owner_id".to_owned()])].into(),
        }],
        ["tags".to_owned()],
        [],
    )
    .unwrap()
}

/// The partition of user `sub`.
pub fn user(sub: &str) -> Partition {
    Partition {
        rule: "user".into(),
        values: vec![Value::Text(sub.into())],
    }
}
