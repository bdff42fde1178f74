#!/usr/bin/env bash
# After an outage of SECONDS (default 60) — the market engine stopped while a meter agent
# publishes into Mosquitto's queue for it, Mosquitto restarted without persistence so the queue
# is lost, the engine started again — how long until the engine has asked the agent for every
# missing reading and every gap is filled.
#
#   scripts/measure-gap-recovery.sh [SECONDS]
#
# Runs the regression test `gaps::readings_a_restarted_broker_lost_are_asked_for_again_and_arrive`
# (the agent reads a simulated inverter every 100 ms: ten readings a second, ten times a real
# agent's default) on SQLite, and on PostgreSQL too when GRIDSHARE_TEST_POSTGRES_URL is set.
# Needs Mosquitto (MOSQUITTO_BIN or /usr/sbin/mosquitto).
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
GRIDSHARE_TEST_OUTAGE_S=$seconds cargo test --workspace --test it --quiet -- --exact \
  gaps::readings_a_restarted_broker_lost_are_asked_for_again_and_arrive --nocapture 2>&1 \
  | grep -E 'every gap filled|FAILED|panicked'
