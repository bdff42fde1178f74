#!/usr/bin/env bash
# Memory of the market engine under a flood of junk MQTT messages (issue 10, item 8): starts an
# engine (SQLite, embedded broker with authentication), registers and approves one meter as an
# operator would, reads the engine's resident memory, publishes COUNT junk messages with that
# meter's broker login on its own reading topic (what a compromised meter can send), waits until
# the engine counted every one, and prints resident memory before, the peak (VmHWM) and after,
# the rejection counters and the rows recorded.
#
#   scripts/measure-junk-flood.sh [COUNT] [BYTES]
#
# PROFILE=debug measures the debug build instead of the release build. Needs mosquitto_pub.
set -euo pipefail
count=${1:-50000}
bytes=${2:-1000}
cd "$(dirname "$0")/.."
source scripts/lib/engine.sh
start_engine flood
j='content-type: application/json'
GRIDSHARE_OPERATOR_PASSWORD='operator passphrase 1' "$bin/market-engine" operator \
  --config "$dir/engine.toml" --name operator >/dev/null
curl -sf -c "$dir/op" -H "$j" -d '{"name":"operator","password":"operator passphrase 1"}' "$api/sessions" >/dev/null
curl -sf -H "$j" -d '{"name":"flooder","password":"flooder passphrase 1"}' "$api/accounts" >/dev/null
curl -sf -c "$dir/home" -H "$j" -d '{"name":"flooder","password":"flooder passphrase 1"}' "$api/sessions" >/dev/null
public=$("$bin/meter-agent" keygen --out "$dir/meter.key" | sed -n 's/.*public key[^0-9a-f]*\([0-9a-f]\{130\}\).*/\1/p' | head -n 1)
curl -sf -b "$dir/home" -H "$j" -d "{\"meter_id\":\"junk\",\"public_key\":\"$public\"}" "$api/meters" >/dev/null
password=$(curl -sf -b "$dir/op" -H "$j" \
  -d '{"export_capacity_w":5000,"import_capacity_w":5000,"manufacturer":"x","model":"y","serial":"z"}' \
  "$api/meters/junk/approval" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mqtt"]["password"])')
rss() { awk '/VmRSS/ {print $2}' "/proc/$engine/status"; }
rejected() { curl -s "http://127.0.0.1:$http/metrics" | awk '/^gridshare_readings_rejected_total/ {s += $2} END {print s + 0}'; }
sleep 2
before=$(rss)
start=$(date +%s.%N)
python3 -c "import sys; sys.stdout.write(('x' * $bytes + '\n') * $count)" | mosquitto_pub -h 127.0.0.1 -p "$mqtt" -u junk -P "$password" \
  -i junk-flooder -q 1 -t gridshare/v1/flood/meters/junk/reading -l
for _ in $(seq 1200); do [ "$(rejected)" -ge "$count" ] && break; sleep 0.1; done
took=$(echo "$(date +%s.%N) - $start" | bc)
sleep 5
after=$(rss)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$engine/status")
rows=$(sqlite3 "$dir/engine.sqlite" 'SELECT COUNT(*) FROM rejections' 2>/dev/null || echo '?')
echo "junk messages: $count x $bytes B, counted as rejected: $(rejected), in ${took}s"
echo "rejection rows recorded: $rows"
echo "engine resident memory: before $((before / 1024)) MiB, peak $((peak / 1024)) MiB, after $((after / 1024)) MiB ($(( (after - before) * 100 / before )) %)"
