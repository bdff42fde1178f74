#!/usr/bin/env bash
# Memory of the market engine under a flood of wrong logins (issue 10, item 7): starts an
# engine (SQLite, embedded broker, default [auth] settings), reads its resident memory, sends
# ROUNDS rounds of PARALLEL simultaneous logins with wrong 1 KB passwords for different names,
# then prints the resident memory before, the peak (VmHWM) and after, and the answers by status.
#
#   scripts/measure-login-flood.sh [PARALLEL] [ROUNDS]
#
# PROFILE=debug measures the debug build instead of the release build. ADDRESS_LIMIT sets
# [auth] failures_per_address (default 20: after 20 failures the rest are answered 429; a large
# value lets every login through to the hashing queue, as a flood from many addresses would).
set -euo pipefail
parallel=${1:-128}
rounds=${2:-5}
cd "$(dirname "$0")/.."
source scripts/lib/engine.sh
start_engine flood "[auth]
failures_per_address = ${ADDRESS_LIMIT:-20}"
python3 - "$engine" "$http" "$parallel" "$rounds" <<'PY'
import collections, http.client, json, sys, threading
pid, port, parallel, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def kib(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
statuses = collections.Counter()
lock = threading.Lock()
def guess(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"name": f"flood-{i}", "password": "x" * 1024})
    c.request("POST", "/api/v1/sessions", body, {"content-type": "application/json"})
    status = c.getresponse().status
    with lock:
        statuses[status] += 1
before = kib("VmRSS")
for r in range(rounds):
    threads = [threading.Thread(target=guess, args=(r * parallel + i,)) for i in range(parallel)]
    for t in threads: t.start()
    for t in threads: t.join()
print(f"resident memory: before {before // 1024} MiB, peak {kib('VmHWM') // 1024} MiB, after {kib('VmRSS') // 1024} MiB")
print("answers:", ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))
PY
