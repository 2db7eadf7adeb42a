"""FUSE passthrough (issue 7): used where it should be, not where it should not, and the
bytes stay right under mixed use.

The daemon's root answers the (never listed) xattr user.stratafs.stats with how it runs and
how many READ/WRITE requests reached it: with passthrough the kernel does the I/O itself, so
those counts stay flat while files are read and written.
"""

import errno
import hashlib
import mmap
import os
import random
import stat
import subprocess
import threading
import time

import pytest

import union

MiB = 1 << 20


stats = union.daemon_stats


def stack(tdir, size=16 * MiB, seed=1):
    lower, upper, work, mnt = (tdir / n for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    data = random.Random(seed).randbytes(size)
    (lower / "big").write_bytes(data)
    (lower / "small").write_bytes(b"small file\n")
    return lower, upper, work, mnt, data


def mount(mnt, lowers, upper, work, *opts):
    return union.FuseMount(mnt, lowers, upper, work, list(opts))


def backing_released(mnt, timeout=10):
    """The daemon's stats once no backing file is registered, or when timeout runs out:
    RELEASE reaches the daemon after close() returns."""
    deadline = time.monotonic() + timeout
    while stats(mnt)["backing_files_open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats(mnt)


def kernel_has_passthrough():
    r = subprocess.run([union.impl_bin(), "-o", "lowerdir=/,passthrough=on", "/nonexistent"],
                       capture_output=True, text=True)
    return "no FUSE passthrough" not in r.stderr


pytestmark = [
    pytest.mark.skipif(union.impl_is_fuse_overlayfs(), reason="stratafs feature"),
    pytest.mark.skipif(os.geteuid() != 0, reason="passthrough needs root"),
]


def test_reads_and_writes_bypass_the_daemon(tdir):
    """Every directory-layer file passes through on a writable mount: lower files, created
    files and copied-up ones; with passthrough_lower=0 lower files take the cached path
    (and upper ones still pass through); on a read-only mount every directory-layer file
    passes through."""
    if not kernel_has_passthrough():
        pytest.skip("kernel without FUSE passthrough")
    lower, upper, work, mnt, data = stack(tdir)
    with mount(mnt, [lower], upper, work, "passthrough=on,passthrough_lower=0"):
        s0 = stats(mnt)
        assert (mnt / "big").read_bytes() == data      # lower file: through the daemon
        s1 = stats(mnt)
        assert s1["read_requests"] > s0["read_requests"]
        assert s1["passthrough_opens"] == s0["passthrough_opens"]
        (mnt / "up").write_bytes(b"u" * MiB)
        assert (mnt / "up").read_bytes() == b"u" * MiB
        s2 = stats(mnt)
        assert s2["read_requests"] == s1["read_requests"], s2
        assert s2["write_requests"] == s1["write_requests"], s2
    (upper / "up").unlink()
    with mount(mnt, [lower], upper, work, "passthrough=on"):
        assert stats(mnt)["passthrough"] == "on"
        s0 = stats(mnt)
        assert (mnt / "big").read_bytes() == data      # lower file: passed through
        s1 = stats(mnt)
        assert s1["read_requests"] == s0["read_requests"], s1
        assert s1["passthrough_opens"] == s0["passthrough_opens"] + 1
        with open(mnt / "big", "r+b") as f:            # copy-up, then writes pass through
            f.seek(5 * MiB)
            f.write(b"x" * MiB)
        with open(mnt / "new", "wb") as f:             # a created file
            f.write(os.urandom(4 * MiB))
        expect = data[:5 * MiB] + b"x" * MiB + data[6 * MiB:]
        assert (mnt / "big").read_bytes() == expect     # now an upper file: no READ
        s2 = stats(mnt)
        assert s2["write_requests"] == s1["write_requests"], s2
        assert s2["read_requests"] == s1["read_requests"], s2
        assert s2["passthrough_opens"] >= s1["passthrough_opens"] + 3
    assert (upper / "big").read_bytes() == expect
    assert (lower / "big").read_bytes() == data         # never written through
    ro = tdir / "ro"
    ro.mkdir()
    with mount(ro, [lower], None, None, "passthrough=on"):
        s0 = stats(ro)
        assert (ro / "big").read_bytes() == data
        s1 = stats(ro)
        assert s1["read_requests"] == s0["read_requests"], s1
        assert s1["passthrough_opens"] == s0["passthrough_opens"] + 1


def test_small_lower_files_opened_again_are_cached(tdir):
    """A small lower file passes through on its first open (a cold scan costs no READ round
    trip), and reads from the kernel's page cache when opened again: passthrough reads
    make the kernel drop the cached atime, so every later stat() would be a GETATTR.  Big
    files (>= passthrough_cache) always pass through; passthrough_cache=0 turns it off."""
    if not kernel_has_passthrough():
        pytest.skip("kernel without FUSE passthrough")
    lower, upper, work, mnt, data = stack(tdir)
    with mount(mnt, [lower], upper, work, "passthrough=on"):
        s0 = stats(mnt)
        assert (mnt / "small").read_bytes() == b"small file\n"       # first open
        s1 = stats(mnt)
        assert s1["passthrough_opens"] == s0["passthrough_opens"] + 1
        assert s1["read_requests"] == s0["read_requests"]
        for _ in range(3):                                             # opened again
            assert (mnt / "small").read_bytes() == b"small file\n"
        s2 = stats(mnt)
        assert s2["passthrough_opens"] == s1["passthrough_opens"], s2
        assert s2["opens"] == s1["opens"] + 3
        assert s2["read_requests"] == s1["read_requests"] + 1, s2      # then page cache
        with open(mnt / "small", "rb") as a:        # a cached open, then another one
            with open(mnt / "small", "rb") as b:
                assert a.read() == b.read() == b"small file\n"
        for _ in range(2):
            assert (mnt / "big").read_bytes() == data
        s3 = stats(mnt)
        assert s3["passthrough_opens"] == s2["passthrough_opens"] + 2, s3
        with open(mnt / "small", "rb") as held:     # a cached open follows a copy-up,
            with open(mnt / "small", "ab") as f:    # as on the kernel overlay
                f.write(b"more\n")
            assert held.read() == b"small file\nmore\n"
        assert (mnt / "small").read_bytes() == b"small file\nmore\n"
    assert (lower / "small").read_bytes() == b"small file\n"
    (upper / "small").unlink()
    with mount(mnt, [lower], upper, work, "passthrough=on,passthrough_cache=0"):
        s0 = stats(mnt)
        for _ in range(3):
            assert (mnt / "small").read_bytes() == b"small file\n"
        s1 = stats(mnt)
        assert s1["passthrough_opens"] == s0["passthrough_opens"] + 3, s1
        assert s1["read_requests"] == s0["read_requests"], s1
    r = subprocess.run([union.impl_bin(), "-o", f"lowerdir={lower},passthrough_cache=big",
                        str(mnt)], capture_output=True, text=True)
    assert r.returncode != 0 and "passthrough_cache='big'" in r.stderr, r.stderr


def test_writes_do_not_ask_for_the_capability(tdir):
    """With passthrough the daemon clears set-id bits itself (FUSE_HANDLE_KILLPRIV_V2), so
    the kernel remembers that a file has no privileges to drop: many write() calls to a
    copied-up file cost no GETXATTR of security.capability each (without it they cost one
    each).  That the bits are still cleared as the kernel overlay clears them is
    test_killpriv.py's job; here a set-uid file written by a user loses its bit while a
    plain file written over and over keeps the count flat."""
    if not kernel_has_passthrough():
        pytest.skip("kernel without FUSE passthrough")
    lower, upper, work, mnt, data = stack(tdir)
    (lower / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(lower / "suid", 0o4777)
    with mount(mnt, [lower], upper, work, "passthrough=on,allow_other,suid"):
        assert stats(mnt)["killpriv"] == "on"
        with open(mnt / "big", "r+b", buffering=0) as f:     # copy-up, then writes
            f.write(b"w")
            s0 = stats(mnt)
            for i in range(64):
                f.seek(i * 4096)
                f.write(b"w" * 4096)
            s1 = stats(mnt)
        assert s1["write_requests"] == s0["write_requests"], s1
        assert s1["getxattr_requests"] - s0["getxattr_requests"] <= 1, (s0, s1)
        assert (mnt / "big").read_bytes()[:64 * 4096] == b"w" * (64 * 4096)
        r = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                            "sh", "-c", f"printf x >> {mnt / 'suid'}"], capture_output=True)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(mnt / "suid").st_mode) == 0o777
    assert stat.S_IMODE(os.stat(upper / "suid").st_mode) == 0o777
    with mount(mnt, [lower], upper, work, "passthrough=off"):
        assert stats(mnt)["killpriv"] == "off"


def test_off_goes_through_the_daemon(tdir):
    lower, upper, work, mnt, data = stack(tdir)
    with mount(mnt, [lower], upper, work, "passthrough=off"):
        s0 = stats(mnt)
        assert s0["passthrough"] == "off"
        assert (mnt / "big").read_bytes() == data
        assert stats(mnt)["read_requests"] > s0["read_requests"]


def test_image_layer_files_are_not_passed_through(tdir):
    if not kernel_has_passthrough():
        pytest.skip("kernel without FUSE passthrough")
    lower, upper, work, mnt, data = stack(tdir)
    img = tdir / "layer.sqfs"
    union.run(["mksquashfs", str(lower), str(img), "-quiet", "-noappend", "-comp", "lz4"])
    dirl = tdir / "dirlayer"
    dirl.mkdir()
    (dirl / "ondir").write_bytes(b"d" * MiB)
    with mount(mnt, [dirl, img], None, None, "passthrough=auto"):   # read-only: lower files pass through
        s0 = stats(mnt)
        assert s0["passthrough"] == "on"
        assert (mnt / "big").read_bytes() == data     # from the image: decompressed by us
        s1 = stats(mnt)
        assert s1["read_requests"] > s0["read_requests"]
        assert s1["passthrough_opens"] == s0["passthrough_opens"]
        assert (mnt / "ondir").read_bytes() == b"d" * MiB      # from the directory layer
        s2 = stats(mnt)
        assert s2["read_requests"] == s1["read_requests"]
        assert s2["passthrough_opens"] == s1["passthrough_opens"] + 1


def test_rootless_falls_back_and_on_fails_clearly(tdir):
    lower, upper, work, mnt, data = stack(tdir, size=MiB)
    impl = union.impl_bin()
    script = f"""
set -e
{impl} -o lowerdir={lower},upperdir={upper},workdir={work} {mnt}
getfattr --only-values -n user.stratafs.stats {mnt} | grep -x passthrough=off
cmp {lower}/big {mnt}/big
fusermount3 -u {mnt}
if {impl} -o lowerdir={lower},upperdir={upper},workdir={work},passthrough=on {mnt} 2>err; then
    fusermount3 -u {mnt}; echo "passthrough=on mounted rootless"; exit 1
fi
grep -q "passthrough=on" err
"""
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=tdir,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mixed_use_integrity(tdir):
    """Writes through passthrough, read back through mmap, an uncached open beside a
    passthrough one (a write open after copy-up while the lower file is open), concurrent
    readers and a writer; then remount without passthrough and compare."""
    lower, upper, work, mnt, data = stack(tdir, size=8 * MiB, seed=7)
    expect = bytearray(data)
    with mount(mnt, [lower], upper, work):
        with open(mnt / "big", "r+b") as rw:          # copy-up, passthrough on the upper
            rw.seek(MiB)
            rw.write(b"A" * MiB)
            expect[MiB:2 * MiB] = b"A" * MiB
            rw.flush()
            os.fsync(rw.fileno())
            with open(mnt / "big", "rb") as ro:       # a second open: same backing file
                assert ro.read(2 * MiB) == bytes(expect[:2 * MiB])
        rng = random.Random(3)
        with open(mnt / "big", "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
            assert m[MiB:MiB + 4] == b"AAAA"
            m[0:4] = b"MMAP"
            expect[0:4] = b"MMAP"
            m.flush()
            m.close()
        stop = threading.Event()
        errors = []

        def reader():
            while not stop.is_set():
                try:
                    with open(mnt / "big", "rb") as r:
                        if len(r.read()) != len(expect):
                            errors.append("short read")
                except OSError as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        with open(mnt / "big", "r+b") as w:
            for _ in range(200):
                off = rng.randrange(0, len(expect) - 4096)
                blob = rng.randbytes(4096)
                w.seek(off)
                w.write(blob)
                expect[off:off + 4096] = blob
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        # O_DIRECT and truncate while open
        fd = os.open(mnt / "big", os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        buf.write(b"D" * 4096)
        os.pwrite(fd, buf, 4096 * 10)
        expect[4096 * 10:4096 * 11] = b"D" * 4096
        os.close(fd)
        with open(mnt / "big", "r+b") as f:
            f.truncate(7 * MiB)
            del expect[7 * MiB:]
            assert os.fstat(f.fileno()).st_size == 7 * MiB
        assert os.stat(mnt / "big").st_size == 7 * MiB
        assert hashlib.sha256((mnt / "big").read_bytes()).digest() == \
            hashlib.sha256(expect).digest()
    with mount(mnt, [lower], upper, work, "passthrough=off"):
        assert (mnt / "big").read_bytes() == bytes(expect)


def test_backing_files_are_released(tdir):
    if not kernel_has_passthrough():
        pytest.skip("kernel without FUSE passthrough")
    lower, upper, work, mnt, data = stack(tdir, size=MiB)
    with mount(mnt, [lower], upper, work, "passthrough=auto"):
        (mnt / "up").write_bytes(b"an upper file")
        fds = [os.open(mnt / "up", os.O_RDONLY) for _ in range(50)]
        s = stats(mnt)
        assert s["backing_files_open"] == 1          # one backing file per inode
        for fd in fds:
            os.close(fd)
        for i in range(500):
            with open(mnt / "up", "rb") as f:
                f.read()
            with open(mnt / f"f{i % 7}", "ab") as f:
                f.write(b"x")
        s = backing_released(mnt)
        assert s["backing_files_open"] == 0, s
        assert s["passthrough_opens"] >= 1000


def test_write_open_while_lower_open_readonly(tdir):
    """A lower file open read-only while another open copies it up and writes.  With
    passthrough_lower=0 or passthrough off, the read-only fd then reads the copy (as the
    kernel overlay's files do since 4.19).  With lower files passed through (the default
    as root) the old fd keeps reading the lower file, as on fuse-overlayfs: the copy is a
    new inode, which the writer, every later open and stat() see.  Either way the writer
    never fails and the lower layer is never written."""
    lower, upper, work, mnt, data = stack(tdir, size=MiB)
    modes = [("passthrough=auto,passthrough_lower=0", True), ("passthrough=off", True)]
    if kernel_has_passthrough():
        modes.append(("passthrough=on", False))
    for opt, follows in modes:
        for p in upper.iterdir():
            p.unlink()
        with mount(mnt, [lower], upper, work, opt):
            with open(mnt / "big", "rb", buffering=0) as ro:
                assert ro.read(1) == data[:1]
                ino = os.fstat(ro.fileno()).st_ino
                with open(mnt / "big", "r+b") as rw:
                    rw.write(b"W")
                    rw.flush()
                    with open(mnt / "big", "rb") as ro2:
                        assert ro2.read(2) == b"W" + data[1:2]
                    os.truncate(mnt / "big", MiB - 10)        # a path call on the copy
                    assert os.stat(mnt / "big").st_size == MiB - 10
                    assert os.stat(mnt / "big").st_ino == ino  # one st_ino throughout
                ro.seek(0)
                assert ro.read(2) == (b"W" + data[1:2] if follows else data[:2]), opt
                assert os.fstat(ro.fileno()).st_size == (MiB - 10 if follows else MiB), opt
                with open(f"/proc/self/fd/{ro.fileno()}", "rb") as again:
                    assert again.read(1) == (b"W" if follows else data[:1]), opt
            assert (mnt / "big").read_bytes() == b"W" + data[1:MiB - 10], opt
            s = stats(mnt)
            if not follows:
                assert s["passthrough_opens"] >= 4, s
                assert backing_released(mnt)["backing_files_open"] == 0
        assert (lower / "big").read_bytes() == data, opt
        assert (upper / "big").read_bytes() == b"W" + data[1:MiB - 10], opt


def test_copy_up_under_concurrent_readers(tdir):
    """Readers keep opening lower files (passed through, pinning them) while a writer opens
    each for writing, truncates one by path and chmods another: no call fails (no
    ETXTBSY, no ESTALE reaches the caller), every later open sees the writes, the lower
    layer is untouched and no backing file is left registered."""
    lower, upper, work, mnt, data = stack(tdir, size=256 << 10, seed=5)
    names = [f"f{i}" for i in range(12)]
    for n in names:
        (lower / n).write_bytes(data)
    with mount(mnt, [lower], upper, work):
        stop = threading.Event()
        errors = []

        def reader(k):
            rng = random.Random(k)
            while not stop.is_set():
                try:
                    with open(mnt / rng.choice(names), "rb") as r:
                        r.read(4096)
                        time.sleep(0.001)
                        os.fstat(r.fileno())
                except OSError as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        try:
            for i, n in enumerate(names):
                if i % 3 == 0:
                    os.truncate(mnt / n, 1000)
                elif i % 3 == 1:
                    os.chmod(mnt / n, 0o600)
                with open(mnt / n, "r+b") as w:
                    w.write(n.encode())
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        for i, n in enumerate(names):
            body = data[:1000] if i % 3 == 0 else data
            assert (mnt / n).read_bytes() == n.encode() + body[len(n):], n
            if i % 3 == 1:
                assert os.stat(mnt / n).st_mode & 0o777 == 0o600
        assert backing_released(mnt)["backing_files_open"] == 0
    for n in names:
        assert (lower / n).read_bytes() == data
