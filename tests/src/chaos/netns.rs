//! A private network for a chaos run: one Linux network namespace per member (each node, and
//! the wasm replica when the run has one), each joined by a veth pair to a bridge that lives in
//! a namespace of its own. Every address (10.213.X.0/24)
//! exists only inside these namespaces. A partition is a set of blackhole routes between the
//! two sides; healing deletes them.
//!
//! Needs root and the `ip` command (iproute2; `scripts/lib/tools.sh` installs it).

use std::process::Command;

/// The namespaces, bridge and addresses of one run; removed on drop.
pub struct Network {
    tag: String,
    subnet: u8,
    nodes: usize,
    blackholes: Vec<(usize, usize)>,
}

/// Runs `ip` with `args`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2; scripts/lib/tools.sh installs it)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Network {
    /// Creates the bridge namespace and `nodes` member namespaces, addressed
    /// 10.213.`subnet`.(i+1).
    /// `tag` keeps the names of concurrent runs apart (at most 6 characters).
    pub fn create(tag: &str, subnet: u8, nodes: usize) -> Network {
        assert!(
            tag.len() <= 6,
            "network tag {tag:?} longer than 6 characters"
        );
        let net = Network {
            tag: tag.into(),
            subnet,
            nodes,
            blackholes: Vec::new(),
        };
        net.remove_leftovers();
        let bridge = net.bridge_ns();
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        ip(&["-n", &bridge, "link", "set", "lo", "up"]);
        for i in 0..nodes {
            let ns = net.namespace(i);
            let inner = format!("{tag}n{i}");
            let outer = format!("{tag}b{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns",
                &bridge,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.address(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &bridge, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &outer, "up"]);
        }
        net
    }

    /// The namespace of node `i`.
    pub fn namespace(&self, i: usize) -> String {
        format!("hl{}-{i}", self.tag)
    }

    fn bridge_ns(&self) -> String {
        format!("hl{}-br", self.tag)
    }

    /// Node `i`'s address.
    pub fn address(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    /// Cuts every member of `side` off from every other member (both directions).
    pub fn partition(&mut self, side: &[usize]) {
        for a in side.iter().copied() {
            for b in (0..self.nodes).filter(|b| !side.contains(b)) {
                for (from, to) in [(a, b), (b, a)] {
                    if !self.blackholes.contains(&(from, to)) {
                        ip(&[
                            "-n",
                            &self.namespace(from),
                            "route",
                            "add",
                            "blackhole",
                            &format!("{}/32", self.address(to)),
                        ]);
                        self.blackholes.push((from, to));
                    }
                }
            }
        }
    }

    /// Whether a partition is in place.
    pub fn is_partitioned(&self) -> bool {
        !self.blackholes.is_empty()
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.blackholes) {
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.address(to)),
            ]);
        }
    }

    /// Deletes namespaces of an earlier run with the same tag (a killed test leaves them).
    fn remove_leftovers(&self) {
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("running `ip netns list` (iproute2; scripts/lib/tools.sh installs it)");
        let prefix = format!("hl{}-", self.tag);
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns()])
            .status();
    }
}
