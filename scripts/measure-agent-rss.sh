#!/usr/bin/env bash
# Resident memory of the meter agent polling one (simulated) device once a second and
# publishing every reading to an MQTT broker, for SECONDS seconds (default 60).
#
#   scripts/measure-agent-rss.sh [SECONDS] [MQTT_URL]
#
# Needs a broker at MQTT_URL (default mqtt://127.0.0.1:1883, e.g. Mosquitto) and
# /usr/bin/time. Prints the maximum resident set size and how many readings were delivered.
set -euo pipefail
seconds=${1:-60}
mqtt=${2:-mqtt://127.0.0.1:1883}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
cargo build --workspace --release --quiet --features meter-agent/demo
bin="$CARGO_TARGET_DIR/release/meter-agent"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" keygen --out "$dir/meter.key" > /dev/null
"$bin" simulate-device --listen "127.0.0.1:$port" --speed 60 > /dev/null 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
cat > "$dir/agent.toml" <<TOML
meter_id = "rss-test"
community = "bench"
key_file = "$dir/meter.key"
data_dir = "$dir"
poll_interval_ms = 1000
[modbus]
address = "127.0.0.1:$port"
[mqtt]
url = "$mqtt"
TOML
timeout -s INT "$seconds" /usr/bin/time -v "$bin" run --config "$dir/agent.toml" 2> "$dir/time.log" || true
grep -E "Maximum resident set size" "$dir/time.log"
python3 - "$dir/outbox.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
sent = c.execute("select next_seq - 1 from agent_state").fetchone()[0]
left = c.execute("select count(*) from outbox").fetchone()[0]
print(f"readings signed: {sent}, still in the outbox: {left}")
PY
