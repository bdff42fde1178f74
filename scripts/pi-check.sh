#!/usr/bin/env bash
# The meter agent on a Raspberry Pi, proven on this machine: cross-compiles meter-agent for
# aarch64-unknown-linux-gnu (Pi 3/4/5, 64-bit OS) and armv7-unknown-linux-gnueabihf (Pi 2/3/4,
# 32-bit OS) with Debian's cross toolchains, runs each ARM binary under qemu-user against the
# simulated SunSpec device until its readings reach a subscriber, prints its resident memory,
# runs the same agent natively on x86_64, and packs the three binaries as Debian packages
# (scripts/build-deb.sh) into $CARGO_TARGET_DIR/deb/.
#
# Resident memory under qemu: the qemu process holds the guest's memory and its own (the
# translated code, its heap). qemu is told to put the guest's address space at 16 TiB (-B),
# far below its own mappings (0x55..., 0x7f...), so the resident pages in the terabyte from
# there are the agent's own: "guest" is their peak over the run (sampled every 0.2 s), "with
# qemu" the whole process's peak (VmHWM). A C program that fills 20 MiB measures 21 MiB guest
# and 36 MiB with qemu this way, on both ARM targets.
#
# Needs: rustup targets aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf,
# gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf (with libc6-dev-arm64-cross,
# libc6-dev-armhf-cross), qemu-user, mosquitto (with mosquitto_sub), dpkg-deb, python3.
# Usage: scripts/pi-check.sh [seconds-to-run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-10}"
source scripts/lib/agent.sh

aarch64_bin="$(agent_binary aarch64-unknown-linux-gnu)"
armv7_bin="$(agent_binary armv7-unknown-linux-gnueabihf)"
host_bin="$(agent_binary "$HOST_TARGET")"
demo_bin="$(agent_binary "$HOST_TARGET" demo)"
file "$aarch64_bin" | grep -q 'ARM aarch64' || { echo "not an aarch64 binary: $aarch64_bin" >&2; exit 1; }
file "$armv7_bin" | grep -q 'ARM, EABI5' || { echo "not an armv7 binary: $armv7_bin" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
start_peers "$demo_bin" "$work"

# Where qemu puts the guest's address space, and how much of it to count.
GUEST_BASE=0x100000000000
GUEST_SIZE=0x10000000000

# Samples the process every 0.2 s for SECONDS_TO_RUN; prints "peak-VmHWM-kB peak-guest-kB"
# (the guest figure counts resident pages inside the guest range; 0 for a native process).
sample() {
  python3 - "$1" "$SECONDS_TO_RUN" "$2" "$GUEST_BASE" "$GUEST_SIZE" <<'PY'
import sys, time
pid, seconds, guest = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "guest"
base, size = int(sys.argv[4], 16), int(sys.argv[5], 16)
hwm = guest_peak = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        if guest:
            total, inside = 0, False
            with open(f"/proc/{pid}/smaps") as f:
                for line in f:
                    head = line.split()[0]
                    if "-" in head and not head.endswith(":"):
                        start = int(head.split("-")[0], 16)
                        inside = base <= start < base + size
                    elif head == "Rss:" and inside:
                        total += int(line.split()[1])
            guest_peak = max(guest_peak, total)
    except (FileNotFoundError, ProcessLookupError):
        break
    time.sleep(0.2)
print(hwm, guest_peak)
PY
}

# Runs one agent (`$@` is the command) for SECONDS_TO_RUN; prints
# "readings peak-RSS-kB peak-guest-kB".
measure() {
  local name="$1" kind="$2"; shift 2
  local dir="$work/$name"
  mkdir -p "$dir"
  "$host_bin" keygen --out "$dir/meter.key" >/dev/null
  cat >"$dir/meter-agent.toml" <<TOML
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
TOML
  mosquitto_sub -p "$mqtt_port" -t "gridshare/v1/pi/meters/pi-$name/reading" >"$dir/readings" &
  local sub=$!
  "$@" run -c "$dir/meter-agent.toml" 2>"$dir/log" &
  local agent=$!
  local rss guest
  read -r rss guest < <(sample "$agent" "$kind")
  kill -TERM "$agent"; wait "$agent" || true
  kill "$sub" 2>/dev/null || true
  if [ "$(wc -l <"$dir/readings")" -lt 1 ]; then
    echo "the $name agent published no reading; its log:" >&2
    cat "$dir/log" >&2
  fi
  echo "$(wc -l <"$dir/readings") $rss $guest"
}

guest_range=(-B "$GUEST_BASE")
read -r a64_n a64_rss a64_guest < <(measure aarch64 guest \
  qemu-aarch64 "${guest_range[@]}" -L /usr/aarch64-linux-gnu "$aarch64_bin")
read -r a32_n a32_rss a32_guest < <(measure armv7 guest \
  qemu-arm "${guest_range[@]}" -L /usr/arm-linux-gnueabihf "$armv7_bin")
read -r x86_n x86_rss _ < <(measure x86 native "$host_bin")
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
size() { stat -c %s "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }
echo "aarch64 under qemu-user: $a64_n readings delivered in ${SECONDS_TO_RUN} s, peak RSS $(mib "$a64_guest") MiB guest, $(mib "$a64_rss") MiB with qemu (binary $(size "$aarch64_bin"))"
echo "armv7 under qemu-user:   $a32_n readings delivered in ${SECONDS_TO_RUN} s, peak RSS $(mib "$a32_guest") MiB guest, $(mib "$a32_rss") MiB with qemu (binary $(size "$armv7_bin"))"
echo "x86_64 native:           $x86_n readings delivered in ${SECONDS_TO_RUN} s, peak RSS $(mib "$x86_rss") MiB (binary $(size "$host_bin"))"

# The Debian packages of all three.
for pair in "$host_bin amd64" "$aarch64_bin arm64" "$armv7_bin armhf"; do
  set -- $pair
  scripts/build-deb.sh "$1" "$2" "$CARGO_TARGET_DIR/deb"
done

for n in "$a64_n" "$a32_n" "$x86_n"; do
  [ "$n" -ge 1 ] || { echo "an agent published no reading (see above)" >&2; exit 1; }
done
for g in "$a64_guest" "$a32_guest"; do
  [ "$g" -gt 0 ] || { echo "no resident pages found in the guest range: did qemu ignore -B?" >&2; exit 1; }
done
