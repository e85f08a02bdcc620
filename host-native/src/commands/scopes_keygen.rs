//! `--scopes-keygen`: creates the account NKey seed that signs the NATS users the auth
//! callout issues to scoped clients (`scopes.auth.callout_seed_file`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};

use crate::config::Config;

/// Writes a new account seed to `scopes.auth.callout_seed_file` (owner-only, refused when the
/// file exists), prints its public key on stdout and returns it.
pub fn scopes_keygen(config: &Config) -> Result<String> {
    let Some(path) = config.scopes.auth.callout_seed_file.as_deref() else {
        bail!("`scopes.auth.callout_seed_file` is not set: name the file the seed goes to");
    };
    let account = nkeys::KeyPair::new_account();
    let seed = account
        .seed()
        .map_err(|e| anyhow::anyhow!("encoding the new seed: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating `scopes.auth.callout_seed_file` {} (an existing file is never replaced)",
                path.display()
            )
        })?;
    file.write_all(format!("{seed}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    let public = account.public_key();
    println!("{public}");
    tracing::info!(
        file = %path.display(),
        public_key = %public,
        "created the auth callout's account seed: copy this same file to every node"
    );
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_account_seed_once() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("callout.nk");
        let mut config = Config::from_toml_str(
            &format!(
                "db_path = {:?}\n",
                dir.path().join("app.db").display().to_string()
            ),
            "test.toml",
        )
        .unwrap();
        assert!(scopes_keygen(&config).is_err(), "no file named");
        config.scopes.auth.callout_seed_file = Some(seed.clone());
        let public = scopes_keygen(&config).unwrap();
        assert!(public.starts_with('A'), "{public}");
        assert_eq!(
            config.scopes.auth.callout_account().unwrap().public_key(),
            public
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&seed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = scopes_keygen(&config).unwrap_err();
        assert!(format!("{again:#}").contains("never replaced"), "{again:#}");
        assert_eq!(
            config.scopes.auth.callout_account().unwrap().public_key(),
            public,
            "the first seed is kept"
        );
    }
}
