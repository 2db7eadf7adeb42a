"""The command line of stratafs: everything runtimes send to fuse-overlayfs must work the
same way, and every bad input must fail cleanly (clear message naming the bad thing, exit
status != 0, nothing created, nothing mounted, no daemon left behind)."""

import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import union
from union import E, fo_differs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def stack(tdir):
    """Two lowers, upper, work, mnt under tdir."""
    layers = [[E("top", data=b"top\n"), E("d/t", data=b"t\n")],
              [E("bottom", data=b"bottom\n"), E("d/b", data=b"b\n"),
               E("top", data=b"hidden\n"), E("dev", "c", rdev=(1, 3), mode=0o666),
               E("tool", data=b"#!/bin/sh\necho ran\n", mode=0o755),
               E("owned", data=b"o\n", uid=1000, gid=1000),
               E("acl", data=b"a\n", acl="u:1000:rw")]]
    return union.build_stack(tdir, layers)


def tree(path):
    """Names and types under path (to check that a failed start created nothing)."""
    out = []
    for dp, dn, fn in os.walk(path):
        for n in sorted(dn + fn):
            p = os.path.join(dp, n)
            out.append((os.path.relpath(p, path), stat.S_IFMT(os.lstat(p).st_mode)))
    return sorted(out)


def start(impl, args, cwd=None, env=None, timeout=60):
    e = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", **(env or {}))
    return subprocess.run([impl] + [str(a) for a in args], cwd=cwd, env=e, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Mounted:
    """A mount done by hand (for unusual argv forms); always cleaned up."""

    def __init__(self, mnt):
        self.mnt = Path(mnt)

    def __enter__(self):
        self.pids = union.pids_with_arg(self.mnt)
        return self

    def __exit__(self, *exc):
        union.force_unmount(self.mnt, self.pids)


def assert_mounted(p, mnt):
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}"
    assert union.is_mounted(mnt), f"exit 0 but {mnt} is not mounted (stderr: {p.stderr})"


# ---------------------------------------------------------------------------------------
# starting and stopping

def test_daemonizes_once_mounted_and_exits_on_unmount(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", union.overlay_opts(lowers, upper, work), mnt])
    with Mounted(mnt) as m:
        assert_mounted(p, mnt)
        assert (mnt / "top").read_bytes() == b"top\n"     # live as soon as exit 0
        assert m.pids, "no daemon process found after the start returned"
        assert union.mount_fstype(mnt).startswith("fuse")
        r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert union.wait_gone(m.pids, 10), "the daemon did not exit after fusermount3 -u"


def test_umount_as_root_ends_daemon(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", union.overlay_opts(lowers, upper, work), mnt])
    with Mounted(mnt) as m:
        assert_mounted(p, mnt)
        subprocess.run(["umount", str(mnt)], check=True)
        assert union.wait_gone(m.pids, 10), "the daemon did not exit after umount"


@pytest.mark.parametrize("flag", ["-f", "-d"])
def test_foreground(tdir, impl, flag):
    lowers, upper, work, mnt = stack(tdir)
    argv = [impl, flag, "-o", union.overlay_opts(lowers, upper, work), str(mnt)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    try:
        for _ in range(200):
            if union.is_mounted(mnt) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert union.is_mounted(mnt), f"not mounted; exit={proc.poll()}"
        assert proc.poll() is None, "-f/-d must stay in the foreground"
        assert (mnt / "bottom").read_bytes() == b"bottom\n"
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, f"exit {proc.returncode} after unmount: {err[-2000:]}"
        if flag == "-d":
            assert err.strip(), "-d printed no debug output"
    finally:
        if proc.poll() is None:
            union.force_unmount(mnt, [proc.pid])
            proc.kill()
            proc.wait()


def test_source_argument_form(tdir, impl):
    """mount.fuse3 calls `stratafs SOURCE MNT -o ...` (options after the mountpoint)."""
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["stratafs", mnt, "-o", union.overlay_opts(lowers, upper, work)])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert sorted(os.listdir(mnt)) == ["acl", "bottom", "d", "dev", "owned", "tool", "top"]


def test_mount_fuse3_helper(tdir, impl):
    """`mount.fuse3 stratafs MNT -t stratafs -o ...` finds `stratafs` on PATH."""
    lowers, upper, work, mnt = stack(tdir)
    bindir = tdir / "bin"
    bindir.mkdir()
    os.symlink(impl, bindir / "stratafs")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run(["mount.fuse3", "stratafs", str(mnt), "-t", "stratafs", "-o",
                        union.overlay_opts(lowers, upper, work)], env=env,
                       capture_output=True, text=True, timeout=60)
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "d" / "b").read_bytes() == b"b\n"


def test_mount_t_fuse_stratafs(tdir, impl):
    """`mount -t fuse.stratafs stratafs MNT -o ...`: mount(8) runs mount.fuse3 with a
    standard PATH, so `stratafs` is put in /usr/local/bin inside a private mount namespace
    (nothing on the host changes); the whole check runs in that namespace."""
    lowers, upper, work, mnt = stack(tdir)
    bindir = tdir / "bin"
    bindir.mkdir()
    os.symlink(impl, bindir / "stratafs")
    script = f"""
set -e
mount --bind {bindir} /usr/local/bin
mount -t fuse.stratafs stratafs {mnt} -o {union.overlay_opts(lowers, upper, work)}
grep -q " {mnt} .* fuse.stratafs " /proc/self/mountinfo
cat {mnt}/top
echo new > {mnt}/new
fusermount3 -u {mnt}
"""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "top\n"
    assert (upper / "new").read_bytes() == b"new\n"


@fo_differs("no \\: escapes in lowerdir")
def test_escaped_colon_in_lowerdir(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    odd = tdir / "lay:er"
    union.build_layer(odd, [E("colon", data=b"c\n")])
    lowerdir = str(odd).replace(":", "\\:") + ":" + ":".join(map(str, lowers))
    p = start(impl, ["-o", f"lowerdir={lowerdir},upperdir={upper},workdir={work}", mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "colon").read_bytes() == b"c\n"
        assert (mnt / "bottom").read_bytes() == b"bottom\n"


def test_relative_paths(tdir, impl):
    """containers/storage runs the mount program with cwd = its store and short relative
    lowerdirs (l/ABC...)."""
    lowers, upper, work, mnt = stack(tdir)
    (tdir / "l").mkdir()
    os.symlink("../lower0", tdir / "l" / "AAAA")
    os.symlink("../lower1", tdir / "l" / "BBBB")
    p = start(impl, ["-o", "lowerdir=l/AAAA:l/BBBB,upperdir=upper,workdir=work", "mnt"],
              cwd=tdir)
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "top").read_bytes() == b"top\n"
        (mnt / "written").write_bytes(b"w")
        assert (upper / "written").read_bytes() == b"w"
        os.chdir("/")     # the daemon must not depend on its start directory either
        assert sorted(os.listdir(mnt / "d")) == ["b", "t"]


def test_empty_option_item_and_volatile(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    o = union.overlay_opts(lowers, upper, work) + ",,volatile"
    p = start(impl, ["-o", o, mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        (mnt / "v").write_bytes(b"v")
        os.sync()


def test_several_o_arguments(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", f"lowerdir={':'.join(map(str, lowers))}", "-o",
                     f"upperdir={upper},workdir={work}", mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        (mnt / "x").write_bytes(b"x")
        assert (upper / "x").exists()


def test_read_only_without_upperdir(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", f"lowerdir={':'.join(map(str, lowers))}", mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "top").read_bytes() == b"top\n"
        for fn in (lambda: (mnt / "new").write_bytes(b"x"), lambda: os.unlink(mnt / "top"),
                   lambda: os.mkdir(mnt / "dd"), lambda: os.chmod(mnt / "top", 0o600),
                   lambda: open(mnt / "top", "r+b")):
            with pytest.raises(OSError) as e:
                fn()
            assert e.value.errno in (30,), e.value      # EROFS
    assert tree(upper) == [] and tree(work) == []


@fo_differs("--help does not mention the overlay options")
def test_help_and_version(impl):
    for arg in ("--help", "-h"):
        p = start(impl, [arg])
        assert p.returncode == 0, (arg, p.returncode, p.stderr)
        out = p.stdout + p.stderr
        assert "lowerdir" in out and "upperdir" in out and "workdir" in out, out
    p = start(impl, ["--version"])
    assert p.returncode == 0
    assert any(ch.isdigit() for ch in p.stdout + p.stderr), p.stdout + p.stderr


@pytest.mark.skipif(union.impl_is_fuse_overlayfs(), reason="about this repository")
def test_man_page_exists():
    pages = list((union.REPO / "Documentation").glob("stratafs.*"))
    assert pages, "Documentation/stratafs.1 (man page) is missing"


# ---------------------------------------------------------------------------------------
# every option fuse-overlayfs accepts

OPTIONS = [
    "uidmapping=0:0:65536", "gidmapping=0:0:65536", "uidmapping=0:0:1000:1000:1000:64536",
    "squash_to_root", "squash_to_uid=1000", "squash_to_gid=1000", "static_nlink", "noacl",
    "xattr_permissions=0", "xattr_permissions=1", "xattr_permissions=2", "volatile",
    "fsync=0", "fsync=1", "timeout=5", "threaded=0", "threaded=1", "writeback=0",
    "writeback=1", "noxattrs=0", "noxattrs=1", "noxattrs=2", "ino32_t", "xino=off",
    "xino=auto", "xino=on", "redirect_dir=off", "redirect_dir=on", "redirect_dir=follow",
    "redirect_dir=nofollow", "allow_other", "allow_root", "default_permissions", "ro", "rw",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime",
    "lazytime", "nodiratime", "sync", "async",
]


FO_REJECTS = {"redirect_dir=on", "redirect_dir=follow", "redirect_dir=nofollow", "nodiratime"}


@pytest.mark.parametrize("opt", OPTIONS)
def test_option_accepted(tdir, impl, opt, request):
    if union.impl_is_fuse_overlayfs() and opt in FO_REJECTS:
        request.applymarker(pytest.mark.xfail(reason="fuse-overlayfs rejects it"))
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", union.overlay_opts(lowers, upper, work, [opt]), mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "bottom").read_bytes() == b"bottom\n"
        if opt != "ro":
            (mnt / "w").write_bytes(b"w")
            assert (mnt / "w").read_bytes() == b"w"


def test_option_max_threads(tdir, impl):
    """max_threads caps the workers of the multi-threaded loop: after the same parallel
    load, a max_threads=1 daemon runs fewer threads than one with the default, and both
    serve it all."""
    if union.impl_is_fuse_overlayfs():
        pytest.skip("fuse-overlayfs has no max_threads")

    def threads_after_load(opts, sub):
        lowers, upper, work, mnt = stack(tdir / sub)
        with union.FuseMount(mnt, lowers, upper, work, opts) as m:
            def load(i):
                for j in range(200):
                    p = m.mnt / f"f{i}.{j}"
                    p.write_bytes(b"x")
                    os.stat(p)
                    p.unlink()
                return True
            with ThreadPoolExecutor(8) as ex:
                assert all(ex.map(load, range(8)))
            assert (m.mnt / "bottom").read_bytes() == b"bottom\n"
            return len(os.listdir(f"/proc/{m.pids[0]}/task"))

    capped = threads_after_load(["max_threads=1"], "one")
    default = threads_after_load([], "default")
    assert capped < default, (capped, default)


def test_option_context(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    o = union.overlay_opts(lowers, upper, work,
                           ['context="system_u:object_r:container_file_t:s0:c1,c2"'])
    p = start(impl, ["-o", o, mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert (mnt / "bottom").read_bytes() == b"bottom\n"


def test_option_effects(tdir, impl):
    """The options that change what one sees do what fuse-overlayfs does."""
    def mounted(opts, sub):
        lowers, upper, work, mnt = stack(tdir / sub)
        m = union.FuseMount(mnt, lowers, upper, work, opts)
        m.start()
        return m

    m = mounted(["ro"], "ro")
    try:
        with pytest.raises(OSError) as e:
            (m.mnt / "x").write_bytes(b"x")
        assert e.value.errno == 30
    finally:
        m.stop()
    m = mounted(["squash_to_root"], "sr")
    try:
        assert os.stat(m.mnt / "owned").st_uid == 0 and os.stat(m.mnt / "owned").st_gid == 0
    finally:
        m.stop()
    m = mounted(["squash_to_uid=1234", "squash_to_gid=4321"], "su")
    try:
        s = os.stat(m.mnt / "top")
        assert (s.st_uid, s.st_gid) == (1234, 4321)
    finally:
        m.stop()
    m = mounted(["uidmapping=0:1000:10", "gidmapping=0:1000:10"], "map")
    try:
        # as fuse-overlayfs reads uidmapping=A:B:N: id A+i on disk is B+i in the mount,
        # ids outside the map show as the overflow id 65534
        s = os.stat(m.mnt / "top")
        assert (s.st_uid, s.st_gid) == (1000, 1000)
        s = os.stat(m.mnt / "owned")
        assert (s.st_uid, s.st_gid) == (65534, 65534)
        os.chown(m.mnt / "top", 1005, 1006)
        s = os.lstat(m.upper / "top")
        assert (s.st_uid, s.st_gid) == (5, 6)
    finally:
        m.stop()
    m = mounted(["static_nlink"], "nl")
    try:
        assert os.stat(m.mnt / "d").st_nlink == 1
    finally:
        m.stop()
    m = mounted(["ino32_t"], "i32")
    try:
        for n in os.listdir(m.mnt):
            assert os.lstat(m.mnt / n).st_ino < 2**32
    finally:
        m.stop()
    m = mounted(["noexec"], "nx")
    try:
        r = subprocess.run([str(m.mnt / "tool")], capture_output=True)
        pytest.fail("noexec: executed") if r.returncode == 0 else None
    except PermissionError:
        pass
    finally:
        m.stop()
    m = mounted(["nodev"], "nd")
    try:
        with pytest.raises(PermissionError):
            open(m.mnt / "dev", "rb")
    finally:
        m.stop()


@fo_differs("noacl is accepted but ACLs stay visible")
def test_option_noacl(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    with union.FuseMount(mnt, lowers, upper, work, ["noacl"]):
        with pytest.raises(OSError):
            os.getxattr(mnt / "acl", "system.posix_acl_access")


def test_unknown_option_warns(tdir, impl):
    lowers, upper, work, mnt = stack(tdir)
    p = start(impl, ["-o", union.overlay_opts(lowers, upper, work, ["bogus_opt=7"]), mnt])
    with Mounted(mnt):
        assert_mounted(p, mnt)
        assert "bogus_opt" in p.stderr, f"no warning naming the option: {p.stderr!r}"


def test_root_mount_allows_other_users(tdir, impl):
    """Started by root (as runtimes do), the mount is usable by the container's non-root
    users without extra options, as with fuse-overlayfs (allow_other + permission checks
    like the kernel)."""
    lowers, upper, work, mnt = stack(tdir)
    with union.FuseMount(mnt, lowers, upper, work, []):
        out = union.as_user(1000, 1000, 'R("read", read, P("top"))\n'
                            'R("write own", write, P("owned"), b"x", os.O_WRONLY)\n'
                            'R("write root", write, P("top"), b"x", os.O_WRONLY)\n', mnt)
        assert out == [("read", "top\n"), ("write own", 1), ("write root", "EACCES")], out


# ---------------------------------------------------------------------------------------
# bad input

def bad_cases(tdir, lowers, upper, work, mnt):
    L = ":".join(map(str, lowers))
    (tdir / "afile").write_bytes(b"")
    (lowers[1] / "inlower").mkdir()
    (upper / "w").mkdir()
    tmpfs = tdir / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmpfs)], check=True)
    (tmpfs / "w").mkdir()
    return {
        "missing lowerdir": ([f"-o", f"upperdir={upper},workdir={work}", mnt], "lowerdir"),
        "empty lowerdir": ([f"-o", f"lowerdir=,upperdir={upper},workdir={work}", mnt],
                           "lowerdir"),
        "nonexistent lower": (["-o", f"lowerdir={L}:{tdir}/no-such-layer,upperdir={upper},"
                               f"workdir={work}", mnt], "no-such-layer"),
        "lower not a dir": (["-o", f"lowerdir={tdir}/afile,upperdir={upper},workdir={work}",
                             mnt], "afile"),
        "nonexistent upper": (["-o", f"lowerdir={L},upperdir={tdir}/no-upper,workdir={work}",
                               mnt], "no-upper"),
        "nonexistent workdir": (["-o", f"lowerdir={L},upperdir={upper},workdir={tdir}/no-w",
                                 mnt], "no-w"),
        "upper without workdir": (["-o", f"lowerdir={L},upperdir={upper}", mnt], "workdir"),
        "workdir on another fs": (["-o", f"lowerdir={L},upperdir={upper},workdir={tmpfs}/w",
                                   mnt], "workdir"),
        "upper inside a lower": (["-o", f"lowerdir={L},upperdir={lowers[1]}/inlower,"
                                  f"workdir={work}", mnt], "upperdir"),
        "workdir inside upper": (["-o", f"lowerdir={L},upperdir={upper},workdir={upper}/w",
                                  mnt], "workdir"),
        "missing mountpoint": (["-o", union.overlay_opts(lowers, upper, work),
                                tdir / "no-mnt"], "no-mnt"),
        "mountpoint not a dir": (["-o", union.overlay_opts(lowers, upper, work),
                                  tdir / "afile"], "afile"),
        "no mountpoint": (["-o", union.overlay_opts(lowers, upper, work)], "mountpoint"),
        "bad uidmapping": (["-o", union.overlay_opts(lowers, upper, work, ["uidmapping=0:x"]),
                            mnt], "uidmapping"),
        "bad xattr_permissions": (["-o", union.overlay_opts(lowers, upper, work,
                                                            ["xattr_permissions=7"]), mnt],
                                  "xattr_permissions"),
        "bad max_threads": (["-o", union.overlay_opts(lowers, upper, work,
                                                      ["max_threads=0"]), mnt],
                            "max_threads"),
    }


BAD = ["missing lowerdir", "empty lowerdir", "nonexistent lower", "lower not a dir",
       "nonexistent upper", "nonexistent workdir", "upper without workdir",
       "workdir on another fs", "upper inside a lower", "workdir inside upper",
       "missing mountpoint", "mountpoint not a dir", "no mountpoint", "bad uidmapping",
       "bad xattr_permissions", "bad max_threads"]

FO_BAD = {  # fuse-overlayfs 1.10 accepts these, or says nothing naming the bad thing
    "missing lowerdir", "empty lowerdir", "nonexistent workdir", "workdir on another fs",
    "upper inside a lower", "workdir inside upper", "missing mountpoint",
    "mountpoint not a dir", "bad uidmapping", "bad max_threads",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input(tdir, impl, case, request):
    if union.impl_is_fuse_overlayfs() and case in FO_BAD:
        request.applymarker(pytest.mark.xfail(reason="fuse-overlayfs: lax checks/messages",
                                              strict=False))
    lowers, upper, work, mnt = stack(tdir)
    args, must_name = bad_cases(tdir, lowers, upper, work, mnt)[case]
    before = tree(tdir)
    p = start(impl, args, timeout=30)
    leftover = union.pids_with_arg(args[-1])
    mounted = union.is_mounted(mnt)
    if mounted:
        union.force_unmount(mnt, leftover)
    assert p.returncode != 0, f"{case}: exit 0 (stderr: {p.stderr!r})"
    assert not mounted, f"{case}: mounted anyway"
    assert not leftover, f"{case}: a daemon is still running"
    msg = p.stderr.strip()
    assert msg, f"{case}: no message"
    assert must_name in msg, f"{case}: the message does not name {must_name!r}: {msg!r}"
    assert tree(tdir) == before, f"{case}: created or changed files: " \
        f"{sorted(set(tree(tdir)) ^ set(before))}"


def test_mount_twice_on_one_mountpoint(tdir, impl):
    """A second mount on a busy mountpoint either stacks on top (as with fuse-overlayfs)
    or fails with a message; either way everything unmounts and no daemon is left."""
    lowers, upper, work, mnt = stack(tdir)
    u2, w2 = tdir / "u2", tdir / "w2"
    u2.mkdir()
    w2.mkdir()
    with union.FuseMount(mnt, lowers, upper, work) as first:
        p = start(impl, ["-o", union.overlay_opts(lowers, u2, w2), mnt])
        pids = [x for x in union.pids_with_arg(mnt) if x not in first.pids]
        try:
            if p.returncode == 0:
                (mnt / "x").write_bytes(b"x")
                assert (u2 / "x").exists() and not (upper / "x").exists()
            else:
                assert p.stderr.strip(), "failed without a message"
        finally:
            how, exited = union.force_unmount(mnt, pids)
        assert exited, "the second daemon did not exit after its unmount"
    assert not union.is_mounted(mnt)
