# Sourced by scripts/pi-check.sh and scripts/deb-check.sh: release builds of the meter agent
# for a named target, and the helpers both scripts run it with.
#
#   source "$(dirname "$0")/lib/agent.sh"
#   bin=$(agent_binary TARGET [demo])    # a copy of the binary, kept in the build cache
#
# Every build names its --target, so each lives in a subtree of its own in the shared build
# cache and never disturbs the workspace's debug builds. The agent a home installs is built
# without the `demo` feature; the simulated device needs it. The binary is copied out because
# the demo and the plain build of one target leave their binary at the same path.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gridshare-target}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
HOST_TARGET=x86_64-unknown-linux-gnu

agent_binary() {
  local target=$1 demo=${2:-}
  local out="$CARGO_TARGET_DIR/agent-bin/$target${demo:+-demo}"
  cargo build --release --quiet -p meter-agent --target "$target" ${demo:+--features demo} >&2
  mkdir -p "$out"
  cp "$CARGO_TARGET_DIR/$target/release/meter-agent" "$out/meter-agent"
  echo "$out/meter-agent"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts the simulated SunSpec device and a Mosquitto on free loopback ports; sets
# $device_port, $mqtt_port and appends their pids to the array `pids` (the caller kills them).
start_peers() {
  local demo_bin=$1 workdir=$2
  device_port="$(free_port)"
  mqtt_port="$(free_port)"
  "$demo_bin" simulate-device --listen "127.0.0.1:$device_port" --speed 60 >/dev/null 2>&1 &
  pids+=($!)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mqtt_port" >"$workdir/mosquitto.conf"
  "${MOSQUITTO_BIN:-mosquitto}" -c "$workdir/mosquitto.conf" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$device_port") 2>/dev/null \
      && (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the simulated device or Mosquitto did not start" >&2
  return 1
}
