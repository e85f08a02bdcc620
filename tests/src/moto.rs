//! A real S3-protocol server on loopback for the S3 snapshot store tests: moto's server mode
//! (PyPI `moto[server]`, installed into `.tools/moto` by `ensure_moto` in
//! `scripts/lib/tools.sh`), run as `moto_server -H 127.0.0.1 -p PORT`. Missing ⇒ the test
//! fails with a message saying how to install it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, stop_child, wait_until};

/// A running `moto_server`; stopped when dropped.
pub struct Moto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

/// The `moto_server` script and the `PYTHONPATH` it needs (its `--target` install dir).
fn moto_binary() -> (PathBuf, Option<PathBuf>) {
    if let Some(path) = std::env::var_os("HARMONYLITE_MOTO_SERVER").map(PathBuf::from) {
        let home = path.parent().and_then(Path::parent).map(Path::to_owned);
        return (path, home);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let local = workspace.join(".tools/moto");
    if local.join("bin/moto_server").is_file() {
        return (local.join("bin/moto_server"), Some(local));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(path) => (path, None),
        None => panic!(
            "moto_server (PyPI `moto[server]`) is needed for the S3 snapshot tests and was not found \
             in .tools/moto, $HARMONYLITE_MOTO_SERVER or PATH: run scripts/test once (ensure_moto in \
             scripts/lib/tools.sh) or `pip install 'moto[server]'`"
        ),
    }
}

impl Moto {
    /// Starts moto's S3 server on a free loopback port and waits until it answers.
    pub fn start(log_dir: &Path) -> Self {
        let (binary, home) = moto_binary();
        let port = free_port();
        std::fs::create_dir_all(log_dir).unwrap();
        let log = std::fs::File::create(log_dir.join("moto.log")).unwrap();
        let mut command = Command::new(&binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(home) = home {
            let existing = std::env::var("PYTHONPATH").unwrap_or_default();
            command.env("PYTHONPATH", format!("{}:{existing}", home.display()));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut moto = Moto { port, child };
        let up = wait_until(Duration::from_secs(30), || {
            moto.request("GET", "/")
                .is_some_and(|(code, _)| code == 200)
        });
        if !up {
            stop_child(&mut moto.child, true);
            panic!(
                "moto_server did not answer on 127.0.0.1:{port}:\n{}",
                std::fs::read_to_string(log_dir.join("moto.log")).unwrap_or_default()
            );
        }
        moto
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One unsigned HTTP request (moto does not check signatures): status code and body.
    pub fn request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let (code, body) = self
            .request("PUT", &format!("/{bucket}"))
            .expect("moto answers");
        assert_eq!(code, 200, "creating bucket {bucket}: {body}");
    }

    /// In-progress multipart uploads of `bucket` (`ListMultipartUploads`), as object keys.
    pub fn multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let (code, body) = self
            .request("GET", &format!("/{bucket}?uploads"))
            .expect("moto answers");
        assert_eq!(code, 200, "listing multipart uploads: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// The `[snapshot]` section (plus `extra` keys of it) that stores snapshots in `bucket`
    /// under `path` on this server, with static test keys.
    pub fn snapshot_toml(&self, bucket: &str, path: &str, extra: &str) -> String {
        format!(
            "[snapshot]\nstore = \"s3\"\n{extra}\n[snapshot.s3]\nendpoint = \"{}\"\nbucket = \"{bucket}\"\npath = \"{path}\"\npath_style = true\nregion = \"us-east-1\"\naccess_key = \"testing\"\nsecret = \"testing\"\n",
            self.endpoint()
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop_child(&mut self.child, false);
    }
}
