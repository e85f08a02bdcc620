//! The sidecar's TOML configuration parser, `Config::from_toml_str`.
//!
//! Contract: any text is either a `Config` or a `ConfigError`, never a panic; an accepted
//! configuration serializes back to TOML that parses to the same configuration.
#![no_main]

use harmonylite::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text, "fuzz.toml") else {
        return;
    };
    let again = toml::to_string(&config).expect("an accepted configuration serializes");
    let reparsed = Config::from_toml_str(&again, "fuzz-again.toml")
        .unwrap_or_else(|e| panic!("re-serialized configuration rejected: {e}\n{again}"));
    assert_eq!(
        reparsed, config,
        "configuration changed in a TOML round trip"
    );
});
