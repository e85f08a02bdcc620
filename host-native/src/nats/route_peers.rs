//! Cluster peers of the embedded NATS server: `nats://host:port` routes are used as given;
//! `dns://name:port` is resolved (A and AAAA records, `/etc/hosts`) to one route per address,
//! each time the server is (re)started. This is how a Kubernetes StatefulSet finds its
//! peers through a headless Service: the name lists every pod, and NATS gossips the rest of
//! the cluster to a node once it reaches any one peer.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::config::parse_dns_peer;

/// Route URLs for `peers`: `dns://` peers replaced by one `nats://ip:port` route per address
/// `resolve` returns for them (sorted, without duplicates); other peers kept as they are. A
/// name that does not resolve (yet) contributes no route and is logged: the first pod of a
/// StatefulSet may start before its Service has any address.
pub fn expand_routes(
    peers: &[String],
    resolve: impl Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
) -> Vec<String> {
    let mut routes = Vec::new();
    for peer in peers {
        match parse_dns_peer(peer) {
            None => routes.push(peer.clone()),
            Some(Err(why)) => tracing::warn!("cluster peer ignored: {why}"),
            Some(Ok((name, port))) => match resolve(name, port) {
                Ok(addresses) if !addresses.is_empty() => {
                    let mut found: Vec<String> = addresses
                        .into_iter()
                        .map(|ip| format!("nats://{}", SocketAddr::new(ip, port)))
                        .collect();
                    found.sort();
                    found.dedup();
                    tracing::info!(peer = %peer, routes = ?found, "cluster peers resolved");
                    routes.extend(found);
                }
                Ok(_) => {
                    tracing::warn!(peer = %peer, "cluster peer name has no address yet; starting without its routes")
                }
                Err(error) => {
                    tracing::warn!(peer = %peer, %error, "cluster peer name does not resolve (yet); starting without its routes")
                }
            },
        }
    }
    routes.dedup();
    routes
}

/// Resolves `name` with the system resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
pub fn resolve_with_system(name: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    Ok((name, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_peers_parse_with_an_explicit_port() {
        assert_eq!(
            parse_dns_peer("dns://hl-headless.default.svc:6222"),
            Some(Ok(("hl-headless.default.svc", 6222)))
        );
        assert_eq!(parse_dns_peer("DNS://a:1"), Some(Ok(("a", 1))));
        assert_eq!(parse_dns_peer("nats://a:6222"), None);
        for bad in [
            "dns://a",
            "dns://:6222",
            "dns://a:0",
            "dns://a:x",
            "dns://a/b:1",
        ] {
            let why = parse_dns_peer(bad).unwrap().unwrap_err();
            assert!(why.contains("dns://name:port"), "{bad}: {why}");
        }
    }

    #[test]
    fn dns_peers_expand_to_one_route_per_address() {
        let resolve = |name: &str, _port: u16| match name {
            "peers" => Ok(vec![
                "127.0.0.3".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
                "::1".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ]),
            "empty" => Ok(vec![]),
            _ => Err(std::io::Error::other("no such name")),
        };
        let peers = [
            "nats://static:6222".to_owned(),
            "dns://peers:7222".to_owned(),
            "dns://missing:6222".to_owned(),
            "dns://empty:6222".to_owned(),
        ];
        assert_eq!(
            expand_routes(&peers, resolve),
            [
                "nats://static:6222",
                "nats://127.0.0.1:7222",
                "nats://127.0.0.3:7222",
                "nats://[::1]:7222",
            ]
        );
    }

    #[test]
    fn the_system_resolver_reads_localhost() {
        let found = resolve_with_system("localhost", 6222).unwrap();
        assert!(found.iter().any(|ip| ip.is_loopback()), "{found:?}");
    }
}
