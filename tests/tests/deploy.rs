//! The deployment files under `deploy/` are valid: the container entrypoint renders a config
//! the sidecar accepts for every StatefulSet ordinal, the Kubernetes manifests and the
//! compose file parse and carry what a cluster needs, and the systemd unit is complete.
//! (No container engine or Kubernetes cluster runs here; these tests check what can run.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use harmonylite::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml_docs(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs the entrypoint in render-only mode with `env` and returns the TOML it prints.
fn render(env: &[(&str, &str)]) -> String {
    let out = Command::new("sh")
        .arg(repo().join("deploy/docker/entrypoint.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HL_RENDER_ONLY", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn config_map() -> HashMap<String, String> {
    let docs = yaml_docs("deploy/kubernetes/harmonylite.yaml");
    let map = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .expect("a ConfigMap");
    map["data"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_entrypoint_renders_a_valid_config_for_each_statefulset_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/app.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let mut env = config_map();
    env.insert("HL_DB_PATH".into(), db.display().to_string());
    for ordinal in 0..3 {
        let host = format!("harmonylite-{ordinal}");
        let mut vars: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.push(("HOSTNAME", &host));
        let text = render(&vars);
        let config =
            Config::from_toml_str(&text, &host).unwrap_or_else(|e| panic!("{host}:\n{text}\n{e}"));
        assert_eq!(
            config.node_id.unwrap().as_u128(),
            ordinal as u128 + 1,
            "{text}"
        );
        assert_eq!(config.db_path, db);
        assert_eq!(config.replication_log.replicas, 3);
        assert_eq!(config.nats.cluster_peers, [env["HL_CLUSTER_PEERS"].clone()]);
        assert!(config.nats.cluster_addr.is_some());
        assert!(config.health_check.enable && config.prometheus.enable);
        assert_eq!(config.health_check.bind.port(), 8090);
    }
}

#[test]
fn the_entrypoint_supports_external_nats_and_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db").display().to_string();
    let external = render(&[
        ("HL_DB_PATH", &db),
        ("HL_NATS_URLS", "nats://a:4222,nats://b:4222"),
    ]);
    let config = Config::from_toml_str(&external, "external").unwrap();
    assert_eq!(config.nats.urls, ["nats://a:4222", "nats://b:4222"]);
    assert!(!config.nats.embedded());
    assert_eq!(config.node_id, None);
    let ws = render(&[
        ("HL_DB_PATH", &db),
        ("HL_WEBSOCKET", "1"),
        ("HL_NODE_ID", "7"),
    ]);
    let config = Config::from_toml_str(&ws, "websocket").unwrap();
    assert_eq!(config.nats.websocket_bind.unwrap().port(), 8080);
    assert_eq!(config.node_id.unwrap().as_u128(), 7);
}

#[test]
fn the_kubernetes_manifests_hold_a_complete_statefulset() {
    let docs = yaml_docs("deploy/kubernetes/harmonylite.yaml");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let service = kind("Service");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "the Service must be headless"
    );
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert!(ports.contains(&6222) && ports.contains(&4222));

    let set = kind("StatefulSet");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    assert!(set["spec"]["replicas"].as_i64().unwrap() >= 3);
    let selector = &set["spec"]["selector"]["matchLabels"];
    assert_eq!(&set["spec"]["template"]["metadata"]["labels"], selector);
    assert_eq!(&service["spec"]["selector"], selector);
    let pod = &set["spec"]["template"]["spec"];
    let sidecar = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("harmonylite"))
        .unwrap();
    for probe in ["readinessProbe", "startupProbe"] {
        assert_eq!(
            sidecar[probe]["httpGet"]["path"].as_str(),
            Some("/health"),
            "{probe}"
        );
    }
    assert!(!sidecar["livenessProbe"].is_badvalue());
    let claim = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    for container in pod["containers"].as_vec().unwrap() {
        let mounts = container["volumeMounts"].as_vec().unwrap();
        assert!(
            mounts.iter().any(|m| m["name"].as_str() == Some(claim)),
            "every container shares the data volume"
        );
    }
    let peers = &config_map()["HL_CLUSTER_PEERS"];
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert!(
        peers.starts_with(&format!("dns://{service_name}.")),
        "{peers}"
    );

    let budget = kind("PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(budget["spec"]["maxUnavailable"].as_i64(), Some(1));
}

#[test]
fn the_compose_file_wires_three_nodes_to_each_other() {
    let docs = yaml_docs("deploy/docker/compose.yaml");
    let services = &docs[0]["services"];
    for n in 1..=3 {
        let node = &services[format!("node{n}").as_str()];
        let env = &node["environment"];
        assert_eq!(env["HL_NODE_ID"].as_str(), Some(n.to_string().as_str()));
        let peers = env["HL_CLUSTER_PEERS"].as_str().unwrap();
        let expected: Vec<String> = (1..=3)
            .filter(|m| *m != n)
            .map(|m| format!("nats://node{m}:6222"))
            .collect();
        assert_eq!(peers.split(',').collect::<Vec<_>>(), expected);
        let app = &services[format!("app{n}").as_str()];
        assert_eq!(
            app["volumes"], node["volumes"],
            "app{n} shares node{n}'s volume"
        );
    }
}

#[test]
fn the_systemd_unit_runs_the_sidecar_hardened() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/harmonylite.service")).unwrap();
    let keys: HashMap<&str, &str> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').unwrap())
        .collect();
    assert_eq!(
        keys["ExecStart"],
        "/usr/local/bin/harmonylite --config /etc/harmonylite/node.toml"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("User", "harmonylite"),
    ] {
        assert_eq!(keys.get(key), Some(&value), "{key}");
    }
    assert!(keys["ReadWritePaths"].contains("/var/lib/harmonylite"));
}
