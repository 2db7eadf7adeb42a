"""Rootless: stratafs run by an unprivileged user, in a user namespace (`unshare -Urm`) and
plainly through fusermount3, with the rootless conventions (user.overlay.* xattrs, char 0/0
whiteouts made by an unprivileged mknod) and fuse-overlayfs's rootless options
(uidmapping/gidmapping, xattr_permissions).

The unprivileged user is uid/gid 1000.  /dev/fuse is 0600 on this machine, so each scenario
runs in a private mount namespace where a 0666 copy of the device node is bound over
/dev/fuse (what Debian's udev rule gives); nothing on the host changes.

Inside the user namespace the oracle is again the kernel's overlayfs (mounted with
userxattr); for the fuse-overlayfs options the oracle is fuse-overlayfs itself."""

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import union

pytestmark = [pytest.mark.rootless,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up the user")]

UID = GID = 1000
TESTS = Path(__file__).resolve().parent

# Runs inside the target environment; argv[1] is a JSON config.  Builds the same layers
# for each "side", runs the named operation list, prints snapshots as JSON.
INNER = r'''
import ctypes, json, os, stat, sys
sys.path.insert(0, sys.argv[2])
import union
from union import E, Log

cfg = json.loads(sys.argv[1])

def layers():
    return [
        [E("top", data=b"top\n"), E("d/t", data=b"t\n"), E("gone", "w", form="char"),
         E("gone2", "w", form="wh"), E("opq", "d", opaque="user"), E("opq/v", data=b"v"),
         E("opqw", "d", opaque="wh"), E("opqw/v", data=b"v")],
        [E("top", data=b"hidden\n"), E("bottom", data=b"bottom\n", mode=0o640),
         E("gone", data=b"g"), E("gone2", data=b"g"), E("opq/h", data=b"h"),
         E("opqw/h", data=b"h"), E("d/b", data=b"b\n"), E("d/sub/deep", data=b"deep"),
         E("x.txt", data=b"xattrs", xattrs={"user.a": b"1"}), E("sym", "l", target="top"),
         E("h1", data=b"hard"), E("h2", "h", target="h1"), E("fifo", "p"),
         E("emptydir", "d"), E("exe", data=b"#!/bin/sh\n", mode=0o755)],
    ]

def wr(p, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(p, flags, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)

def ops_basic(L):
    L.do("read", lambda: open(L.p("top"), "rb").read())
    L.do("ls", lambda: sorted(os.listdir(L.root)))
    L.do("append", wr, L.p("bottom"), b"more", os.O_WRONLY | os.O_APPEND)
    L.do("chmod", os.chmod, L.p("exe"), 0o700)
    L.do("setxattr", os.setxattr, L.p("x.txt"), "user.b", b"2")
    L.do("unlink", os.unlink, L.p("d/b"))
    L.do("rm deep", os.unlink, L.p("d/sub/deep"))
    L.do("rmdir", os.rmdir, L.p("d/sub"))
    L.do("mkdir again", os.mkdir, L.p("d/sub"))
    L.do("ls again", lambda: sorted(os.listdir(L.p("d/sub"))))
    L.do("rmdir lower", os.rmdir, L.p("emptydir"))
    L.do("new", wr, L.p("new"), b"new")
    L.do("mkdir", os.mkdir, L.p("nd"))
    L.do("symlink", os.symlink, "new", L.p("nd/sl"))
    L.do("link", os.link, L.p("h1"), L.p("h3"))
    L.do("rename", os.rename, L.p("top"), L.p("top2"))
    L.do("mkfifo", os.mkfifo, L.p("nd/fifo"))
    L.do("whiteout mknod", os.mknod, L.p("nd/wh"), stat.S_IFCHR, 0)
    L.do("chown self", os.chown, L.p("new"), os.getuid(), os.getgid())
    L.do("ls opq", lambda: sorted(os.listdir(L.p("opq"))))
    L.do("ls opqw", lambda: sorted(os.listdir(L.p("opqw"))))
    L.do("utime", os.utime, L.p("h1"), ns=(1_050_000_000 * 10**9, 1_050_000_000 * 10**9))
    fd = L.do("tmpfile", os.open, L.p("d"), os.O_TMPFILE | os.O_RDWR, 0o640)
    if isinstance(fd, int):
        os.write(fd, b"tmp")
        L.do("tmpfile link", linkat_empty, fd, L.p("d/tmpfile"))
        os.close(fd)
        L.do("tmpfile read", lambda: open(L.p("d/tmpfile"), "rb").read())

def linkat_empty(fd, dst):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", -100, dst.encode(), 0x1000) != 0:    # AT_EMPTY_PATH
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return "ok"

def ops_owners(L):
    L.do("new", wr, L.p("new"), b"new")
    L.do("mkdir", os.mkdir, L.p("nd"))
    L.do("chown file", os.chown, L.p("new"), 1234, 5678)
    L.do("chown lower", os.chown, L.p("bottom"), 42, 43)
    L.do("chmod lower", os.chmod, L.p("top"), 0o604)
    L.do("chown dir", os.chown, L.p("nd"), 7, 8)
    L.do("sub", wr, L.p("nd/f"), b"f")
    L.do("stat", lambda: [list(os.lstat(L.p(n))[:1]) + list(os.lstat(L.p(n))[4:6])
                          for n in ("new", "bottom", "top", "nd", "nd/f")])

OPS = {"basic": ops_basic, "owners": ops_owners}
out = {}
for side in cfg["sides"]:
    base = os.path.join(cfg["base"], side["name"])
    kform = side["kind"] == "kernel"
    lowers, upper, work, mnt = union.build_stack(base, layers(), kernel_form=kform,
                                                 xattr_ns=cfg.get("xattr_ns", "user"))
    if side["kind"] == "kernel":
        m = union.KernelMount(mnt, lowers, upper, work, side["opts"])
    else:
        m = union.FuseMount(mnt, lowers, upper, work, side["opts"], binary=side["binary"])
    try:
        m.start()
    except union.MountError as e:
        out[side["name"]] = {"mount error": str(e)}
        continue
    try:
        L = Log(mnt)
        OPS[cfg["ops"]](L)
        merged = union.snapshot(mnt)
        mtype = union.mount_fstype(mnt)
    finally:
        m.stop()
    out[side["name"]] = {"log": L.items, "merged": merged, "upper": union.upper_snapshot(upper),
                         "lowers": [str(x) for x in lowers], "upperdir": str(upper),
                         "fstype": mtype, "daemon_exited": not any(union.pid_alive(p) for p in m.pids)}
    if cfg.get("cross") and side["kind"] != "kernel":
        work3, mnt3 = os.path.join(base, "work3"), os.path.join(base, "mnt3")
        os.mkdir(work3); os.mkdir(mnt3)
        try:
            with union.FuseMount(mnt3, lowers, upper, work3, side["opts"],
                                 binary=cfg["cross"]):
                out[side["name"]]["cross view"] = union.snapshot(mnt3)
        except union.MountError as e:
            out[side["name"]]["cross view"] = {"mount error": str(e)}
    if cfg.get("remount_kernel") and side["kind"] != "kernel":
        work2, mnt2 = os.path.join(base, "work2"), os.path.join(base, "mnt2")
        os.mkdir(work2); os.mkdir(mnt2)
        klowers = out.get("kernel", {}).get("lowers", [str(x) for x in lowers])
        try:
            with union.KernelMount(mnt2, klowers, upper, work2, ["userxattr"]):
                out[side["name"]]["kernel view"] = union.snapshot(mnt2)
        except union.MountError as e:
            out[side["name"]]["kernel view"] = {"mount error": str(e)}

def enc(o):
    if isinstance(o, bytes):
        return "hex:" + o.hex()
    return repr(o)
print(json.dumps(out, default=enc))
'''


# Enters a user namespace mapping 0..65535 to host 100000..165535 (what rootless podman
# gets from /etc/subuid), without newuidmap: root writes the maps of a child that has
# unshared, then the child becomes uid 0 inside and execs argv.
FULL_MAP_LAUNCHER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w); os.close(r2)
    if libc.unshare(0x10000000 | 0x00020000) != 0:
        os._exit(90)
    os.write(w2, b"u"); os.close(w2)
    os.read(r, 1)
    os.setresgid(0, 0, 0); os.setgroups([]); os.setresuid(0, 0, 0)
    os.execvp(sys.argv[1], sys.argv[1:])
os.close(r); os.close(w2)
os.read(r2, 1)
for m in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{m}", "w") as f:
        f.write("0 100000 65536\n")
os.write(w, b"g"); os.close(w)
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
"""


def fuse_dev(tdir):
    """A 0666 copy of /dev/fuse to bind over /dev/fuse in a private mount namespace."""
    d = tdir / "dev"
    d.mkdir()
    st = os.stat("/dev/fuse")
    os.mknod(d / "fuse", 0o20666, st.st_rdev)
    os.chmod(d / "fuse", 0o666)
    return d / "fuse"


def run_inner(tdir, cfg, userns, uid=UID, gid=GID, owner=None):
    """Run INNER with cfg as uid/gid (in a private mount ns with /dev/fuse usable), inside
    `unshare <userns...>` when userns is given.  Returns the parsed JSON."""
    script = tdir / "inner.py"
    script.write_text(INNER)
    base = tdir / "home"
    base.mkdir(exist_ok=True)
    os.chown(base, *(owner or (uid, gid)))
    cfg = dict(cfg, base=str(base))
    dev = fuse_dev(tdir)
    inner = [union.PYTHON, str(script), json.dumps(cfg), str(TESTS)]
    if userns == "full":
        inner = [union.PYTHON, "-c", FULL_MAP_LAUNCHER] + inner
    elif userns:
        inner = ["unshare"] + userns + ["--"] + inner
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] if uid else []
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           'mount --bind "$0" /dev/fuse && exec "$@"', str(dev)] + drop + inner
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(base),
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    if p.returncode != 0:
        raise AssertionError(f"inner run failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout)


def compare(a, b, names, ignore=()):
    problems = []
    for key in ("log",):
        if a.get(key) != b.get(key):
            la, lb = a.get(key) or [], b.get(key) or []
            for i in range(max(len(la), len(lb))):
                x = la[i] if i < len(la) else None
                y = lb[i] if i < len(lb) else None
                if x != y:
                    problems.append(f"step {i}: {names[0]}={x} {names[1]}={y}")
    for key in ("merged", "upper"):
        sa, sb = union.strip(a[key], *ignore), union.strip(b[key], *ignore)
        if key == "upper":
            sa = union.drop_moot_opaque(sa, a["lowers"])
            sb = union.drop_moot_opaque(sb, a["lowers"])
        d = union.diff_snapshots(sa, sb, names)
        if d:
            problems.append(f"{key} differs:\n{d}")
    return problems


def impl_side(impl, opts=()):
    return {"name": "impl", "kind": "fuse", "binary": impl, "opts": list(opts)}


KERNEL_SIDE = {"name": "kernel", "kind": "kernel", "opts": ["userxattr"]}


def test_userns_against_kernel(tdir, impl):
    """uid 1000 -> unshare -Urm: the kernel overlay (userxattr) and stratafs on the same
    layers and operations; and the kernel reads stratafs's upper the same way."""
    out = run_inner(tdir, {"sides": [KERNEL_SIDE, impl_side(impl)], "ops": "basic",
                           "remount_kernel": True}, ["-Urm"])
    k, i = out["kernel"], out["impl"]
    assert "mount error" not in k, k
    assert "mount error" not in i, i["mount error"]
    problems = compare(k, i, ("kernel", "impl"),
                       ignore=("nlink",) if union.impl_is_fuse_overlayfs() else ())
    if not union.impl_is_fuse_overlayfs():
        d = union.diff_snapshots(k["merged"], i["kernel view"], ("kernel", "kernel view"))
        if d:
            problems.append("the kernel reads the rootless upper differently:\n" + d)
    assert i["daemon_exited"], "daemon still running after fusermount3 -u"
    klog = dict((x[0], x[1]) for x in k["log"])
    assert klog["tmpfile link"] == "ok" and klog["tmpfile read"] == "hex:" + b"tmp".hex(), klog
    if problems:
        if union.impl_is_fuse_overlayfs():
            pytest.xfail("fuse-overlayfs differs: " + problems[0][:300])
        pytest.fail("\n".join(problems), pytrace=False)


def test_userns_whiteouts_are_char_devices(tdir, impl):
    out = run_inner(tdir, {"sides": [impl_side(impl)], "ops": "basic"}, ["-Urm"])
    up = out["impl"]["upper"]
    assert up.get("d/b") == {"type": "whiteout"}, up.get("d/b")
    assert up.get("emptydir") == {"type": "whiteout"}
    assert up.get("d/sub", {}).get("opaque"), up.get("d/sub")
    # the on-disk forms: char 0/0 (mknod works in a user namespace) and user.overlay.opaque
    upper = Path(out["impl"]["upperdir"])
    s = os.lstat(upper / "d" / "b")
    assert s.st_mode & 0o170000 == 0o020000 and s.st_rdev == 0, oct(s.st_mode)
    if not union.impl_is_fuse_overlayfs():
        assert os.getxattr(upper / "d" / "sub", "user.overlay.opaque") == b"y"
    # files the user wrote belong to the user outside the namespace
    assert os.lstat(upper / "new").st_uid == UID


def test_unprivileged_user_fusermount(tdir, impl):
    """uid 1000 without a user namespace: libfuse goes through the setuid fusermount3."""
    out = run_inner(tdir, {"sides": [impl_side(impl)], "ops": "basic"}, None)
    i = out["impl"]
    assert "mount error" not in i, i.get("mount error")
    assert i["fstype"].startswith("fuse"), i["fstype"]
    assert i["daemon_exited"], "daemon still running after fusermount3 -u"
    log = dict((x[0], x[1]) for x in i["log"])
    assert log["read"] == "hex:" + b"top\n".hex()
    assert log["append"] == 4 and log["unlink"] is None and log["rename"] is None, log
    assert log["ls opq"] == ["v"] and log["ls opqw"] == ["v"], log
    assert log["ls again"] == [], log
    assert isinstance(log["tmpfile"], int), log        # O_TMPFILE works (naming it is
    up = i["upper"]                                     # the kernel's call: CAP_DAC_...)
    assert up["d/b"] == {"type": "whiteout"} and up["d/sub"].get("opaque"), up
    assert up["bottom"]["uid"] == UID and up["bottom"]["mode"] == "0o640", up["bottom"]
    upper = Path(i["upperdir"])
    assert not any(n.startswith("trusted.") for n in os.listxattr(upper / "d" / "sub"))


FULL_MAP = "full"


def owners_in(tdir, impl, opts, userns, cross=True):
    """Run the 'owners' operations on stratafs with `opts`, then mount its layers with
    fuse-overlayfs and the same options: both must show the same owners and modes."""
    if union.impl_is_fuse_overlayfs():
        pytest.skip("compares stratafs with fuse-overlayfs")
    out = run_inner(tdir, {"sides": [impl_side(impl, opts)], "ops": "owners",
                           "cross": cross and "/usr/bin/fuse-overlayfs"},
                    userns, uid=0, gid=0, owner=(100000, 100000) if userns else (0, 0))
    i = out["impl"]
    assert "mount error" not in i, i["mount error"]
    log = dict((x[0], x[1]) for x in i["log"])
    for step in ("new", "mkdir", "chown file", "chown lower", "chmod lower", "chown dir"):
        assert not str(log[step]).startswith("E"), (step, log[step])
    if not cross:
        return i
    cross = i["cross view"]
    assert "mount error" not in cross, cross
    owners = lambda s: {k: (v["uid"], v["gid"], v["mode"]) for k, v in s.items()
                        if k not in (".",) and "uid" in v}
    d = union.diff_snapshots({k: {"owner": v} for k, v in owners(i["merged"]).items()},
                             {k: {"owner": v} for k, v in owners(cross).items()},
                             ("stratafs", "fuse-overlayfs over stratafs's layers"))
    assert not d, "fuse-overlayfs reads the ownership stratafs stored differently:\n" + d
    return i


OVERRIDE = {"1": ("security.fuseoverlayfs.override_stat", "user.containers.override_stat"),
            "2": ("user.fuseoverlayfs.override_stat", "user.containers.override_stat")}


@pytest.mark.parametrize("xp", ["2", "1"])
def test_xattr_permissions(tdir, impl, xp):
    """chown/chmod are stored in override_stat xattrs (the real files keep the mounter's
    ownership), read back the same, and fuse-overlayfs reads them the same.  2 (user.*
    xattrs) is the rootless mode, run in a user namespace; 1 needs real root."""
    # (fuse-overlayfs 1.10 cannot list an upper root without its own security.* xattr,
    # so the cross-check is for the rootless mode only)
    i = owners_in(tdir, impl, [f"xattr_permissions={xp}"], FULL_MAP if xp == "2" else None,
                  cross=xp == "2")
    m = i["merged"]
    assert (m["new"]["uid"], m["new"]["gid"]) == (1234, 5678), m["new"]
    assert (m["bottom"]["uid"], m["bottom"]["gid"], m["bottom"]["mode"]) == (42, 43, "0o640")
    assert m["top"]["mode"] == "0o604" and (m["nd"]["uid"], m["nd"]["gid"]) == (7, 8)
    upper = Path(i["upperdir"])
    for n, want in (("new", (1234, 5678)), ("bottom", (42, 43)), ("nd", (7, 8))):
        x = i["upper"][n].get("xattrs", {})
        names = [a for a in OVERRIDE[xp] if a in x]
        assert names, f"{n}: no override_stat xattr ({sorted(x)})"
        val = bytes.fromhex(x[names[0]][4:]).decode()
        uid, gid, mode = val.split(":")
        assert (int(uid), int(gid)) == want, (n, val)
        assert int(mode, 8) & 0o7777 == int(m[n]["mode"], 8), (n, val)
        assert (os.lstat(upper / n).st_uid, os.lstat(upper / n).st_gid) != want, \
            f"{n}: the real file was chowned"
    for n, v in m.items():
        assert not [a for a in v.get("xattrs", {}) if "override_stat" in a], \
            f"{n}: override_stat visible in the mount"


@pytest.mark.parametrize("xp", ["2", "1"])
def test_xattr_permissions_open_files(tdir, impl, xp):
    """With xattr_permissions, files reached only through an open fd -- removed while open,
    or O_TMPFILE not linked yet -- show and take ownership through the override xattr like
    named ones (the fd's /proc link must be followed, not acted on)."""
    lower, upper, work, mnt = (tdir / n for n in ("lower", "upper", "work", "mnt"))
    for d in (lower / "d", upper, work, mnt):
        d.mkdir(parents=True)
    (lower / "d" / "low").write_bytes(b"lower file")
    own = lambda st: (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777))
    with union.make_mount("stratafs", mnt, [lower], upper, work,
                          opts=[f"xattr_permissions={xp}"]):
        for name in ("up", "low"):
            p = mnt / "d" / name
            if name == "up":
                p.write_bytes(b"upper file")
            os.chown(p, 1234, 5678)
            os.chmod(p, 0o604)
            fd = os.open(p, os.O_RDWR)
            try:
                os.unlink(p)
                assert own(os.fstat(fd)) == (1234, 5678, "0o604"), name
                os.fchown(fd, 42, 43)
                os.fchmod(fd, 0o640)
                assert own(os.fstat(fd)) == (42, 43, "0o640"), name
                assert os.pread(fd, 32, 0).endswith(b"file")
            finally:
                os.close(fd)
        fd = os.open(mnt / "d", os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            assert own(os.fstat(fd)) == (0, 0, "0o600")
            os.fchown(fd, 7, 8)
            os.fchmod(fd, 0o644)
            os.write(fd, b"tmp")
            assert own(os.fstat(fd)) == (7, 8, "0o644")
            libc = ctypes.CDLL(None, use_errno=True)     # linkat(fd, "", AT_EMPTY_PATH)
            assert libc.linkat(fd, b"", -100, bytes(mnt / "d" / "named"), 0x1000) == 0, \
                os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
        assert own(os.stat(mnt / "d" / "named")) == (7, 8, "0o644")
        assert (mnt / "d" / "named").read_bytes() == b"tmp"
        real = os.lstat(upper / "d" / "named")
        assert (real.st_uid, real.st_gid) == (0, 0), "the real file was chowned"


def test_uidmapping_like_fuse_overlayfs(tdir, impl):
    i = owners_in(tdir, impl, ["uidmapping=0:10:5000", "gidmapping=0:10:5000"], FULL_MAP)
    m = i["merged"]
    # fuse-overlayfs reads uidmapping=A:B:N as: id A+i on disk is B+i in the mount
    assert (m["d"]["uid"], m["d"]["gid"]) == (10, 10), m["d"]
    assert (m["bottom"]["uid"], m["bottom"]["gid"]) == (42, 43), m["bottom"]
    s = os.lstat(Path(i["upperdir"]) / "bottom")
    assert (s.st_uid - 100000, s.st_gid - 100000) == (32, 33)


def test_squash_to_root_like_fuse_overlayfs(tdir, impl):
    i = owners_in(tdir, impl, ["squash_to_root"], FULL_MAP)
    assert all(v["uid"] == 0 and v["gid"] == 0 for v in i["merged"].values()), i["merged"]
