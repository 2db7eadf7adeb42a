#!/bin/sh
# `make demo`: build the bundled sample stack (tests/sample/make-layers.sh), mount it with
# build/stratafs, show the merged tree, write to it, show what landed in the upper dir,
# unmount.  Needs root (or re-runs itself in `unshare -Urm`).  STRATAFS=... overrides the
# binary (e.g. /usr/bin/fuse-overlayfs, to compare).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin=${STRATAFS:-${STRATA_BUILD:-$repo/build}/stratafs}

if [ "$(id -u)" != 0 ]; then
    exec unshare -Urm sh "$0" "$@"
fi
if [ ! -x "$bin" ]; then
    echo "demo: $bin not found (run make first)" >&2
    exit 1
fi

tmp=$(mktemp -d /tmp/strata-demo.XXXXXX)
mnt=$tmp/stack/mnt
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ -t 1 ]; then b=$(printf '\033[1m'); n=$(printf '\033[0m'); else b=; n=; fi
say() { printf '\n%s== %s%s\n' "$b" "$*" "$n"; }
run() { printf '%s$ %s%s\n' "$b" "$*" "$n"; sh -c "$*" || true; }

sh "$here/sample/make-layers.sh" "$tmp/stack" >/dev/null
cd "$tmp/stack"

say "three lower layers (top first: app, runtime, base), with every whiteout form"
run "find app runtime base -mindepth 1 -printf '%M %p\\n' | sort -k2 | sed 's/^/  /'"

say "mount them with $bin"
run "$bin -o lowerdir=app:runtime:base,upperdir=upper,workdir=work mnt && echo mounted: \$(grep \" \$PWD/mnt \" /proc/self/mountinfo | awk '{print \$9}')"
mountpoint -q mnt || { echo "demo: mount failed" >&2; exit 1; }

say "the merged tree: whiteouts hide README and motd, the opaque var/cache shows only 'new'"
run "ls -lR mnt | sed 's/^/  /'"
run "cat mnt/etc/os-release mnt/srv/app/config"
run "sh mnt/bin/hi; sh mnt/srv/app/run"
run "ls -A mnt/etc mnt/var/cache mnt/usr/share/doc"

say "write: modify a lower file (copy-up), delete one (whiteout), replace a dir, add files"
run "echo 'app config v2' > mnt/srv/app/config"
run "rm mnt/bin/hi mnt/etc/passwd"
run "rm -r mnt/usr/lib/runtime && mkdir mnt/usr/lib/runtime && echo new > mnt/usr/lib/runtime/main.py"
run "mkdir mnt/data && echo 'written through stratafs' > mnt/data/file"
run "cat mnt/srv/app/config mnt/data/file; ls -A mnt/bin mnt/usr/lib/runtime"

say "the upper dir: copied-up files, char 0/0 whiteouts, an opaque directory"
run "find upper -mindepth 1 -printf '%M %3s  %p\\n' | sort -k3 | sed 's/^/  /'"
run "getfattr -R -d -m '^(trusted|user)\\.overlay\\.' upper 2>/dev/null | sed 's/^/  /'"

say "unmount"
run "fusermount3 -u mnt && echo unmounted"
