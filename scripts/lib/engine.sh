# Sourced by the benchmark and measurement scripts: builds the workspace and starts one market
# engine (SQLite, embedded broker, no chain) on free loopback ports in a temporary directory
# that goes away with the engine when the script exits.
#
#   source "$(dirname "$0")/lib/engine.sh"
#   start_engine COMMUNITY [EXTRA_TOML]
#
# PROFILE=debug uses the debug build instead of the release build. Afterwards: $bin (the
# folder of the built binaries), $dir, $http, $mqtt, $engine (the engine's pid), $api.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
profile=${PROFILE:-release}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_engine() {
  local community=$1 extra=${2:-}
  if [ "$profile" = release ]; then
    cargo build --workspace --release --quiet
  else
    cargo build --workspace --quiet
  fi
  bin="$CARGO_TARGET_DIR/$profile"
  dir=$(mktemp -d)
  http=$(free_port); mqtt=$(free_port)
  cat > "$dir/engine.toml" <<TOML
community = "$community"
[database]
url = "sqlite://$dir/engine.sqlite"
[mqtt]
embedded_listen = "127.0.0.1:$mqtt"
url = "mqtt://127.0.0.1:$mqtt"
[chain]
backend = "none"
[http]
listen = "127.0.0.1:$http"
$extra
TOML
  RUST_LOG=warn "$bin/market-engine" serve --config "$dir/engine.toml" > "$dir/engine.log" 2>&1 &
  engine=$!
  trap 'kill $engine 2>/dev/null || true; rm -rf "$dir"' EXIT
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$http/healthz" > /dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$http/healthz" > /dev/null || { cat "$dir/engine.log" >&2; return 1; }
  api="http://127.0.0.1:$http/api/v1"
}
