#!/usr/bin/env bash
# Signed readings verified and stored per second through a real broker into SQLite.
#
#   scripts/bench-ingest.sh              # the engine's embedded broker: each meter logs in with
#                                        # its issued credentials, the gate checks every publish
#   scripts/bench-ingest.sh --no-gate    # the same, published straight into rumqttd (what the
#                                        # gate costs)
#   scripts/bench-ingest.sh mosquitto    # a Mosquitto started here, configured as the README
#                                        # recommends for the engine (needs mosquitto)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
if [ "${1:-embedded}" != mosquitto ]; then
  exec cargo bench --workspace --bench ingest -- "$@"
fi
bin="${MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
# The engine acknowledges a reading once it is stored: let enough be in flight to it, and
# never drop what is queued for its persistent session.
max_inflight_messages 1000
max_queued_messages 0
CONF
"$bin" -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cargo bench --workspace --bench ingest -- "mqtt://127.0.0.1:$port"
