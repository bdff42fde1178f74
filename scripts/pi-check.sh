#!/usr/bin/env bash
# The meter agent on a Raspberry Pi, proven on this machine: cross-compiles meter-agent for
# aarch64-unknown-linux-gnu with Debian's cross toolchain, runs the ARM binary under qemu-user
# against the simulated SunSpec device until its readings reach a subscriber, and prints
# the resident memory of the ARM run (qemu process: guest plus the emulator itself) and of the
# same run natively on x86.
#
# Needs: rustup target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu, qemu-user, mosquitto
# (with mosquitto_sub). Usage: scripts/pi-check.sh [seconds-to-run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-10}"
TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

cargo build --release -p meter-agent --target "$TARGET"
arm_bin="$CARGO_TARGET_DIR/$TARGET/release/meter-agent"
file "$arm_bin" | grep -q 'ARM aarch64' || { echo "not an aarch64 binary: $arm_bin" >&2; exit 1; }
# The simulated device and the native agent, on the host.
cargo build --release -p meter-agent --features demo
host_bin="$CARGO_TARGET_DIR/release/meter-agent"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
device_port="$(free_port)"
mqtt_port="$(free_port)"
"$host_bin" simulate-device --listen "127.0.0.1:$device_port" --speed 60 >/dev/null 2>&1 &
pids+=($!)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mqtt_port" >"$work/mosquitto.conf"
"${MOSQUITTO_BIN:-mosquitto}" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 1

# Runs one agent (`$@` is the command) for SECONDS_TO_RUN, prints "readings peak-RSS-kB".
measure() {
  local name="$1"; shift
  local dir="$work/$name"
  mkdir -p "$dir"
  "$host_bin" keygen --out "$dir/meter.key" >/dev/null
  cat >"$dir/meter-agent.toml" <<EOF
meter_id = "pi-$name"
community = "pi"
key_file = "$dir/meter.key"
data_dir = "$dir"
poll_interval_ms = 1000
clock_sync = "informative"
[modbus]
address = "127.0.0.1:$device_port"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
EOF
  mosquitto_sub -p "$mqtt_port" -t "gridshare/v1/pi/meters/pi-$name/reading" >"$dir/readings" &
  local sub=$!
  "$@" run -c "$dir/meter-agent.toml" 2>"$dir/log" &
  local agent=$!
  local peak=0
  for _ in $(seq "$SECONDS_TO_RUN"); do
    sleep 1
    local rss
    rss="$(awk '/VmHWM/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0)"
    [ "${rss:-0}" -gt "$peak" ] && peak="$rss"
  done
  kill -TERM "$agent"; wait "$agent" || true
  kill "$sub" 2>/dev/null || true
  echo "$(wc -l <"$dir/readings") $peak"
}

read -r arm_readings arm_rss < <(measure arm qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm_bin")
read -r x86_readings x86_rss < <(measure x86 "$host_bin")
echo "aarch64 under qemu-user: $arm_readings readings delivered in ${SECONDS_TO_RUN} s, peak RSS $((arm_rss / 1024)) MiB (qemu included)"
echo "x86_64 native:           $x86_readings readings delivered in ${SECONDS_TO_RUN} s, peak RSS $((x86_rss / 1024)) MiB"
[ "$arm_readings" -ge 1 ] || { echo "the ARM agent published no reading" >&2; exit 1; }
