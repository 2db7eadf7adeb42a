#!/bin/sh
# Install the Debian packages strata builds, tests and benchmarks with.  Quiet no-op when all
# are present; otherwise apt-get (as root, or through sudo).
set -e
PKGS="build-essential pkg-config libfuse3-dev fuse3 liblz4-dev libxxhash-dev libattr1-dev
libacl1-dev libzstd-dev zlib1g-dev liblzma-dev libarchive-dev libjson-c-dev libsqlite3-dev
python3-pytest fuse-overlayfs squashfs-tools squashfs-tools-ng squashfuse containers-storage
umoci runc attr acl util-linux kmod python3-matplotlib busybox-static
clang libclang-rt-14-dev liblzo2-2 python3-pytest-timeout openssh-server sshfs"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "strata: installing missing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
