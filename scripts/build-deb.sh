#!/usr/bin/env bash
# The meter agent as a Debian package, from an already built release binary:
#   /usr/bin/meter-agent                           the binary (stripped)
#   /usr/lib/systemd/system/meter-agent.service    the hardened unit (meter-agent/dist/)
#   /usr/lib/sysusers.d/gridshare-meter.conf       the system user gridshare-meter
#   /etc/gridshare/meter-agent.toml                the commented example config (a conffile:
#                                                  `meter-agent config` prints the same)
# and the maintainer scripts in meter-agent/dist/debian/ (user, /var/lib/gridshare, the
# meter's key, the config readable by the agent only; the service is not started).
#
# Usage: scripts/build-deb.sh BINARY DEB-ARCH OUT-DIR   (DEB-ARCH: amd64, arm64 or armhf)
# Prints the path of the .deb. Needs dpkg-deb, readelf and the strip of the binary's
# architecture (binutils, or binutils-aarch64-linux-gnu / -arm-linux-gnueabihf beside the
# cross gcc). E.g., after `cargo build --release -p meter-agent`:
#   scripts/build-deb.sh "$CARGO_TARGET_DIR/release/meter-agent" amd64 dist/
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 3 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
binary="$1"
arch="$2"
out="$3"

case "$arch" in
  amd64) machine='X86-64' strip=strip ;;
  arm64) machine='AArch64' strip=aarch64-linux-gnu-strip ;;
  armhf) machine='ARM' strip=arm-linux-gnueabihf-strip ;;
  *) echo "unknown Debian architecture $arch (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
[ -x "$binary" ] || { echo "no executable at $binary: build it first" >&2; exit 1; }
readelf -h "$binary" | grep -q "Machine:.*$machine" \
  || { echo "$binary is not a $arch binary: $(readelf -h "$binary" | grep Machine:)" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ -n "$version" ] || { echo "no workspace version in Cargo.toml" >&2; exit 1; }
package=gridshare-meter-agent
debversion="$version-1"

# Depends from what the binary links: glibc (at least the newest symbol version it uses) and
# libgcc_s for unwinding; anything else would be a new dependency to declare here.
glibc="$(readelf -V "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
depends="libc6 (>= $glibc)"
for lib in $(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
  case "$lib" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*) ;;
    libgcc_s.so.1) depends="$depends, libgcc-s1" ;;
    *) echo "$binary links $lib: declare its package in scripts/build-deb.sh" >&2; exit 1 ;;
  esac
done

root="$(mktemp -d)"
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
  "$root/usr/lib/sysusers.d" "$root/etc/gridshare" "$root/usr/share/doc/$package"
install -m 0755 "$binary" "$root/usr/bin/meter-agent"
"$strip" --strip-unneeded "$root/usr/bin/meter-agent"
install -m 0644 meter-agent/dist/meter-agent.service "$root/usr/lib/systemd/system/"
install -m 0644 meter-agent/dist/gridshare-meter.sysusers "$root/usr/lib/sysusers.d/gridshare-meter.conf"
# The binary embeds this same file (DEFAULT_CONFIG): the conffile is `meter-agent config`.
install -m 0640 meter-agent/meter-agent.toml "$root/etc/gridshare/meter-agent.toml"
for script in postinst prerm postrm; do
  install -m 0755 "meter-agent/dist/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/gridshare/meter-agent.toml >"$root/DEBIAN/conffiles"
cat >"$root/usr/share/doc/$package/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gridshare
Source: $(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)

Files: *
Copyright: the Gridshare contributors
License: MIT or Apache-2.0
 The licence the workspace's Cargo.toml declares, at the upstream source above.
EOF
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $debversion
Architecture: $arch
Maintainer: Gridshare developers <gridshare@users.noreply.github.com>
Installed-Size: $installed_kb
Depends: $depends
Recommends: systemd
Suggests: mosquitto-clients
Section: net
Priority: optional
Homepage: $(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
Description: Gridshare meter agent: inverter and meter readings, signed, over MQTT
 Reads a solar/battery inverter or a grid meter over Modbus (TCP, RTU, RTU over
 TCP; SunSpec or a vendor register profile), signs every reading with the
 meter's own key and publishes it to the community's MQTT broker through an
 on-disk outbox, so outages delay readings but lose none. Optionally copies
 each reading to Home Assistant with MQTT discovery.
 .
 The package creates the system user gridshare-meter and the meter's key in
 /var/lib/gridshare; edit /etc/gridshare/meter-agent.toml, then
 systemctl enable --now meter-agent.
EOF

mkdir -p "$out"
deb="$out/${package}_${debversion}_${arch}.deb"
# Owned by root whoever builds it; xz like Debian's own packages.
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
