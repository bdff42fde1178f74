#!/usr/bin/env bash
# Order placement over HTTP under load: starts a release market engine (SQLite, embedded
# broker), creates an account, a meter and an API token, then runs wrk for DURATION seconds
# with CONNECTIONS connections posting orders. Prints wrk's throughput and latency percentiles.
#
#   scripts/bench-orders.sh [DURATION] [CONNECTIONS]
#
# Needs wrk (apt-get install wrk).
set -euo pipefail
duration=${1:-20}
connections=${2:-32}
cd "$(dirname "$0")/.."
source scripts/lib/engine.sh
start_engine bench "orders_per_second = 1000000
orders_burst = 1000000"
curl -sf -H 'content-type: application/json' -d '{"name":"bench","password":"benchmark-password"}' "$api/accounts" > /dev/null
# The session is in the cookie only.
curl -sf -c "$dir/jar" -H 'content-type: application/json' -d '{"name":"bench","password":"benchmark-password"}' "$api/sessions" > /dev/null
token=$(curl -sf -b "$dir/jar" -H 'content-type: application/json' -d '{"label":"wrk"}' "$api/tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# The bids spend the account's own money: the operator records a deposit large enough for all.
"$bin/market-engine" operator --config "$dir/engine.toml" --name bench > /dev/null
curl -sf -c "$dir/operator-jar" -H 'content-type: application/json' -d '{"name":"bench","password":"benchmark-password"}' "$api/sessions" > /dev/null
curl -sf -b "$dir/operator-jar" -H 'content-type: application/json' -d '{"amount":1000000000000000,"reference":"bench"}' "$api/accounts/bench/deposits" > /dev/null
key=$("$bin/meter-agent" keygen --out "$dir/meter.key" | awk '/^public key:/ {print $3}')
curl -sf -H "authorization: Bearer $token" -H 'content-type: application/json' -d "{\"meter_id\":\"bench-meter\",\"public_key\":\"$key\"}" "$api/meters" > /dev/null
slot=$(curl -sf "$api/slots/current" | python3 -c 'import json,sys; print(json.load(sys.stdin)["delivering"] + 4)')
TOKEN=$token METER=bench-meter SLOT=$slot wrk -t2 -c"$connections" -d"${duration}s" --latency \
  -s market-engine/bench/orders.lua "http://127.0.0.1:$http"
python3 - "$dir/engine.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print("orders in the order log:", c.execute("select count(*) from order_events").fetchone()[0])
PY
