"""Helpers for the union-filesystem tests.

Mounting (stratafs, the kernel's overlayfs, fuse-overlayfs) with cleanup that always runs,
declarative layer trees (built in "kernel form" for the kernel oracle or with any whiteout
form for stratafs), and tree snapshots that can be compared across implementations.

The implementation under test is $STRATAFS if set (e.g. /usr/bin/fuse-overlayfs, to check
the harness itself), else $STRATA_BUILD/stratafs (STRATA_BUILD defaults to <repo>/build).
"""

import contextlib
import errno
import hashlib
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"

# Every timestamp the layer builder writes is older than this; anything at or after it was
# set by the filesystem during a test, and snapshots show it as "NEW".
OLD_TIME_NS = 1_100_000_000 * 10**9
BASE_TIME_NS = 1_000_000_000 * 10**9


def build_dir():
    return Path(os.environ.get("STRATA_BUILD", REPO / "build"))


def impl_bin():
    return os.environ.get("STRATAFS") or str(build_dir() / "stratafs")


def impl_is_fuse_overlayfs():
    return os.path.basename(impl_bin()) == "fuse-overlayfs"


def require_impl():
    b = impl_bin()
    if not os.access(b, os.X_OK):
        pytest.fail(f"implementation under test not found: {b} "
                    "(run `make`, or set STRATAFS=/usr/bin/fuse-overlayfs)")
    return b


def fo_differs(reason):
    """Mark a case where fuse-overlayfs is known to differ from the kernel: expected to fail
    when the suite runs against fuse-overlayfs, expected to pass on stratafs."""
    return pytest.mark.xfail(impl_is_fuse_overlayfs(), reason="fuse-overlayfs: " + reason,
                             strict=False)


# ---------------------------------------------------------------------------------------
# processes and mounts

def run(cmd, check=True, timeout=120, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    p = subprocess.run(cmd, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, cmd))} -> {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def mountpoints():
    """Mount points (as paths) from /proc/self/mountinfo, octal escapes decoded."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.append(mp.encode().decode("unicode_escape").encode("latin-1").decode())
    return out


def is_mounted(path):
    path = os.path.realpath(path)
    return path in mountpoints()


def mount_fstype(path):
    path = os.path.realpath(path)
    typ = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                typ = fields[fields.index("-") + 1]
    return typ


def pids_with_arg(arg):
    """Pids of our processes whose argv contains `arg` (a unique temp path)."""
    arg = str(arg)
    pids = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace") == arg for a in argv):
            pids.append(int(d))
    return pids


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def force_unmount(path, pids=()):
    """Unmount whatever is at `path`: fusermount3 -u, then umount, then umount -l; then end
    the daemons (by pid) if they did not exit by themselves.  Returns (how, exited): the
    command that unmounted it and whether the daemons exited without being signalled."""
    path = str(path)
    how = None
    for cmd in (["fusermount3", "-u", path], ["umount", path], ["umount", "-l", path]):
        if not is_mounted(path):
            break
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        how = cmd
    exited = True
    if pids and not wait_gone(pids, 5):
        exited = False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, sig)
            if wait_gone(pids, 3):
                break
    return how, exited


def cleanup_tree(base):
    """Unmount everything at or below `base` (deepest first)."""
    base = os.path.realpath(base)
    for _ in range(3):
        mps = [m for m in mountpoints() if m == base or m.startswith(base + "/")]
        if not mps:
            return
        for m in sorted(set(mps), key=len, reverse=True):
            force_unmount(m, pids_with_arg(m))


def esc_layer(p):
    return str(p).replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def overlay_opts(lowers, upper=None, work=None, extra=()):
    o = ["lowerdir=" + ":".join(esc_layer(p) for p in lowers)]
    if upper is not None:
        o.append(f"upperdir={upper}")
    if work is not None:
        o.append(f"workdir={work}")
    o.extend(extra)
    return ",".join(o)


class MountError(Exception):
    pass


class Mount:
    """One union mount; use as a context manager (or call stop()) so it always goes away."""

    kind = None

    def __init__(self, mnt, lowers, upper=None, work=None, opts=()):
        self.mnt = Path(mnt)
        self.lowers = [Path(x) for x in lowers]
        self.upper = Path(upper) if upper else None
        self.work = Path(work) if work else None
        self.opts = list(opts)
        self.pids = []
        self.stderr = ""
        self.unmounted_by = None
        self.daemon_exited = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        how, exited = force_unmount(self.mnt, self.pids)
        if self.unmounted_by is None:
            self.unmounted_by, self.daemon_exited = how, exited

    def path(self, rel=""):
        return os.path.join(self.mnt, rel) if rel else str(self.mnt)


class KernelMount(Mount):
    kind = "kernel"

    def start(self):
        o = overlay_opts(self.lowers, self.upper, self.work, self.opts)
        p = run(["mount", "-t", "overlay", "overlay", "-o", o, str(self.mnt)], check=False)
        if p.returncode != 0:
            raise MountError(f"kernel overlay mount failed: {p.stderr.strip()} (-o {o})")


class FuseMount(Mount):
    """stratafs or fuse-overlayfs, daemonized the way runtimes start it."""

    def __init__(self, mnt, lowers, upper=None, work=None, opts=(), binary=None, env=None,
                 cwd=None, argv_prefix=()):
        super().__init__(mnt, lowers, upper, work, opts)
        self.binary = binary or require_impl()
        self.kind = "fuse-overlayfs" if os.path.basename(self.binary) == "fuse-overlayfs" \
            else "stratafs"
        self.env = env
        self.cwd = cwd
        self.argv_prefix = list(argv_prefix)

    def argv(self):
        return self.argv_prefix + [self.binary, "-o",
                                   overlay_opts(self.lowers, self.upper, self.work, self.opts),
                                   str(self.mnt)]

    def start(self):
        env = dict(os.environ, **(self.env or {}))
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
        try:
            p = run(self.argv(), check=False, env=env, cwd=self.cwd, timeout=60)
        except subprocess.TimeoutExpired:
            self.pids = pids_with_arg(self.mnt)
            self.stop()
            raise MountError(f"{self.kind} did not return within 60 s: {self.argv()}")
        self.stderr = p.stderr
        self.pids = pids_with_arg(self.mnt)
        if p.returncode != 0 or not is_mounted(self.mnt):
            self.stop()
            raise MountError(f"{self.kind} failed (exit {p.returncode}, mounted="
                             f"{is_mounted(self.mnt)}): {shlex.join(self.argv())}\n{p.stderr}")


def make_mount(kind, *a, **kw):
    if kind == "kernel":
        return KernelMount(*a, **kw)
    if kind == "fuse-overlayfs":
        return FuseMount(*a, binary="/usr/bin/fuse-overlayfs", **kw)
    return FuseMount(*a, **kw)


# ---------------------------------------------------------------------------------------
# layer trees
#
# A layer is a list of entries (path, kind, attrs).  Kinds:
#   'f' file: data=b"", mode, uid, gid, xattrs={}, sparse=[(offset, bytes), ...], size
#   'd' dir: mode, uid, gid, xattrs, opaque=False|True  ('xattr' | 'user' | 'wh' picks form)
#   'l' symlink: target           'h' hard link: target (a path in the same layer)
#   'p' fifo   'c'/'b' device: rdev=(major, minor)   's' unix socket
#   'w' whiteout: form='char' | 'wh'
# Layers are listed top first, like lowerdir=.  Parent dirs are created as needed (0755).

def daemon_stats(mnt):
    """stratafs's counters: the root's (never listed) xattr user.stratafs.stats, one
    key=value per line; numbers as ints."""
    raw = os.getxattr(str(mnt), "user.stratafs.stats").decode()
    out = {}
    for line in raw.splitlines():
        k, v = line.split("=", 1)
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def E(path, kind="f", **attrs):
    return (path, kind, attrs)


def _stable_time(path, layer_index):
    h = int(hashlib.sha1(f"{layer_index}:{path}".encode()).hexdigest()[:12], 16)
    return BASE_TIME_NS + (h % 10**8) * 10**9 + (h % 999_999_937)


def build_layer(root, entries, kernel_form=False, layer_index=0, xattr_ns="trusted"):
    """Create one layer at `root`.  kernel_form: write every whiteout as char 0/0 and every
    opaque marker as <xattr_ns>.overlay.opaque (what the kernel oracle can read; "user"
    for a kernel mounted with userxattr)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    made = [root]
    for path, kind, a in entries:
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "f":
            with open(p, "wb") as f:
                f.write(a.get("data", b""))
                for off, data in a.get("sparse", ()):
                    f.seek(off)
                    f.write(data)
                if "size" in a:
                    f.truncate(a["size"])
        elif kind == "d":
            p.mkdir(exist_ok=True)
            form = a.get("opaque")
            if form:
                if form is True or kernel_form:
                    form = "xattr" if xattr_ns == "trusted" else "user"
                if form == "xattr":
                    os.setxattr(p, "trusted.overlay.opaque", b"y")
                elif form == "user":
                    os.setxattr(p, "user.overlay.opaque", b"y")
                elif form == "wh":
                    (p / ".wh..wh..opq").write_bytes(b"")
                    os.utime(p / ".wh..wh..opq", ns=(BASE_TIME_NS, BASE_TIME_NS))
        elif kind == "l":
            os.symlink(a["target"], p)
        elif kind == "h":
            os.link(root / a["target"], p)
        elif kind == "p":
            os.mkfifo(p)
        elif kind in "cb":
            t = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
            os.mknod(p, t | 0o600, os.makedev(*a.get("rdev", (1, 3))))
        elif kind == "s":
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(p))
            s.close()
        elif kind == "w":
            form = "char" if kernel_form else a.get("form", "char")
            if form == "char":
                os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            else:
                p = p.parent / (".wh." + p.name)
                p.write_bytes(b"")
        else:
            raise ValueError(kind)
        if kind not in "hw":
            if "uid" in a or "gid" in a:
                os.chown(p, a.get("uid", 0), a.get("gid", 0), follow_symlinks=False)
            if "mode" in a and kind != "l":
                os.chmod(p, a["mode"])  # after chown, which clears setuid/setgid
            for k, v in a.get("xattrs", {}).items():
                os.setxattr(p, k, v, follow_symlinks=False)
            if "acl" in a:
                run(["setfacl", "-m", a["acl"], str(p)])
            if "default_acl" in a:
                run(["setfacl", "-d", "-m", a["default_acl"], str(p)])
        made.append(p)
    # fixed old times for everything, children before parents (a child's utime does not
    # touch the parent, but creating the child did)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            q = os.path.join(dirpath, n)
            t = _stable_time(os.path.relpath(q, root), layer_index)
            os.utime(q, ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(BASE_TIME_NS, BASE_TIME_NS))


def build_stack(base, layers, kernel_form=False, upper_entries=None, xattr_ns="trusted"):
    """Create base/lower0..N-1 (lower0 is the top), base/upper, base/work, base/mnt.
    Returns (lowers, upper, work, mnt)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    lowers = []
    for i, entries in enumerate(layers):
        d = base / f"lower{i}"
        build_layer(d, entries, kernel_form, i, xattr_ns)
        lowers.append(d)
    upper = base / "upper"
    build_layer(upper, upper_entries or [], kernel_form, 99, xattr_ns)
    work = base / "work"
    work.mkdir()
    mnt = base / "mnt"
    mnt.mkdir()
    return lowers, upper, work, mnt


# ---------------------------------------------------------------------------------------
# snapshots

OVL_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def _type(mode):
    for test, ch in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"),
                     (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"),
                     (stat.S_ISSOCK, "s")):
        if test(mode):
            return ch
    return "?"


def norm_time(ns):
    return "NEW" if ns >= OLD_TIME_NS else ns


def read_xattrs(path):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"<listxattr>": ename(e.errno)}
    for n in sorted(names):
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            out[n] = ename(e.errno)
    return out


def file_hash(path):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
    finally:
        os.close(fd)
    return h.hexdigest()[:16]


def _entry(path, st, content=True, times=True):
    t = _type(st.st_mode)
    e = {"type": t, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
    if t == "f":
        e["size"] = st.st_size
        if content:
            try:
                e["sha"] = file_hash(path)
            except OSError as ex:
                e["sha"] = ename(ex.errno)
    elif t == "l":
        e["target"] = os.readlink(path)
    elif t in "cb":
        e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if t != "d":
        e["nlink"] = st.st_nlink
    if times and t != "l":
        e["mtime"] = norm_time(st.st_mtime_ns)
    return e


def _walk(root):
    """Yield (relpath, abspath, lstat) for root and everything below, sorted."""
    root = str(root)
    st = os.lstat(root)
    yield ".", root, st
    stack = [""]
    while stack:
        rel = stack.pop()
        d = os.path.join(root, rel) if rel else root
        names = sorted(os.listdir(d))
        subdirs = []
        for n in names:
            r = os.path.join(rel, n) if rel else n
            a = os.path.join(root, r)
            try:
                s = os.lstat(a)
            except OSError as e:
                yield r, a, e       # listed but not found: a finding in itself
                continue
            yield r, a, s
            if stat.S_ISDIR(s.st_mode):
                subdirs.append(r)
        stack.extend(reversed(subdirs))


def snapshot(root, content=True, times=True, xattrs=True, links=True):
    """The merged view as {relpath: {attr: value}}: type, mode, uid/gid, size, content hash,
    symlink target, rdev, nlink (non-dirs), mtime ("NEW" if set during the test), all xattrs
    (unfiltered: overlay-private ones must never show through a mount) and, for hard links,
    the other names of the same inode."""
    snap = {}
    by_ino = {}
    for rel, a, st in _walk(root):
        if isinstance(st, OSError):
            snap[rel] = {"type": "listed, but lstat: " + ename(st.errno)}
            continue
        e = _entry(a, st, content, times)
        if xattrs:
            x = read_xattrs(a)
            if x:
                e["xattrs"] = x
        snap[rel] = e
        if e["type"] != "d":
            by_ino.setdefault(st.st_ino, []).append(rel)
    if links:
        for group in by_ino.values():
            if len(group) > 1:
                for r in group:
                    snap[r]["links"] = sorted(set(group) - {r})
    return snap


def upper_snapshot(root, content=True, times=True):
    """The upper dir as overlay facts, whatever their on-disk form: a whiteout (char 0/0 or
    .wh.NAME) is {'type': 'whiteout'}; an opaque dir (trusted./user.overlay.opaque=y or a
    .wh..wh..opq file) has 'opaque': True; a redirect is 'redirect'.  Other overlay-private
    xattrs (origin, impure, uuid, nlink...) and link counts of whiteouts are dropped."""
    snap = {}
    by_ino = {}
    wh = []
    for rel, a, st in _walk(root):
        if isinstance(st, OSError):
            continue
        name = os.path.basename(rel)
        parent = os.path.dirname(rel) or "."
        if stat.S_ISREG(st.st_mode) and name == ".wh..wh..opq":
            wh.append((parent, "opaque"))
            continue
        if stat.S_ISREG(st.st_mode) and name.startswith(".wh."):
            wh.append((os.path.join(os.path.dirname(rel), name[4:]), "whiteout"))
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            snap[rel] = {"type": "whiteout"}
            continue
        e = _entry(a, st, content, times)
        x = read_xattrs(a)
        for prefix in OVL_XATTR_PREFIXES:
            if x.get(prefix + "opaque") == b"y":
                e["opaque"] = True
            if prefix + "redirect" in x:
                e["redirect"] = x[prefix + "redirect"].decode(errors="replace")
        x = {k: v for k, v in x.items() if not k.startswith(OVL_XATTR_PREFIXES)}
        if x:
            e["xattrs"] = x
        snap[rel] = e
        if e["type"] != "d":
            by_ino.setdefault(st.st_ino, []).append(rel)
    for group in by_ino.values():
        if len(group) > 1:
            for r in group:
                snap[r]["links"] = sorted(set(group) - {r})
    for rel, what in wh:
        if what == "opaque":
            snap.setdefault(rel, {})["opaque"] = True
        else:
            snap[rel] = {"type": "whiteout"}
    if "." in snap:
        snap["."].pop("mtime", None)   # the kernel may touch the upper root on mount
    return snap


def drop_moot_opaque(snap, lowers):
    """The kernel marks new directories in merged parents opaque as an optimisation; an
    opaque marker on a path that no lower layer has changes nothing, so it is not compared."""
    out = {}
    for k, v in snap.items():
        if v.get("opaque") and k != "." and not any(os.path.lexists(os.path.join(l, k))
                                                    for l in lowers):
            v = {f: x for f, x in v.items() if f != "opaque"}
        out[k] = v
    return out


def diff_snapshots(a, b, names=("kernel", "impl")):
    """Human-readable differences between two snapshots ('' when equal)."""
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            lines.append(f"  {k}: only in {names[0]}: {a[k]}")
        elif k not in a:
            lines.append(f"  {k}: only in {names[1]}: {b[k]}")
        elif a[k] != b[k]:
            ea, eb = a[k], b[k]
            for f in sorted(set(ea) | set(eb)):
                if ea.get(f, "<none>") != eb.get(f, "<none>"):
                    lines.append(f"  {k}: {f}: {names[0]}={ea.get(f, '<none>')!r} "
                                 f"{names[1]}={eb.get(f, '<none>')!r}")
    return "\n".join(lines)


def strip(snap, *fields, paths=None):
    """Copy of a snapshot without some fields (for all entries, or only `paths`)."""
    out = {}
    for k, v in snap.items():
        if paths is None or k in paths:
            v = {f: x for f, x in v.items() if f not in fields}
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------
# recording operations

def ename(e):
    return errno.errorcode.get(e, "E" + str(e))


class Log:
    """Outcome log of an operation sequence: each step is (label, value or 'E<errno>')."""

    def __init__(self, root):
        self.root = str(root)
        self.items = []

    def p(self, rel):
        return os.path.join(self.root, rel)

    def do(self, label, fn, *args, **kw):
        try:
            v = fn(*args, **kw)
        except OSError as e:
            v = ename(e.errno)
        self.items.append((label, v))
        return v

    def note(self, label, value):
        self.items.append((label, value))
        return value


def as_user(uid, gid, body, root, groups=(), timeout=60):
    """Run Python `body` as uid/gid in a child; body calls R(label, fn, *args) to record
    outcomes and sees `root`.  Returns the list of (label, outcome)."""
    prog = (
        "import os, sys, json, errno, stat, fcntl\n"
        "root = sys.argv[1]\n"
        "P = lambda r: os.path.join(root, r)\n"
        "out = []\n"
        "def R(label, fn, *a, **kw):\n"
        "    try:\n"
        "        v = fn(*a, **kw)\n"
        "        v = v if isinstance(v, (int, str, bool, type(None), list)) else repr(v)\n"
        "    except OSError as e:\n"
        "        v = errno.errorcode.get(e.errno, 'E' + str(e.errno))\n"
        "    out.append([label, v])\n"
        "    return v\n"
        "def write(path, data, flags=os.O_WRONLY|os.O_CREAT|os.O_TRUNC, mode=0o644):\n"
        "    fd = os.open(path, flags, mode)\n"
        "    try:\n"
        "        return os.write(fd, data)\n"
        "    finally:\n"
        "        os.close(fd)\n"
        "def read(path):\n"
        "    with open(path, 'rb') as f:\n"
        "        return f.read().decode(errors='replace')\n"
        + body +
        "\nprint(json.dumps(out))\n")

    def demote():
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)

    p = subprocess.run([PYTHON, "-c", prog, str(root)], preexec_fn=demote, cwd="/",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"as_user({uid}) failed:\n{p.stderr}")
    return [tuple(x) for x in __import__("json").loads(p.stdout)]
