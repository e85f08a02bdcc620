#!/bin/sh
# Renders the sidecar's config from environment variables, then runs it.
#
#   HL_DB_PATH        database file (default /var/lib/harmonylite/data/app.db)
#   HL_NODE_ID        node id; default: the ordinal of a StatefulSet pod name
#                     (`name-2` -> 3), else unset (the database keeps or makes one)
#   HL_CLUSTER_PEERS  comma list of route URLs, e.g. dns://harmonylite-headless:6222
#   HL_REPLICAS       stream replicas (default: 3 when peers are set, else 1)
#   HL_MAX_ENTRIES    stream retention in messages (default 1000000)
#   HL_NATS_URLS      comma list of external NATS URLs (then no embedded server)
#   HL_WEBSOCKET      1 to open the WebSocket listener on 8080 for browser replicas
#   HL_EXTRA_CONFIG   TOML appended verbatim (e.g. a [snapshot] section)
#   HL_CONFIG         path of the rendered file (default /etc/harmonylite/node.toml)
#   HL_RENDER_ONLY    1: print the rendered config and exit (used by the tests)
set -eu

db_path=${HL_DB_PATH:-/var/lib/harmonylite/data/app.db}
config=${HL_CONFIG:-/etc/harmonylite/node.toml}
host=${HOSTNAME:-$(hostname)}

node_id=${HL_NODE_ID:-}
if [ -z "$node_id" ]; then
  ordinal=${host##*-}
  case "$ordinal" in
    ''|*[!0-9]*) ;;
    *) node_id=$((ordinal + 1)) ;;
  esac
fi

toml_list() { # comma list -> TOML array of strings
  printf '%s' "$1" | awk -F, '{ for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? ", " : ""), $i }'
}

render() {
  echo "db_path = \"$db_path\""
  [ -n "$node_id" ] && echo "node_id = $node_id"
  echo
  echo "[replication_log]"
  if [ -n "${HL_REPLICAS:-}" ]; then echo "replicas = $HL_REPLICAS"
  elif [ -n "${HL_CLUSTER_PEERS:-}" ]; then echo "replicas = 3"; fi
  echo "max_entries = ${HL_MAX_ENTRIES:-1000000}"
  echo
  echo "[nats]"
  if [ -n "${HL_NATS_URLS:-}" ]; then
    echo "urls = [$(toml_list "$HL_NATS_URLS")]"
  else
    echo "bind_address = \"0.0.0.0:4222\""
    if [ -n "${HL_CLUSTER_PEERS:-}" ]; then
      echo "cluster_addr = \"0.0.0.0:6222\""
      echo "cluster_peers = [$(toml_list "$HL_CLUSTER_PEERS")]"
    fi
    [ "${HL_WEBSOCKET:-0}" = 1 ] && echo "websocket_bind = \"0.0.0.0:8080\""
  fi
  echo
  echo "[health_check]"
  echo "enable = true"
  echo "bind = \"0.0.0.0:8090\""
  echo
  echo "[prometheus]"
  echo "enable = true"
  echo "bind = \"0.0.0.0:3010\""
  echo
  echo "[logging]"
  echo "format = \"json\""
  if [ -n "${HL_EXTRA_CONFIG:-}" ]; then echo; printf '%s\n' "$HL_EXTRA_CONFIG"; fi
}

if [ "${HL_RENDER_ONLY:-0}" = 1 ]; then
  render
  exit 0
fi
mkdir -p "$(dirname "$db_path")" "$(dirname "$config")"
render >"$config"
exec harmonylite --config "$config" "$@"
