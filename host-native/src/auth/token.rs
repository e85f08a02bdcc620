//! The app's tokens: verifying a scoped client's JWT (signature, `exp`, `nbf`, `aud`, `iss`)
//! with the keys `[scopes.auth]` names, and mapping its claims to partitions.
//!
//! Keys are chosen by the token's algorithm, never by what the token says about the key's
//! kind: HS256 only with `hs256_secret_file`; EdDSA and RS256 with the JWKS key its `kid`
//! names, else with `public_key_file` when that key is of the token's algorithm. Any other
//! algorithm is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harmonylite_core::scope::{Partition, ScopeRules};
use harmonylite_core::value::Value;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Map;

use crate::config::scopes::{read_key_file, KeyFileError, ScopesAuthConfig};

/// A token's claims.
pub type Claims = Map<String, serde_json::Value>;

/// The JWKS file is read again for an unknown `kid` at most this often.
const JWKS_RELOAD_MIN: Duration = Duration::from_secs(5);

/// Why a token was refused. The text names the reason, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client sent no token (the app's JWT goes in the NATS connection's token).
    #[error("no token: pass the app's JWT as the NATS connection token")]
    NoToken,
    /// Not a JWT, or parts that do not decode.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// An algorithm no configured key verifies.
    #[error("the token's algorithm {0} is not accepted (no key of that kind is configured)")]
    Algorithm(String),
    /// A `kid` that neither the JWKS file nor the public key matches.
    #[error("the token's key id {0:?} is not in the JWKS file")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` lacks the configured audience.
    #[error("the token's audience is not this app's")]
    WrongAudience,
    /// `iss` differs from the configured issuer.
    #[error("the token's issuer is not the configured one")]
    WrongIssuer,
    /// A required claim (`exp`, `aud`, `sub`, `iss`) is missing.
    #[error("the token lacks the claim {0:?}")]
    MissingClaim(String),
    /// A claim of a type that cannot name partitions (or a `sub` that is not a string).
    #[error("the token's claim {claim:?} {why}")]
    BadClaim {
        /// The claim.
        claim: String,
        /// What is wrong with it.
        why: String,
    },
}

impl Refusal {
    /// The `outcome` label of `auth_callouts_total` for this refusal.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm(_) | Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::MissingClaim(_) | Refusal::BadClaim { .. } => "bad_claims",
        }
    }
}

/// A verified token: its `sub`, `exp` and every claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The `sub` claim: the user.
    pub subject: String,
    /// The `exp` claim, Unix seconds.
    pub expires: i64,
    /// Every claim.
    pub claims: Claims,
}

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct Jwks {
    path: PathBuf,
    state: Mutex<JwksState>,
}

struct JwksState {
    keys: HashMap<String, Key>,
    read_at: Instant,
}

/// Verifies tokens with the keys of `[scopes.auth]`.
pub struct Verifier {
    audience: String,
    issuer: Option<String>,
    leeway: u64,
    hs256: Option<DecodingKey>,
    public: Option<Key>,
    jwks: Option<Jwks>,
}

impl Verifier {
    /// Reads every key file `auth` names; an unreadable or unusable file is an error naming
    /// its key and path.
    pub fn load(auth: &ScopesAuthConfig) -> Result<Verifier, KeyFileError> {
        let hs256 = match &auth.hs256_secret_file {
            Some(path) => {
                const KEY: &str = "scopes.auth.hs256_secret_file";
                let mut secret = read_key_file(KEY, path)?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.is_empty() {
                    return Err(KeyFileError::Invalid {
                        key: KEY,
                        path: path.clone(),
                        why: "is empty".into(),
                    });
                }
                Some(DecodingKey::from_secret(&secret))
            }
            None => None,
        };
        let public = match &auth.public_key_file {
            Some(path) => Some(public_key(path)?),
            None => None,
        };
        let jwks = match &auth.jwks_file {
            Some(path) => Some(Jwks {
                path: path.clone(),
                state: Mutex::new(JwksState {
                    keys: read_jwks(path)?,
                    read_at: Instant::now(),
                }),
            }),
            None => None,
        };
        Ok(Verifier {
            audience: auth.audience.clone().unwrap_or_default(),
            issuer: auth.issuer.clone(),
            leeway: auth.leeway.as_secs(),
            hs256,
            public,
            jwks,
        })
    }

    /// Verifies `token`: signature, `exp`, `nbf`, `aud`, `iss` (when configured), and a
    /// string `sub`.
    pub fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        if token.is_empty() {
            return Err(Refusal::NoToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| refusal(e.into_kind()))?;
        let claims = data.claims;
        let subject = match claims.get("sub") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(Refusal::BadClaim {
                    claim: "sub".into(),
                    why: "must be a non-empty string".into(),
                })
            }
        };
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| Refusal::BadClaim {
                claim: "exp".into(),
                why: "must be an integer (Unix seconds)".into(),
            })?;
        Ok(Verified {
            subject,
            expires,
            claims,
        })
    }

    fn key_for(&self, algorithm: Algorithm, kid: Option<&str>) -> Result<Key, Refusal> {
        match algorithm {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .map(|key| Key { algorithm, key })
                .ok_or_else(|| Refusal::Algorithm("HS256".into())),
            Algorithm::EdDSA | Algorithm::RS256 => {
                if let (Some(kid), Some(jwks)) = (kid, &self.jwks) {
                    if let Some(key) = jwks.find(kid) {
                        return if key.algorithm == algorithm {
                            Ok(key)
                        } else {
                            Err(Refusal::Algorithm(format!(
                                "{algorithm:?} for key {kid:?} (a {:?} key)",
                                key.algorithm
                            )))
                        };
                    }
                }
                match &self.public {
                    Some(key) if key.algorithm == algorithm => Ok(key.clone()),
                    _ => match kid {
                        Some(kid) if self.jwks.is_some() => Err(Refusal::UnknownKey(kid.into())),
                        _ => Err(Refusal::Algorithm(format!("{algorithm:?}"))),
                    },
                }
            }
            other => Err(Refusal::Algorithm(format!("{other:?}"))),
        }
    }
}

impl Jwks {
    /// The key `kid` names; an unknown `kid` reads the file again (at most every few
    /// seconds), so a key added for rotation is found without a restart.
    fn find(&self, kid: &str) -> Option<Key> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = state.keys.get(kid) {
            return Some(key.clone());
        }
        if state.read_at.elapsed() < JWKS_RELOAD_MIN {
            return None;
        }
        state.read_at = Instant::now();
        match read_jwks(&self.path) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "read the JWKS file again for an unknown key id");
                state.keys = keys;
            }
            Err(e) => tracing::warn!("keeping the JWKS keys read before: {e}"),
        }
        state.keys.get(kid).cloned()
    }
}

fn refusal(kind: ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm => Refusal::Algorithm("mismatch".into()),
        _ => Refusal::Malformed,
    }
}

/// A PEM public key: Ed25519 (EdDSA) or RSA (RS256).
fn public_key(path: &std::path::Path) -> Result<Key, KeyFileError> {
    const KEY: &str = "scopes.auth.public_key_file";
    let pem = read_key_file(KEY, path)?;
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::EdDSA,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    Err(KeyFileError::Invalid {
        key: KEY,
        path: path.to_owned(),
        why: "is neither an Ed25519 nor an RSA public key in PEM (-----BEGIN PUBLIC KEY-----)"
            .into(),
    })
}

/// The usable keys of a JWKS file, by `kid`: RSA keys (RS256) and Ed25519 keys (EdDSA).
/// Keys without a `kid`, of other types or declaring another `alg` are left out (logged).
fn read_jwks(path: &std::path::Path) -> Result<HashMap<String, Key>, KeyFileError> {
    const KEY: &str = "scopes.auth.jwks_file";
    let invalid = |why: String| KeyFileError::Invalid {
        key: KEY,
        path: path.to_owned(),
        why,
    };
    let text = read_key_file(KEY, path)?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("is not a JWKS document ({{\"keys\": [...]}}): {e}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!(path = %path.display(), "a JWKS key without `kid` is ignored (tokens pick their key by kid)");
            continue;
        };
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => {
                tracing::warn!(path = %path.display(), kid, "a JWKS key that is neither RSA nor Ed25519 is ignored");
                continue;
            }
        };
        let declared_ok = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
            Some(KeyAlgorithm::EdDSA) => algorithm == Algorithm::EdDSA,
            Some(_) => false,
        };
        if !declared_ok {
            tracing::warn!(path = %path.display(), kid, "a JWKS key whose `alg` is neither RS256 nor EdDSA is ignored");
            continue;
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid(format!("holds key {kid:?} that cannot be used: {e}")))?;
        keys.insert(kid, Key { algorithm, key });
    }
    if keys.is_empty() {
        return Err(invalid(
            "holds no usable key (RSA or Ed25519 keys with a `kid`)".into(),
        ));
    }
    Ok(keys)
}

/// The values of claim `name`: a string is a text value, an integer an integer value, an
/// array each of its elements; a missing claim has none. Any other type refuses the token.
pub fn claim_values(claims: &Claims, name: &str) -> Result<Vec<Value>, Refusal> {
    let bad = |why: &str| Refusal::BadClaim {
        claim: name.to_owned(),
        why: why.to_owned(),
    };
    let one = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => Ok(Value::Text(s.clone())),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Integer)
            .ok_or_else(|| bad("holds a number that is not a 64-bit integer")),
        _ => Err(bad(
            "must be a string, an integer or an array of them to name partitions",
        )),
    };
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items.iter().map(one).collect(),
        Some(value) => one(value).map(|v| vec![v]),
    }
}

/// The partitions `claims` grant under `rules` (see [`ScopeRules::partitions_for`]).
pub fn partitions(rules: &ScopeRules, claims: &Claims) -> Result<Vec<Partition>, Refusal> {
    let mut values: HashMap<&str, Vec<Value>> = HashMap::new();
    for rule in rules.rules() {
        for claim in &rule.claims {
            if !values.contains_key(claim.as_str()) {
                values.insert(claim, claim_values(claims, claim)?);
            }
        }
    }
    Ok(rules.partitions_for(|claim| values.get(claim).cloned().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    use harmonylite_core::scope::PartitionRule;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(value: serde_json::Value) -> Claims {
        value.as_object().unwrap().clone()
    }

    fn rules() -> ScopeRules {
        ScopeRules::new(
            vec![
                PartitionRule {
                    name: "user".into(),
                    claims: vec!["sub".into()],
                    tables: BTreeMap::from([("notes".into(), vec!["owner_id".into()])]),
                },
                PartitionRule {
                    name: "team".into(),
                    claims: vec!["org".into(), "teams".into()],
                    tables: BTreeMap::from([(
                        "projects".into(),
                        vec!["org_id".into(), "team_id".into()],
                    )]),
                },
            ],
            ["tags".to_owned()],
            [],
        )
        .unwrap()
    }

    #[test]
    fn claims_map_to_partitions() {
        let parts = partitions(
            &rules(),
            &claims(json!({"sub": "u1", "org": 7, "teams": ["a", "b"], "other": 1.5})),
        )
        .unwrap();
        let names: Vec<String> = parts.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["team=7,'a'", "team=7,'b'", "user='u1'"]);
        // A missing claim grants nothing of its rule.
        let parts = partitions(&rules(), &claims(json!({"sub": "u1"}))).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].rule, "user");
    }

    #[test]
    fn claims_of_other_types_are_refused_by_name() {
        for (value, why) in [
            (json!(true), "must be a string"),
            (json!(1.5), "not a 64-bit integer"),
            (json!({"a": 1}), "must be a string"),
            (json!(["a", null]), "must be a string"),
            (json!(null), "must be a string"),
        ] {
            let refused = partitions(
                &rules(),
                &claims(json!({"sub": "u1", "teams": value, "org": 1})),
            )
            .unwrap_err();
            assert!(
                matches!(&refused, Refusal::BadClaim { claim, why: w } if claim == "teams" && w.contains(why)),
                "{refused:?}"
            );
            assert!(refused.to_string().contains("\"teams\""), "{refused}");
        }
        assert_eq!(
            claim_values(&claims(json!({"n": u64::MAX})), "n")
                .unwrap_err()
                .outcome(),
            "bad_claims"
        );
    }

    fn verifier(dir: &std::path::Path, extra: impl FnOnce(&mut ScopesAuthConfig)) -> Verifier {
        let secret = dir.join("hs.secret");
        std::fs::write(&secret, "topsecret\n").unwrap();
        let mut auth = ScopesAuthConfig {
            audience: Some("app".into()),
            hs256_secret_file: Some(secret),
            ..Default::default()
        };
        extra(&mut auth);
        Verifier::load(&auth).unwrap()
    }

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), |_| {});
        let good = json!({"sub": "u1", "aud": "app", "exp": now() + 60});
        let verified = v.verify(&hs256(good.clone(), b"topsecret")).unwrap();
        assert_eq!(verified.subject, "u1");
        assert_eq!(verified.claims["aud"], "app");

        let with = |patch: serde_json::Value| {
            let mut c = good.clone();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = val.clone();
                }
            }
            c
        };
        for (token, refusal) in [
            (hs256(good.clone(), b"wrong"), Refusal::BadSignature),
            (
                hs256(with(json!({"exp": now() - 120})), b"topsecret"),
                Refusal::Expired,
            ),
            (
                hs256(with(json!({"nbf": now() + 120})), b"topsecret"),
                Refusal::NotYetValid,
            ),
            (
                hs256(with(json!({"aud": "other"})), b"topsecret"),
                Refusal::WrongAudience,
            ),
            (
                hs256(with(json!({"exp": null})), b"topsecret"),
                Refusal::MissingClaim("exp".into()),
            ),
            (
                hs256(with(json!({"sub": null})), b"topsecret"),
                Refusal::MissingClaim("sub".into()),
            ),
            ("not.a.jwt".to_owned(), Refusal::Malformed),
            (String::new(), Refusal::NoToken),
        ] {
            assert_eq!(v.verify(&token).unwrap_err(), refusal);
        }
        // Within the leeway (30 s by default) an expired token still passes.
        v.verify(&hs256(with(json!({"exp": now() - 10})), b"topsecret"))
            .unwrap();
        // The audience may be one of several.
        v.verify(&hs256(with(json!({"aud": ["x", "app"]})), b"topsecret"))
            .unwrap();
        // A tampered payload fails the signature.
        let token = hs256(good.clone(), b"topsecret");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&with(json!({"sub": "admin"}))).unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            v.verify(&parts.join(".")).unwrap_err(),
            Refusal::BadSignature
        );
    }

    #[test]
    fn the_issuer_is_checked_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), |a| a.issuer = Some("https://login".into()));
        let base = json!({"sub": "u1", "aud": "app", "exp": now() + 60});
        assert_eq!(
            v.verify(&hs256(base.clone(), b"topsecret")).unwrap_err(),
            Refusal::MissingClaim("iss".into())
        );
        let mut other = base.clone();
        other["iss"] = json!("https://evil");
        assert_eq!(
            v.verify(&hs256(other, b"topsecret")).unwrap_err(),
            Refusal::WrongIssuer
        );
        let mut good = base;
        good["iss"] = json!("https://login");
        v.verify(&hs256(good, b"topsecret")).unwrap();
    }

    #[test]
    fn algorithms_without_a_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), |_| {});
        // An RS256 header with an HMAC signature over the secret: no RSA key is configured, so
        // the secret is never used for it.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "u1", "aud": "app", "exp": now() + 60}),
            &EncodingKey::from_secret(b"topsecret"),
        )
        .unwrap();
        assert!(matches!(v.verify(&token), Err(Refusal::Algorithm(_))));
    }

    #[test]
    fn bad_key_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("k.pem");
        std::fs::write(&pem, "not a pem").unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, "{\"keys\": []}").unwrap();
        for (auth, key) in [
            (
                ScopesAuthConfig {
                    public_key_file: Some(pem.clone()),
                    ..Default::default()
                },
                "scopes.auth.public_key_file",
            ),
            (
                ScopesAuthConfig {
                    jwks_file: Some(jwks.clone()),
                    ..Default::default()
                },
                "scopes.auth.jwks_file",
            ),
            (
                ScopesAuthConfig {
                    hs256_secret_file: Some(dir.path().join("missing")),
                    ..Default::default()
                },
                "scopes.auth.hs256_secret_file",
            ),
        ] {
            let message = Verifier::load(&auth).err().unwrap().to_string();
            assert!(message.contains(key), "{message}");
        }
    }
}
