"""Helpers for the mkimage tests: run build/mkimage, mount images with the kernel (always
unmounted, even when the test fails), extract them with unsquashfs, and generate trees that
hold every file type and attribute SquashFS can store."""
import contextlib
import os
import random
from pathlib import Path

import union

KiB = 1024
MiB = 1024 * KiB


def mkimage_bin():
    return str(union.build_dir() / "mkimage")


def mkimage(*args, check=True, env=None, timeout=300, prefix=()):
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    e.pop("SOURCE_DATE_EPOCH", None)
    if env:
        e.update(env)
    return union.run(list(prefix) + [mkimage_bin()] + [str(a) for a in args], check=check,
                     env=e, timeout=timeout)


def squash(out, *layers, opts=(), **kw):
    return mkimage("squash", "-o", out, *opts, *layers, **kw)


@contextlib.contextmanager
def kmount(image, mnt):
    """The kernel's read-only squashfs mount of image at mnt."""
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    union.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(mnt)])
    try:
        yield mnt
    finally:
        union.force_unmount(mnt)


@contextlib.contextmanager
def overlay(lowers, mnt):
    """The kernel overlay's read-only merged view of lowers (top first), no upper."""
    m = union.KernelMount(mnt, lowers)
    Path(mnt).mkdir(parents=True, exist_ok=True)
    with m:
        yield Path(mnt)


def unsquashfs(image, dest):
    union.run(["unsquashfs", "-no-progress", "-d", str(dest), str(image)])
    return Path(dest)


def view(root, links=True, nlink=True):
    """Snapshot of a tree for comparison.  The root's own times and the dirs' st_size
    differ by filesystem, so they are left out, and times are compared in seconds; nlink optional (overlay reports a lower
    inode's count even when some of its names are hidden)."""
    s = union.snapshot(root, links=links)
    s["."].pop("mtime", None)
    for e in s.values():
        if isinstance(e.get("mtime"), int):
            e["mtime"] //= 10**9    # SquashFS keeps whole seconds
        if e.get("xattrs") == {"<listxattr>": "ENOTSUP"}:
            del e["xattrs"]         # an image without an xattr table, like mksquashfs's

    if not nlink:
        s = union.strip(s, "nlink")
    return s


def assert_same(a, b, names=("source", "image")):
    d = union.diff_snapshots(a, b, names)
    assert not d, "trees differ:\n" + d


# ---------------------------------------------------------------------------------------
# generated trees

def _rand(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def every_kind_entries(seed=1, block=128 * KiB):
    """Entries (union.E) covering every file type and attribute mkimage must carry."""
    rng = random.Random(seed)
    E = union.E
    ents = [
        E("empty", "f", data=b""),
        E("small", "f", data=b"hello\n", mode=0o640, uid=1000, gid=1001),
        E("exact_block", "f", data=_rand(rng, block)),
        E("blocks_and_tail", "f", data=_rand(rng, 3 * block + 777)),
        E("compressible", "f", data=b"abcdefgh" * (block // 2)),
        E("sparse", "f", sparse=[(0, b"head"), (5 * block, b"middle"), (9 * block + 5, b"x")],
          size=12 * block + 3),
        E("all_zero", "f", size=4 * block),
        E("setuid", "f", data=b"#!/bin/sh\n", mode=0o4755),
        E("setgid_dir", "d", mode=0o2775, gid=50),
        E("setgid_dir/f", "f", data=b"in setgid dir"),
        E("sticky", "d", mode=0o1777),
        E("odd_mode", "f", data=b"m", mode=0o7001),
        E("cap", "f", data=b"cap", xattrs={
            "security.capability": bytes.fromhex("0100000200100000000000000000000000000000")}),
        E("xattrs", "f", data=b"x", xattrs={"user.a": b"1", "user.b": b"\0\1\2",
                                            "trusted.t": b"tv", "user.empty": b""}),
        E("xdir", "d", xattrs={"user.dir": b"yes"}),
        E("xdir/link_with_xattr", "l", target="../small"),
        E("link_short", "l", target="small"),
        E("link_dangling", "l", target="does/not/exist"),
        E("link_long", "l", target="x/" * 1500 + "end"),
        E("hard1", "f", data=b"shared inode\n"),
        E("hard2", "h", target="hard1"),
        E("sub/hard3", "h", target="hard1"),
        E("fifo", "p", mode=0o620),
        E("chr", "c", rdev=(4, 64), mode=0o620, gid=5),
        E("chr_bigminor", "c", rdev=(200, 70000)),
        E("blk", "b", rdev=(8, 1), mode=0o660, gid=6),
        E("sock", "s"),
        # extended inodes of every special type (xattrs force them; trusted.* because
        # Linux allows user.* only on files and directories)
        E("x_link", "l", target="small", xattrs={"trusted.l": b"1"}),
        E("x_chr", "c", rdev=(1, 7), xattrs={"trusted.c": b"2"}),
        E("x_blk", "b", rdev=(7, 0), xattrs={"trusted.b": b"3"}),
        E("x_fifo", "p", xattrs={"trusted.p": b"4"}),
        E("x_sock", "s", xattrs={"trusted.s": b"5"}),
        E("deep/a/b/c/d/e/f/g/leaf", "f", data=b"deep"),
        E("emptydir", "d", mode=0o700),
        E("owner", "f", data=b"o", uid=65534, gid=65534),
        E("bigid", "f", data=b"o", uid=4000000000, gid=3000000000),
        E("dup_a", "f", data=b"D" * 1000 + _rand(rng, 300 * KiB)),
        E("sp ace & ünïcödé", "f", data=b"names"),
    ]
    dup = [e for e in ents if e[0] == "dup_a"][0][2]["data"]
    ents.append(E("dup_b", "f", data=dup))
    ents.append(E("many/" + "n" * 255, "f", data=b"longest name"))
    for i in range(300):  # several metadata blocks of directory listing -> index
        ents.append(E(f"many/entry_{i:05d}_" + "z" * 40, "f", data=str(i).encode()))
    return ents


def set_times(root, mtime):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def run_as_nobody(args, **kw):
    """Run mkimage as uid/gid 65534 (for permission errors: root reads everything)."""
    return mkimage(*args, prefix=["setpriv", "--reuid=65534", "--regid=65534",
                                  "--clear-groups"], **kw)
