//! NATS JWTs of the auth callout protocol (nats-io/jwt v2): reading the server's
//! authorization request, writing the user JWT and the authorization response.
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` with the header
//! `{"typ":"JWT","alg":"ed25519-nkey"}` and an Ed25519 signature by an nkey over the first two
//! parts. The claims are JSON; the protocol's part is under `nats`. Signing and verifying are
//! the `nkeys` crate's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The account users issued without an account of their own are placed in: the server's
/// global account (the one its configured users live in).
pub const GLOBAL_ACCOUNT: &str = "$G";

/// Why an authorization request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a NATS JWT (or an encrypted request: the server has an `xkey` configured).
    #[error("the authorization request is not a NATS JWT ({0})")]
    Malformed(String),
    /// The signature is not the claimed server's.
    #[error("the authorization request's signature does not verify")]
    BadSignature,
}

/// What the sidecar needs from the server's authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The public user nkey the server generated: the subject of the user JWT.
    pub user_nkey: String,
    /// The asking server's id (its public nkey): the audience of the response.
    pub server_id: String,
    /// The token the client passed (`connect_opts.auth_token`), empty when none.
    pub token: String,
    /// The client's name (`connect_opts.name`), for logs.
    pub client_name: String,
    /// The client's host, for logs.
    pub client_host: String,
}

#[derive(Deserialize)]
struct RequestClaims {
    iss: String,
    nats: RequestBody,
}

#[derive(Deserialize)]
struct RequestBody {
    user_nkey: String,
    server_id: ServerId,
    #[serde(default)]
    connect_opts: ConnectOpts,
    #[serde(default)]
    client_info: ClientInfo,
}

#[derive(Deserialize)]
struct ServerId {
    id: String,
}

#[derive(Deserialize, Default)]
struct ConnectOpts {
    #[serde(default)]
    auth_token: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct ClientInfo {
    #[serde(default)]
    host: String,
}

/// Reads and verifies an authorization request: signed by the server whose id it carries.
pub fn decode_request(jwt: &str) -> Result<AuthRequest, RequestError> {
    let malformed = |why: &str| RequestError::Malformed(why.to_owned());
    let mut parts = jwt.trim().splitn(3, '.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| malformed("bad header"))?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("ed25519-nkey") {
        return Err(malformed("header algorithm is not ed25519-nkey"));
    }
    let claims: RequestClaims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or_else(|| malformed("bad claims"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("bad signature encoding"))?;
    if claims.iss != claims.nats.server_id.id {
        return Err(malformed("not signed by the server it names"));
    }
    let server = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| malformed("issuer is not a public nkey"))?;
    let signed = &jwt.trim()[..header.len() + 1 + payload.len()];
    server
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| RequestError::BadSignature)?;
    Ok(AuthRequest {
        user_nkey: claims.nats.user_nkey,
        server_id: claims.nats.server_id.id,
        token: claims.nats.connect_opts.auth_token,
        client_name: claims.nats.connect_opts.name,
        client_host: claims.nats.client_info.host,
    })
}

/// What a user may do: subjects it may publish to and subscribe to (nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPermissions {
    /// Publish allow-list.
    pub publish: Vec<String>,
    /// Subscribe allow-list.
    pub subscribe: Vec<String>,
}

/// A user JWT for `user_nkey`, named `name`, placed in the global account, allowed exactly
/// `permissions`, expiring at `expires` (Unix seconds), signed by `account`.
pub fn user_jwt(
    account: &nkeys::KeyPair,
    user_nkey: &str,
    name: &str,
    permissions: &UserPermissions,
    expires: i64,
    now: i64,
) -> Result<String, nkeys::error::Error> {
    let claims = json!({
        "jti": jti(),
        "iat": now,
        "iss": account.public_key(),
        "name": name,
        "sub": user_nkey,
        "aud": GLOBAL_ACCOUNT,
        "exp": expires,
        "nats": {
            "pub": { "allow": permissions.publish },
            "sub": { "allow": permissions.subscribe },
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    });
    encode(&claims, account)
}

/// The authorization response to `request`: the user JWT, or the error the client is
/// refused with. Signed by `account` (the server's `auth_callout.issuer`).
pub fn response_jwt(
    account: &nkeys::KeyPair,
    request: &AuthRequest,
    answer: Result<&str, &str>,
    now: i64,
) -> Result<String, nkeys::error::Error> {
    let mut nats = json!({ "type": "authorization_response", "version": 2 });
    match answer {
        Ok(user) => nats["jwt"] = json!(user),
        Err(error) => nats["error"] = json!(error),
    }
    let claims = json!({
        "jti": jti(),
        "iat": now,
        "iss": account.public_key(),
        "sub": request.user_nkey,
        "aud": request.server_id,
        "nats": nats,
    });
    encode(&claims, account)
}

fn encode(claims: &serde_json::Value, key: &nkeys::KeyPair) -> Result<String, nkeys::error::Error> {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// A unique JWT id.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    // A clash would only make two JWT ids equal; nothing relies on them.
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(jwt: &str) -> (serde_json::Value, serde_json::Value) {
        let mut it = jwt.split('.');
        let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
        let c = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
        (
            serde_json::from_slice(&h).unwrap(),
            serde_json::from_slice(&c).unwrap(),
        )
    }

    /// A request as a server writes it (nats-server's auth_callout.go).
    fn request(server: &nkeys::KeyPair, id: &str, token: &str) -> String {
        let claims = json!({
            "aud": "nats-authorization-request",
            "iat": 1, "exp": 2,
            "iss": server.public_key(),
            "sub": "ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA",
            "nats": {
                "server_id": {"name": "A", "host": "127.0.0.1", "id": id},
                "user_nkey": "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON",
                "client_info": {"host": "127.0.0.1", "id": 7, "kind": "Client", "type": "nats"},
                "connect_opts": {"auth_token": token, "name": "tab", "lang": "rust", "protocol": 1},
                "type": "authorization_request", "version": 2
            }
        });
        encode(&claims, server).unwrap()
    }

    #[test]
    fn requests_are_read_and_their_signature_checked() {
        let server = nkeys::KeyPair::new_server();
        let id = server.public_key();
        let req = decode_request(&request(&server, &id, "tok")).unwrap();
        assert_eq!(req.server_id, id);
        assert_eq!(req.token, "tok");
        assert_eq!(req.client_name, "tab");
        assert!(req.user_nkey.starts_with('U'));

        // Signed by another key than the one it names.
        let other = nkeys::KeyPair::new_server();
        assert!(matches!(
            decode_request(&request(&other, &id, "tok")),
            Err(RequestError::Malformed(_))
        ));
        // Tampered claims.
        let good = request(&server, &id, "tok");
        let mut p: Vec<String> = good.split('.').map(str::to_owned).collect();
        let (_, mut claims) = parts(&good);
        claims["nats"]["connect_opts"]["auth_token"] = json!("other");
        p[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(
            decode_request(&p.join(".")),
            Err(RequestError::BadSignature)
        );
        assert!(decode_request("garbage").is_err());
    }

    #[test]
    fn user_and_response_jwts_have_the_nats_layout() {
        let account = nkeys::KeyPair::new_account();
        let permissions = UserPermissions {
            publish: vec!["a.b".into()],
            subscribe: vec!["_INBOX_tu1.>".into()],
        };
        let user = user_jwt(&account, "UXYZ", "u1", &permissions, 99, 5).unwrap();
        let (header, claims) = parts(&user);
        assert_eq!(header, json!({"typ": "JWT", "alg": "ed25519-nkey"}));
        assert_eq!(claims["iss"], json!(account.public_key()));
        assert_eq!(claims["sub"], "UXYZ");
        assert_eq!(claims["aud"], "$G");
        assert_eq!(claims["exp"], 99);
        assert_eq!(claims["nats"]["pub"]["allow"], json!(["a.b"]));
        assert_eq!(claims["nats"]["sub"]["allow"], json!(["_INBOX_tu1.>"]));
        assert_eq!(claims["nats"]["type"], "user");
        assert_eq!(claims["nats"]["version"], 2);
        assert!(claims["nats"].get("resp").is_none());
        // The signature verifies with the account's public key.
        let (signed, sig) = user.rsplit_once('.').unwrap();
        nkeys::KeyPair::from_public_key(&account.public_key())
            .unwrap()
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();

        let req = AuthRequest {
            user_nkey: "UXYZ".into(),
            server_id: "NSERVER".into(),
            token: String::new(),
            client_name: String::new(),
            client_host: String::new(),
        };
        let (_, ok) = parts(&response_jwt(&account, &req, Ok(&user), 5).unwrap());
        assert_eq!(ok["aud"], "NSERVER");
        assert_eq!(ok["sub"], "UXYZ");
        assert_eq!(ok["nats"]["jwt"], json!(user));
        assert_eq!(ok["nats"]["type"], "authorization_response");
        assert!(ok["nats"].get("error").is_none());
        let (_, refused) = parts(&response_jwt(&account, &req, Err("expired"), 5).unwrap());
        assert_eq!(refused["nats"]["error"], "expired");
        assert!(refused["nats"].get("jwt").is_none());
    }
}
