#!/bin/sh
# Build the bundled sample stack under $1 (default ./sample-stack): three lower layers
# (top first: app, runtime, base) with every whiteout form, plus empty upper/work dirs.
# Generated, not committed: whiteout char devices cannot live in git.
set -eu
out=${1:-./sample-stack}
if [ -e "$out" ]; then
    echo "make-layers.sh: $out already exists; remove it first" >&2
    exit 1
fi
mkdir -p "$out"
cd "$out"
mkdir -p base runtime app upper work mnt

# base: a tiny distro
mkdir -p base/etc base/bin base/usr/share/doc base/var/cache base/tmp
printf 'NAME="Sample Linux"\nVERSION_ID=1\n' > base/etc/os-release
printf 'root:x:0:0:root:/root:/bin/sh\n' > base/etc/passwd
printf 'motd from base\n' > base/etc/motd
printf '#!/bin/sh\necho hello from the sample stack\n' > base/bin/hello
chmod 755 base/bin/hello
printf 'base docs\n' > base/usr/share/doc/README
printf 'stale\n' > base/var/cache/old-1
printf 'stale\n' > base/var/cache/old-2
ln -s hello base/bin/hi
chmod 1777 base/tmp

# runtime: adds a language runtime, deletes a base file (char 0/0 whiteout)
mkdir -p runtime/usr/lib/runtime runtime/etc
printf 'print("runtime 2.0")\n' > runtime/usr/lib/runtime/main.py
printf 'motd from runtime\n' > runtime/etc/motd
mkdir -p runtime/usr/share/doc
mknod runtime/usr/share/doc/README c 0 0          # whiteout: the base README is gone
ln runtime/usr/lib/runtime/main.py runtime/usr/lib/runtime/main-link.py

# app: OCI-style whiteouts (.wh.NAME) and an opaque dir (.wh..wh..opq)
mkdir -p app/srv/app app/var/cache
printf 'app config v1\n' > app/srv/app/config
printf '#!/bin/sh\necho app running\n' > app/srv/app/run
chmod 755 app/srv/app/run
mkdir -p app/etc
: > app/etc/.wh.motd                               # whiteout: no /etc/motd at all
: > app/var/cache/.wh..wh..opq                    # opaque: old-1/old-2 hidden
printf 'fresh\n' > app/var/cache/new
setfattr -n user.app.version -v 1 app/srv/app/config 2>/dev/null || true

echo "$PWD"
