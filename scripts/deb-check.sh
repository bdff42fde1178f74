#!/usr/bin/env bash
# The meter agent's Debian package installed as a household would, in a clean minimal Debian
# (debootstrap, the release this machine runs, with systemd): the package installs, creates
# its user, key and config with the right owners and modes, leaves the service disabled, and
# `systemd-analyze verify` accepts the unit. Then the config is edited to point at the
# simulated device and a Mosquitto on this machine, the unit's ExecStart runs as its user the
# way systemd starts it (no systemd runs in a chroot), and the script prints the time from
# `dpkg -i` to the agent's "first reading acknowledged by the broker" — the reading is also
# checked against the meter's public key. Reinstalling keeps the key and the edited config;
# purging removes the package and keeps the key.
#
# The debootstrapped system is kept as a tarball in $GRIDSHARE_CHROOT_CACHE (default
# ~/.cache/gridshare-chroot), so only the first run downloads it; each run unpacks a fresh copy.
#
# Needs root (chroot, mount namespaces), debootstrap, mosquitto and mosquitto_sub, python3.
# Usage: scripts/deb-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/agent.sh
[ "$(id -u)" = 0 ] || { echo "scripts/deb-check.sh needs root (chroot)" >&2; exit 1; }

host_bin="$(agent_binary "$HOST_TARGET")"
demo_bin="$(agent_binary "$HOST_TARGET" demo)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Every mount lived in a mount namespace of its own and went with it; never delete through
  # a mount point all the same.
  if [ -d "$work/root/proc" ] && mountpoint -q "$work/root/proc"; then
    echo "$work/root/proc is still mounted; leaving $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
deb="$(scripts/build-deb.sh "$host_bin" amd64 "$work")"

# --- a clean Debian with systemd, from the cache or debootstrap
suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$suite" '$2 == s { print $1; exit }')"
[ -n "$mirror" ] || { echo "no apt source for $suite on this machine to debootstrap from" >&2; exit 1; }
cache="${GRIDSHARE_CHROOT_CACHE:-$HOME/.cache/gridshare-chroot}"
image="$cache/$suite-amd64-minbase-systemd.tar"
if [ ! -f "$image" ]; then
  echo "--- debootstrap $suite (once; kept in $image)"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=systemd "$suite" "$work/bootstrap" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/bootstrap" -cf "$image.part" .
  mv "$image.part" "$image"
  rm -rf "$work/bootstrap"
fi
root="$work/root"
mkdir "$root"
tar -C "$root" -xf "$image"
cp "$deb" "$root/var/tmp/"
pkg="/var/tmp/$(basename "$deb")"

# Runs a command in the chroot (chroot's options first, then --), with /proc mounted in a
# mount namespace of its own, so nothing stays mounted when it ends. The pid stays the one
# of the command (exec all the way down).
root_sh='root=$1; shift; mount -t proc proc "$root/proc" && exec chroot "$@"'
in_root() {
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  unshare --mount --propagation private sh -c "$root_sh" sh "$root" "${opts[@]}" "$root" "$@"
}
fail() { echo "FAIL: $*" >&2; exit 1; }

# --- the peers on this machine: the simulated inverter and a Mosquitto
start_peers "$demo_bin" "$work"

# --- install
echo "--- dpkg -i $(basename "$deb") in a clean $suite"
t0=$(date +%s.%N)
in_root -- dpkg -i "$pkg" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
t_dpkg=$(date +%s.%N)
cat "$work/dpkg.log"
public_key="$(sed -n 's/^public key: *//p' "$work/dpkg.log")"
[ -n "$public_key" ] || fail "dpkg -i printed no public key"

echo "--- what the package left"
in_root -- getent passwd gridshare-meter || fail "no user gridshare-meter"
in_root -- id gridshare-meter | grep -q dialout || fail "gridshare-meter is not in dialout"
expect_stat() { # path "mode owner group"
  local got
  got="$(in_root -- stat -c '%a %U %G' "$1")"
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
  echo "$1: $got"
}
expect_stat /var/lib/gridshare "700 gridshare-meter gridshare-meter"
expect_stat /var/lib/gridshare/meter.key "600 gridshare-meter gridshare-meter"
expect_stat /etc/gridshare/meter-agent.toml "640 root gridshare-meter"
in_root -- /usr/bin/meter-agent config | cmp -s - "$root/etc/gridshare/meter-agent.toml" \
  || fail "/etc/gridshare/meter-agent.toml is not what \`meter-agent config\` prints"
enabled="$(in_root -- systemctl is-enabled meter-agent.service || true)"
[ "$enabled" = disabled ] || fail "meter-agent.service is '$enabled' before it is configured, expected disabled"
echo "meter-agent.service: $enabled (started by the household after editing the config)"

echo "--- systemd-analyze verify"
in_root -- systemd-analyze verify /usr/lib/systemd/system/meter-agent.service >"$work/verify.log" 2>&1 \
  || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
if [ -s "$work/verify.log" ]; then cat "$work/verify.log" >&2; fail "systemd-analyze verify has remarks"; fi
echo "no remarks"
in_root -- systemd-analyze security --offline=yes /usr/lib/systemd/system/meter-agent.service \
  | tail -n 1

# --- the household's edit: meter id, community, device address, broker
conf="$root/etc/gridshare/meter-agent.toml"
sed -i \
  -e 's/^meter_id = .*/meter_id = "deb-check"/' \
  -e 's/^community = .*/community = "deb"/' \
  -e "s/^address = .*/address = \"127.0.0.1:$device_port\"/" \
  -e "s|^url = \"mqtt://127.0.0.1:1883\"|url = \"mqtt://127.0.0.1:$mqtt_port\"|" \
  "$conf"
for want in 'meter_id = "deb-check"' "address = \"127.0.0.1:$device_port\"" "url = \"mqtt://127.0.0.1:$mqtt_port\""; do
  grep -qF "$want" "$conf" || fail "the config edit did not take: $want"
done

# --- start the unit's ExecStart the way systemd would: its user, groups, environment, umask
unit="$root/usr/lib/systemd/system/meter-agent.service"
setting() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
exec_start="$(setting ExecStart)"
user="$(setting User)"
group="$(setting Group)"
groups="$(setting SupplementaryGroups)"
env_line="$(setting Environment)"
umask_value="$(setting UMask)"
mosquitto_sub -p "$mqtt_port" -t 'gridshare/v1/deb/meters/deb-check/reading' -C 1 >"$work/reading.json" &
sub=$!
pids+=("$sub")
echo "--- start: $exec_start (as $user:$group +$groups, $env_line, umask $umask_value)"
# Not through in_root: a function sent to the background runs in a subshell, and the pid to
# signal must be the agent's.
unshare --mount --propagation private sh -c "$root_sh" sh "$root" \
  --userspec="$user:$group" --groups="$groups" "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$env_line" \
  sh -c 'umask "$1"; shift; exec "$@"' sh "$umask_value" $exec_start \
  2>"$work/agent.log" &
agent=$!
pids+=("$agent")
t_ack=""
for _ in $(seq 300); do
  if grep -q "first reading acknowledged by the broker" "$work/agent.log"; then
    t_ack=$(date +%s.%N)
    break
  fi
  kill -0 "$agent" 2>/dev/null || break
  sleep 0.05
done
[ -n "$t_ack" ] || { cat "$work/agent.log" >&2; fail "no reading acknowledged within 15 s"; }
cat "$work/agent.log"
wait "$sub" || true
"$host_bin" verify --public-key "$public_key" "$work/reading.json" \
  || fail "the published reading does not verify against the key dpkg -i made"
kill -TERM "$agent"
status=0
wait "$agent" || status=$?
[ "$status" = 0 ] || fail "the agent exited $status on SIGTERM"
grep -q "meter agent stopped" "$work/agent.log" || fail "no clean stop in the log"

# An unusable configuration: exit 78, which the unit does not restart on.
status=0
in_root --userspec="$user:$group" -- /usr/bin/meter-agent run --config /etc/gridshare/absent.toml \
  2>"$work/absent.log" || status=$?
[ "$status" = 78 ] || fail "run with a missing config exited $status, expected 78"
grep -q "RestartPreventExitStatus=78" "$unit" || fail "the unit restarts on 78"

# --- reinstall keeps the key and the household's config; purge keeps the key
key_before="$(sha256sum "$root/var/lib/gridshare/meter.key")"
in_root -- dpkg -i "$pkg" >"$work/dpkg2.log" 2>&1 || { cat "$work/dpkg2.log" >&2; fail "dpkg -i again"; }
[ "$(sha256sum "$root/var/lib/gridshare/meter.key")" = "$key_before" ] || fail "reinstalling replaced the key"
grep -qF 'meter_id = "deb-check"' "$conf" || fail "reinstalling replaced the edited config"
in_root -- dpkg --purge gridshare-meter-agent >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg --purge"; }
[ ! -e "$root/usr/bin/meter-agent" ] && [ ! -e "$conf" ] || fail "purge left the binary or the config"
[ "$(sha256sum "$root/var/lib/gridshare/meter.key")" = "$key_before" ] || fail "purge removed the key"
echo "reinstall kept the key and the edited config; purge removed the package and kept the key"

chroot_figure="$(awk -v a="$t0" -v b="$t_dpkg" -v c="$t_ack" 'BEGIN {
  printf "%.1f s (dpkg -i %.1f s, then ExecStart as gridshare-meter to the acknowledgement %.1f s)", c - a, b - a, c - b }')"

# --- the same under a real systemd: PID 1 of a pid namespace, in the chroot's fresh copy, with
# cgroups of its own; the household's commands verbatim, the unit's sandbox applied.
boot="$work/boot"
mkdir "$boot"
tar -C "$boot" -xf "$image"
cp "$deb" "$boot/var/tmp/"   # /tmp is a tmpfs under systemd
cg="$work/cgroup"
tag="gridshare-deb-check-$$"
mkdir -p "$cg"
# In its own pid, mount, UTS and IPC namespaces: move into a cgroup v2 group of its own, enter
# a cgroup namespace rooted there (systemd then sees only cgroup v2 and leaves every other
# hierarchy of this machine alone), mount what systemd needs, pivot into the copy (systemd's
# sandboxing needs a real root mount) and become systemd.
unshare --pid --fork --kill-child --mount --uts --ipc --propagation private sh -c '
  set -e
  boot=$1 cg=$2 tag=$3
  mount -t cgroup2 none "$cg"
  mkdir "$cg/$tag"
  echo $$ >"$cg/$tag/cgroup.procs"
  umount "$cg"
  exec unshare --cgroup sh -c "
    set -e
    mount --bind $boot $boot
    mount -t proc proc $boot/proc
    mount -t sysfs sysfs $boot/sys
    mount -t tmpfs tmpfs $boot/run
    mount -t cgroup2 none $boot/sys/fs/cgroup
    cd $boot
    mkdir -p .oldroot
    pivot_root . .oldroot
    exec /bin/sh -c \"umount -l /.oldroot && rmdir /.oldroot && exec /usr/bin/env -i container=gridshare-deb-check /lib/systemd/systemd --system\"
  "' sh "$boot" "$cg" "$tag" >"$work/boot.log" 2>&1 &
booter=$!
stop_systemd() {
  local init
  init="$(pgrep -P "$booter" || true)"
  [ -n "$init" ] && kill -s SIGRTMIN+3 "$init" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$booter" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$booter" 2>/dev/null || true
  # The cgroups systemd made under ours, deepest first, then ours.
  unshare --mount --propagation private sh -c \
    'mount -t cgroup2 none "$1" && { [ ! -d "$1/$2" ] || find "$1/$2" -depth -type d -exec rmdir {} \; ; }' \
    sh "$cg" "$tag" 2>/dev/null || true
}
cleanup_boot() { stop_systemd; cleanup; }
trap cleanup_boot EXIT
init=""
for _ in $(seq 50); do init="$(pgrep -P "$booter" || true)"; [ -n "$init" ] && break; sleep 0.1; done
[ -n "$init" ] || { cat "$work/boot.log" >&2; fail "systemd did not start in the chroot"; }
in_boot() { nsenter -t "$init" -m -p -u -i -r -w "$@"; }
state=""
for _ in $(seq 150); do
  state="$(in_boot systemctl is-system-running 2>/dev/null || true)"
  case "$state" in running | degraded) break ;; esac
  sleep 0.2
done
case "$state" in running | degraded) ;; *) cat "$work/boot.log" >&2; fail "systemd in the chroot is '$state'" ;; esac
echo "--- systemd $(in_boot systemctl --version | head -n 1 | cut -d' ' -f2) booted in a fresh copy ($state)"

t0=$(date +%s.%N)
in_boot dpkg -i "$pkg" >"$work/boot-dpkg.log" 2>&1 || { cat "$work/boot-dpkg.log" >&2; fail "dpkg -i under systemd"; }
t_dpkg=$(date +%s.%N)
[ "$(in_boot systemctl is-active meter-agent.service || true)" = inactive ] \
  || fail "dpkg -i started the agent before it was configured"
sed -i \
  -e 's/^meter_id = .*/meter_id = "deb-boot"/' \
  -e 's/^community = .*/community = "deb"/' \
  -e "s/^address = .*/address = \"127.0.0.1:$device_port\"/" \
  -e "s|^url = \"mqtt://127.0.0.1:1883\"|url = \"mqtt://127.0.0.1:$mqtt_port\"|" \
  "$boot/etc/gridshare/meter-agent.toml"
in_boot systemctl enable --now meter-agent.service 2>&1
t_ack=""
for _ in $(seq 300); do
  if in_boot journalctl -u meter-agent.service -o cat --no-pager 2>/dev/null \
    | grep -q "first reading acknowledged by the broker"; then
    t_ack=$(date +%s.%N)
    break
  fi
  sleep 0.05
done
in_boot journalctl -u meter-agent.service -o short-monotonic --no-pager | tail -n 8
[ -n "$t_ack" ] || fail "no reading acknowledged within 15 s of systemctl enable --now"
main_pid="$(in_boot systemctl show -p MainPID --value meter-agent.service)"
runs_as="$(in_boot stat -c %U "/proc/$main_pid")"
[ "$runs_as" = gridshare-meter ] || fail "the agent runs as '$runs_as'"
boot_figure="$(awk -v a="$t0" -v b="$t_dpkg" -v c="$t_ack" 'BEGIN {
  printf "%.1f s (dpkg -i %.1f s, then systemctl enable --now to the acknowledgement %.1f s)", c - a, b - a, c - b }')"

# A configuration the agent cannot use: the unit fails once with 78 and is not restarted.
printf 'meter_idd = "typo"\n' >>"$boot/etc/gridshare/meter-agent.toml"
in_boot systemctl restart meter-agent.service || true
sleep 7
status="$(in_boot systemctl show -p ExecMainStatus --value meter-agent.service)"
restarts="$(in_boot systemctl show -p NRestarts --value meter-agent.service)"
active="$(in_boot systemctl is-active meter-agent.service || true)"
[ "$status" = 78 ] && [ "$restarts" = 0 ] && [ "$active" = failed ] \
  || fail "with an unknown config key the unit is '$active' (status $status, $restarts restarts), expected failed with 78 and no restart"
in_boot journalctl -u meter-agent.service -o cat --no-pager | grep -m 1 meter_idd
echo "an unusable config: the unit failed with status 78 and was not restarted"
stop_systemd

echo "dpkg -i to the first acknowledged reading, chroot: $chroot_figure"
echo "dpkg -i to the first acknowledged reading, systemd: $boot_figure"
