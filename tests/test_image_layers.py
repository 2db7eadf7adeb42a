"""SquashFS images as layers: strata's in-process reader against the kernel's squashfs.

  * reader: every mksquashfs variant (each compressor, -no-fragments,
    -always-use-fragments, -tailends, -no-xattrs, uncompressed, no export table, a big
    directory with a directory index, sparse files, hard links, devices, fifos, sockets,
    long symlinks, xattrs with shared out-of-line values) walked by build/sqfs-dump and by
    the kernel's mount of the same image: names, types, modes, owners, mtimes, sizes,
    contents, targets, xattrs, link counts and devices must be equal.
  * stratafs with images as lower layers: the merged view equals the kernel's mount of the
    image, or the kernel's overlayfs over kernel squashfs mounts for stacks (dir over image
    over dir, two images, whiteouts and opaque dirs stored inside images, OCI .wh. forms).
  * copy-up from an image into the upper dir keeps data, xattrs, modes and times (compared
    with the kernel overlay doing the same over the kernel's squashfs mount).
  * truncated and bit-flipped images: the mount fails with a message, or reads fail with
    EIO; the daemon keeps serving and nothing crashes (the reader alone: sqfs-dump).

stratafs tests skip only while build/stratafs does not exist.
"""

import contextlib
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import _sqfs
import union
from union import E

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (kernel mounts)")

STRATAFS = union.build_dir() / "stratafs"
need_stratafs = pytest.mark.skipif(not os.access(STRATAFS, os.X_OK),
                                   reason="build/stratafs not built yet")

BIG_XATTR = b"v" * 3000      # the same value on several inodes: stored out of line
KiB, MiB = 1 << 10, 1 << 20


def feature_entries(big_dir=3000):
    """A tree with every kind of inode and data layout mksquashfs writes."""
    rnd = random.Random(4)
    ents = [
        E("small.txt", data=b"hello\n", mode=0o4755, xattrs={"user.small": b"hi"}),
        E("empty"),
        E("rand300k", data=rnd.randbytes(300 * KiB), xattrs={"user.big": BIG_XATTR}),
        E("text1m", data=b"compressible line of text\n" * 40000,
          xattrs={"user.big": BIG_XATTR, "security.sec": b"label"}),
        E("exact", data=rnd.randbytes(256 * KiB)),          # whole blocks, no tail
        E("sparse", sparse=[(5 * MiB, b"data")], size=10 * MiB),
        E("sparse_head", sparse=[(0, b"head")], size=3 * MiB),
        E("hl_a", data=b"linked\n", uid=1234, gid=5678),
        E("hl_b", "h", target="hl_a"), E("sub/hl_c", "h", target="hl_a"),
        E("sl", "l", target="small.txt"), E("longsl", "l", target="x" * 4000),
        E("broken", "l", target="no/where"),
        E("chr", "c", rdev=(5, 7)), E("blk", "b", rdev=(259, 70000)),
        E("fifo", "p", mode=0o640), E("sock", "s"),
        E("d1/d2/d3", "d", mode=0o711, uid=1, gid=2),
        E("d1", "d", xattrs={"user.dir": b"x", "user.big": BIG_XATTR}),
        E("d1/tiny", data=b"tiny\n"),
    ]
    for i in range(big_dir):
        ents.append(E(f"big/entry_with_a_longish_name_{i:05d}", data=b"%d\n" % i))
    for i in range(40):
        ents.append(E(f"frags/f{i}", data=rnd.randbytes(rnd.randrange(1, 9000))))
    return ents


VARIANTS = {
    "gzip": ["-comp", "gzip"],
    "lz4": ["-comp", "lz4", "-Xhc"],
    "zstd": ["-comp", "zstd"],
    "xz": ["-comp", "xz"],
    "lzo": ["-comp", "lzo"],
    "no-fragments": ["-no-fragments"],
    "always-fragments": ["-always-use-fragments"],
    "tailends-4k": ["-tailends", "-b", "4096", "-comp", "lz4"],
    "no-xattrs": ["-no-xattrs"],
    "uncompressed": ["-noI", "-noD", "-noF", "-noX"],
    "no-exports": ["-no-exports", "-b", "1M"],
}


@pytest.fixture(scope="module")
def workspace():
    d = Path(tempfile.mkdtemp(prefix="strata-img-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    union.cleanup_tree(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def feature_src(workspace):
    src = workspace / "src"
    union.build_layer(src, feature_entries())
    return src


_images = {}


def image_for(workspace, src, variant):
    key = (str(src), variant)
    if key not in _images:
        out = workspace / f"{variant}.sqfs"
        _sqfs.mksquashfs(str(src), str(out), *VARIANTS[variant])
        _images[key] = out
    return _images[key]


# ---------------------------------------------------------------------------------------
# the reader alone

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reader_matches_kernel(workspace, feature_src, variant):
    img = image_for(workspace, feature_src, variant)
    ours = _sqfs.dump_image(str(img))
    with _sqfs.kernel_mount(img, workspace / f"k-{variant}") as k:
        theirs = _sqfs.manifest(k)
    assert len(ours) == len(theirs)
    diff = [f"  kernel: {a[:200]}\n  strata: {b[:200]}" for a, b in zip(theirs, ours) if a != b]
    assert not diff, "reader differs from the kernel:\n" + "\n".join(diff[:20])


@pytest.mark.parametrize("variant", ["zstd", "tailends-4k"])
def test_reader_threads_agree(workspace, feature_src, variant):
    """Four threads walk and read one reader at once with caches far smaller than the
    image (constant eviction); every thread must see exactly what a single walk sees.
    (Build sqfs-dump with -fsanitize=thread to look for races.)"""
    img = image_for(workspace, feature_src, variant)
    one = subprocess.run([_sqfs.tool("sqfs-dump"), str(img)], capture_output=True, check=True)
    many = subprocess.run([_sqfs.tool("sqfs-dump"), "-j", "4", str(img)], capture_output=True)
    assert many.returncode == 0, many.stderr.decode(errors="replace")[-2000:]
    assert many.stdout == one.stdout


def test_reader_reads_legacy_lzma(workspace, feature_src):
    """-comp lzma images cannot be mounted by the kernel; the same tree compressed with
    gzip (checked against the kernel above) must read back identically."""
    img = workspace / "lzma.sqfs"
    _sqfs.mksquashfs(str(feature_src), str(img), "-comp", "lzma")
    assert _sqfs.dump_image(str(img)) == \
        _sqfs.dump_image(str(image_for(workspace, feature_src, "gzip")))


@pytest.mark.slow
def test_reader_file_over_4gib(workspace):
    """A sparse 5 GiB file (extended inode, 64-bit sizes, 40960 block-list entries)."""
    src = workspace / "huge-src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.seek(4 * 1024 * MiB + 12345)
        f.write(b"tail of a huge file")
        f.truncate(5 * 1024 * MiB)
    img = _sqfs.mksquashfs(str(src), str(workspace / "huge.sqfs"), "-comp", "lz4")
    ours = _sqfs.dump_image(img)
    with _sqfs.kernel_mount(img, workspace / "k-huge") as k:
        assert ours == _sqfs.manifest(k)


MKIMAGE = union.build_dir() / "mkimage"


@pytest.mark.skipif(not os.access(MKIMAGE, os.X_OK), reason="build/mkimage not built yet")
@pytest.mark.parametrize("comp", ["lz4", "zstd", "gzip", "xz", "none"])
def test_reader_reads_mkimage_output(workspace, feature_src, comp):
    """The same reader serves images strata writes itself."""
    img = workspace / f"mkimage-{comp}.sqfs"
    subprocess.run([str(MKIMAGE), "squash", "-q", "--comp", comp, "-j", "2", "-o", str(img),
                    str(feature_src)], check=True)
    ours = _sqfs.dump_image(str(img))
    with _sqfs.kernel_mount(img, workspace / f"km-{comp}") as k:
        theirs = _sqfs.manifest(k)
    diff = [f"  kernel: {a[:200]}\n  strata: {b[:200]}" for a, b in zip(theirs, ours) if a != b]
    assert len(ours) == len(theirs) and not diff, \
        "reader differs from the kernel:\n" + "\n".join(diff[:20])


def test_reader_rejects_bad_superblocks(workspace, feature_src):
    img = image_for(workspace, feature_src, "gzip")
    data = img.read_bytes()
    cases = {
        "short": data[:50],
        "magic": b"hsqx" + data[4:],
        "version": data[:28] + b"\x03\x00" + data[30:],
        "truncated": data[:len(data) // 2],
        "blocksize": data[:12] + (3000).to_bytes(4, "little") + data[16:],
        "compressor": data[:20] + (9).to_bytes(2, "little") + data[22:],
    }
    for name, blob in cases.items():
        bad = workspace / f"bad-{name}.sqfs"
        bad.write_bytes(blob)
        r = subprocess.run([_sqfs.tool("sqfs-dump"), str(bad)], capture_output=True, text=True)
        assert r.returncode == 2, f"{name}: exit {r.returncode}: {r.stderr}"
        assert r.stderr.strip(), f"{name}: no message"


# Sanitizer reports (SAN build) must not hide among the tool's own exit codes 1 and 2.
SAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=86",
               UBSAN_OPTIONS="halt_on_error=1:exitcode=86")


def flip_bytes(data, rnd, n, lo=96):
    b = bytearray(data)
    for _ in range(n):
        i = rnd.randrange(lo, len(b))
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def test_reader_survives_bit_flips(workspace):
    """Every seed image of the fuzz corpus with random flips: sqfs-dump exits 0, 1 or 2,
    never by a signal (run the SAN build to also catch memory errors)."""
    corpus = Path(_sqfs.REPO) / "tests" / "fuzz" / "corpus"
    rnd = random.Random(1234)
    for seed in sorted(corpus.glob("*.sqfs")):
        data = seed.read_bytes()
        for i in range(15):
            bad = workspace / "flip.sqfs"
            bad.write_bytes(flip_bytes(data, rnd, rnd.randrange(1, 6)))
            r = subprocess.run([_sqfs.tool("sqfs-dump"), str(bad)], capture_output=True,
                               timeout=60, env=SAN_ENV)
            assert r.returncode in (0, 1, 2) and b"Sanitizer" not in r.stderr and \
                b"runtime error" not in r.stderr, \
                f"{seed.name} flip #{i}: exit {r.returncode}: {r.stderr[-1500:]!r}"


# ---------------------------------------------------------------------------------------
# stratafs over images

@contextlib.contextmanager
def stratafs(mnt, lowers, upper=None, work=None, opts=()):
    os.makedirs(mnt, exist_ok=True)
    with union.FuseMount(mnt, lowers, upper, work, ["allow_other"] + list(opts),
                         binary=str(STRATAFS)) as m:
        yield m


def kernel_quirks(snap):
    """The kernel's squashfs answers listxattr with EOPNOTSUPP on images that have no
    xattr table (for everything but devices, fifos and sockets); strata lists nothing,
    which is what such a file has.  Forgive exactly that."""
    out = {}
    for k, v in snap.items():
        if v.get("xattrs") == {"<listxattr>": "ENOTSUP"}:
            v = {f: x for f, x in v.items() if f != "xattrs"}
        out[k] = v
    return out


def assert_same(kernel_snap, impl_snap, what):
    d = union.diff_snapshots(kernel_quirks(kernel_snap), impl_snap)
    assert not d, f"{what}:\n{d}"


@need_stratafs
@pytest.mark.parametrize("variant", ["gzip", "lz4", "zstd", "xz", "lzo", "no-fragments",
                                     "always-fragments", "tailends-4k", "no-xattrs"])
def test_stratafs_image_equals_kernel(workspace, feature_src, tdir, variant):
    img = image_for(workspace, feature_src, variant)
    with _sqfs.kernel_mount(img, tdir / "k") as k:
        ksnap = union.snapshot(k)
    with stratafs(tdir / "m", [img]) as m:
        isnap = union.snapshot(m.path())
        assert os.statvfs(m.path()).f_namemax >= 255
    assert_same(ksnap, isnap, f"stratafs over {variant} image vs the kernel's squashfs")


def stack_layers():
    top = [
        E("a", data=b"top a\n"),
        E("dirA/x", data=b"x\n"),
        E("dirA/gone", "w", form="char"),
        E("dirA/gone2", "w", form="wh"),
        E("wh_top", "w", form="char"),
        E("opq", "d", opaque="xattr"), E("opq/vis", data=b"vis\n"),
        E("opqw", "d", opaque="wh"), E("opqw/vis", data=b"vis\n"),
    ]
    mid = [
        E("a", data=b"mid a\n"), E("b", data=b"mid b\n", mode=0o640, uid=7, gid=8),
        E("dirA/gone", data=b"gone\n"), E("dirA/gone2", data=b"gone\n"),
        E("dirA/keep", data=b"keep\n", xattrs={"user.k": b"1"}),
        E("wh_top", data=b"hidden\n"),
        E("opq/hidden", data=b"h\n"), E("opqw/hidden", data=b"h\n"),
        E("hl1", data=b"hard\n"), E("hl2", "h", target="hl1"),
        E("mid_dir", "d", opaque="xattr"), E("mid_dir/m", data=b"m\n"),
        E("mid_wh", "w", form="wh"),
        E("big", data=random.Random(3).randbytes(700 * KiB)),
    ]
    bottom = [
        E("a", data=b"bottom a\n"), E("c", data=b"bottom c\n"),
        E("dirA/bottom", data=b"b\n"), E("opq/deep", data=b"d\n"),
        E("mid_dir/lost", data=b"lost\n"), E("mid_wh", data=b"gone\n"),
        E("sl", "l", target="c"), E("dev", "c", rdev=(1, 3)),
    ]
    return [top, mid, bottom]


def run_stack(tdir, as_image, opts=()):
    """The stack built twice: kernel form for the kernel (its overlay over kernel squashfs
    mounts where a layer is an image) and mixed forms for stratafs (over the image files).
    Returns (kernel snapshot, stratafs snapshot)."""
    layers = stack_layers()
    side = {}
    for kind in ("kernel", "impl"):
        base = tdir / kind
        lowers = []
        with contextlib.ExitStack() as stack:
            for i, ents in enumerate(layers):
                d = base / f"l{i}"
                union.build_layer(d, ents, kernel_form=(kind == "kernel"), layer_index=i)
                if as_image[i]:
                    img = _sqfs.mksquashfs(str(d), str(base / f"l{i}.sqfs"))
                    if kind == "kernel":
                        d = stack.enter_context(_sqfs.kernel_mount(img, base / f"k{i}"))
                    else:
                        d = img
                lowers.append(Path(d))
            mnt = base / "mnt"
            mnt.mkdir()
            if kind == "kernel":
                # xino=on: without it the kernel shows colliding inode numbers of
                # different squashfs mounts, which look like hard links
                with union.KernelMount(mnt, lowers, opts=["index=off", "xino=on"]):
                    side[kind] = union.snapshot(mnt)
            else:
                with stratafs(mnt, lowers, opts=opts):
                    side[kind] = union.snapshot(mnt)
    return side["kernel"], side["impl"]


@need_stratafs
@pytest.mark.parametrize("as_image", [(False, True, False), (True, True, False),
                                      (True, True, True), (True, False, True)],
                         ids=["dir-img-dir", "img-img-dir", "img-img-img", "img-dir-img"])
def test_mixed_stacks_equal_kernel_overlay(tdir, as_image):
    k, i = run_stack(tdir, as_image)
    assert_same(k, i, f"stack {as_image} (True = image)")


@need_stratafs
def test_small_image_cache(tdir):
    """A tiny cache bound still serves correct data (constant eviction), from many
    threads at once."""
    k, i = run_stack(tdir, (True, True, True), opts=["image_cache=64K"])
    assert_same(k, i, "image_cache=64K")


@need_stratafs
def test_bad_image_cache_value_is_refused(workspace, feature_src, tdir):
    img = image_for(workspace, feature_src, "lz4")
    with pytest.raises(union.MountError) as ei:
        with stratafs(tdir / "m", [img], opts=["image_cache=lots"]):
            pass
    assert "image_cache" in str(ei.value)


@need_stratafs
def test_parallel_reads(workspace, feature_src, tdir):
    img = image_for(workspace, feature_src, "zstd")
    with _sqfs.kernel_mount(img, tdir / "k") as k:
        want = {p: union.file_hash(os.path.join(k, p))
                for p in ["rand300k", "text1m", "sparse", "exact"] +
                [f"frags/f{i}" for i in range(40)]}
    with stratafs(tdir / "m", [img], opts=["image_cache=512K"]) as m:
        errors = []

        def worker(seed):
            rnd = random.Random(seed)
            for _ in range(60):
                p = rnd.choice(sorted(want))
                h = union.file_hash(os.path.join(m.path(), p))
                if h != want[p]:
                    errors.append(p)

        ts = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, f"wrong contents under concurrency: {sorted(set(errors))}"


@need_stratafs
@pytest.mark.rootless
def test_rootless_image_layer_with_copy_up(workspace, feature_src, tdir):
    """In a user namespace (where the kernel's squashfs cannot be mounted): image lower,
    copy-up into an upper dir.  The mount dies with the namespace whatever happens."""
    img = image_for(workspace, feature_src, "zstd")
    for d in ("upper", "work", "m"):
        (tdir / d).mkdir()
    script = f"""
set -e
{STRATAFS} -o lowerdir={img},upperdir={tdir}/upper,workdir={tdir}/work {tdir}/m
trap 'fusermount3 -u {tdir}/m' EXIT
sha256sum {tdir}/m/text1m | cut -d' ' -f1
echo more >> {tdir}/m/small.txt
getfattr --only-values -n user.big {tdir}/m/text1m | sha256sum | cut -d' ' -f1
"""
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text_sha, xattr_sha = r.stdout.split()
    assert text_sha == hashlib.sha256((feature_src / "text1m").read_bytes()).hexdigest()
    assert xattr_sha == hashlib.sha256(BIG_XATTR).hexdigest()
    assert (tdir / "upper" / "small.txt").read_bytes() == b"hello\nmore\n"


# ---------------------------------------------------------------------------------------
# copy-up from an image

def copyup_ops(root):
    log = union.Log(root)
    p = log.p
    log.do("append", lambda: open(p("rand300k"), "ab").write(b"more"))
    log.do("chmod", os.chmod, p("small.txt"), 0o600)
    log.do("chown", os.chown, p("text1m"), 99, 98)
    log.do("setxattr dir", os.setxattr, p("d1"), "user.new", b"n")
    log.do("new in dir", lambda: open(p("d1/d2/new"), "wb").write(b"new\n"))
    log.do("truncate sparse", os.truncate, p("sparse"), 12 * MiB)
    log.do("unlink link", os.unlink, p("hl_b"))
    log.do("rename", os.rename, p("d1/tiny"), p("tiny_moved"))
    log.do("touch", os.utime, p("exact"), (1000000, 2000000))
    log.do("xattrs kept", os.getxattr, p("text1m"), "user.big")
    return log.items


@need_stratafs
def test_copy_up_from_image(tdir):
    src = tdir / "src"
    union.build_layer(src, feature_entries(big_dir=50))
    img = _sqfs.mksquashfs(str(src), str(tdir / "lower.sqfs"))
    side = {}
    for kind in ("kernel", "impl"):
        base = tdir / kind
        upper, work, mnt = base / "upper", base / "work", base / "mnt"
        for d in (upper, work, mnt):
            d.mkdir(parents=True)
        with contextlib.ExitStack() as stack:
            if kind == "kernel":
                lower = stack.enter_context(_sqfs.kernel_mount(img, base / "klower"))
                m = stack.enter_context(union.KernelMount(mnt, [lower], upper, work,
                                                          ["index=off", "redirect_dir=on"]))
            else:
                m = stack.enter_context(stratafs(mnt, [img], upper, work))
            log = copyup_ops(m.path())
            merged = union.snapshot(m.path())
        side[kind] = (log, merged, union.upper_snapshot(upper))
    (klog, km, ku), (ilog, im, iu) = side["kernel"], side["impl"]
    assert klog == ilog
    assert_same(km, im, "merged view after copy-ups")
    assert_same(ku, iu, "upper dir after copy-ups")


def cached_bytes(paths):
    """Bytes of each file in the kernel's page cache (fincore: mincore(2) on a mapping,
    which reads nothing)."""
    out = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES"] + [str(p) for p in paths],
                         check=True, capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def wait_cached(paths, timeout=10.0):
    """Wait until every file is whole in the page cache (the read-ahead thread works at its
    own pace: how fast is for bench/, not for a test); True if they got there."""
    end = time.monotonic() + timeout
    while True:
        if all(c >= os.path.getsize(p) for c, p in zip(cached_bytes(paths), paths)):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


@need_stratafs
def test_small_files_are_read_ahead(tdir):
    """Small files of an image directory read one by one: after a READ the daemon pushes
    the next ones into the kernel's page cache, so far fewer READs than files reach it, and
    the bytes are the image's.  On a writable mount, files written, truncated, appended or
    replaced after the pushes read back what was written -- through the cache, after the
    cache is dropped, and after a remount."""
    rnd = random.Random(9)
    files = {"d/f%03d" % i: rnd.randbytes(rnd.randint(1, 20000)) for i in range(200)}
    src = tdir / "src"
    union.build_layer(src, [E(p, data=d) for p, d in files.items()])
    img = _sqfs.mksquashfs(str(src), str(tdir / "l.sqfs"))
    ro = tdir / "ro"
    with stratafs(ro, [img]):
        os.listdir(ro / "d")
        r0 = union.daemon_stats(ro)["read_requests"]
        assert (ro / "d/f000").read_bytes() == files["d/f000"]      # starts the pushes
        wait_cached([ro / p for p in files])
        for p, d in files.items():
            assert (ro / p).read_bytes() == d, p
        reads = union.daemon_stats(ro)["read_requests"] - r0
        assert reads < len(files) // 4, reads

    upper, work, mnt = tdir / "upper", tdir / "work", tdir / "mnt"
    for d in (upper, work):
        d.mkdir()
    expect = dict(files)

    def check(root):
        for p, d in expect.items():
            assert (root / p).read_bytes() == d, p

    with stratafs(mnt, [img], upper, work):
        os.listdir(mnt / "d")
        assert (mnt / "d/f000").read_bytes() == files["d/f000"]      # starts the pushes
        assert (mnt / "d/f001").read_bytes() == files["d/f001"]
        with open(mnt / "d/f005", "r+b") as f:                        # in place
            f.write(b"XYZ")
        expect["d/f005"] = b"XYZ" + files["d/f005"][3:]
        os.truncate(mnt / "d/f006", 5)                                # no open at all
        expect["d/f006"] = files["d/f006"][:5]
        with open(mnt / "d/f007", "ab") as f:
            f.write(b"tail")
        expect["d/f007"] = files["d/f007"] + b"tail"
        with open(mnt / "d/f008", "wb") as f:                         # O_TRUNC
            f.write(b"new")
        expect["d/f008"] = b"new"
        for i in range(20, 200, 7):             # written before they were ever read
            p = "d/f%03d" % i
            with open(mnt / p, "r+b") as f:
                f.write(b"W" * 4)
            expect[p] = b"W" * 4 + files[p][4:]
        check(mnt)
        union.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
        check(mnt)
    with stratafs(mnt, [img], upper, work):
        check(mnt)


@need_stratafs
def test_listed_dirs_are_read_ahead_while_reading(tdir):
    """Once files are being read, a directory listed next is pushed before any of its
    files is read (a tree read file by file then costs no READ per directory either).  A
    listing with no reads around it pushes nothing: a walk that only stats stays cheap."""
    rnd = random.Random(12)
    files = {"%s/f%03d" % (d, i): rnd.randbytes(rnd.randint(1, 20000))
             for d in ("idle", "a", "next") for i in range(100)}
    src = tdir / "src"
    union.build_layer(src, [E(p, data=d) for p, d in files.items()])
    img = _sqfs.mksquashfs(str(src), str(tdir / "l.sqfs"))
    mnt = tdir / "m"
    idle = [mnt / p for p in files if p.startswith("idle/")]
    nxt = [mnt / p for p in files if p.startswith("next/")]
    with stratafs(mnt, [img]):
        os.listdir(mnt / "idle")
        time.sleep(0.5)
        assert sum(cached_bytes(idle)) == 0
        assert (mnt / "a/f000").read_bytes() == files["a/f000"]
        os.listdir(mnt / "next")
        assert wait_cached(nxt), cached_bytes(nxt)
        r0 = union.daemon_stats(mnt)["read_requests"]
        for p in nxt:
            assert p.read_bytes() == files[str(p.relative_to(mnt))], p
        assert union.daemon_stats(mnt)["read_requests"] == r0
        assert sum(cached_bytes(idle)) == 0


@need_stratafs
def test_image_lookups_in_any_order(tdir):
    """Names looked up in listing order resume where the last lookup in that directory
    stopped; out of order, absent, repeated and indexed (big directory) names must find
    exactly what the kernel's squashfs finds."""
    rnd = random.Random(13)
    names = ["n%05d_%s" % (i, "x" * rnd.randrange(0, 40)) for i in range(3000)]
    ents = [E("big/" + n, data=b"%d" % i) for i, n in enumerate(names)]
    ents += [E("small/%c" % c, data=c.encode() * 3) for c in "acegikmoqsuwy"]
    ents += [E("big/sub%02d" % i, "d") for i in range(0, 100, 7)]
    src = tdir / "src"
    union.build_layer(src, ents)
    img = _sqfs.mksquashfs(str(src), str(tdir / "l.sqfs"))
    probe = [("big", n) for n in names[::37]] + [("small", c) for c in "abcdegxyz"]
    probe += [("big", n + "!") for n in names[100:3000:301]] + [("big", "sub07")]
    orders = [sorted(probe), sorted(probe, reverse=True), rnd.sample(probe, len(probe)),
              sorted(probe + probe)]

    def look(root, order):
        out = []
        for d, n in order:
            try:
                st = os.lstat(os.path.join(root, d, n))
                out.append((d, n, stat.S_IFMT(st.st_mode), st.st_size))
            except FileNotFoundError:
                out.append((d, n, None, None))
        return out

    with _sqfs.kernel_mount(img, tdir / "k") as k:
        want = [look(k, o) for o in orders]
    for o, w in zip(orders, want):                  # a fresh mount: nothing cached
        with stratafs(tdir / "m", [img]) as m:
            assert look(m.path(), o) == w


@need_stratafs
def test_read_ahead_races_with_writers(tdir):
    """Writers change their own image files (in place, truncate, append) while readers read
    every file of the directory, which keeps the read-ahead pushing: every writer reads back
    exactly its own model each time, and everything matches after the cache is dropped."""
    rnd = random.Random(11)
    n_files, writers, seconds = 240, 3, 4.0
    files = {"d%d/f%03d" % (i % 3, i): rnd.randbytes(rnd.randint(1, 30000))
             for i in range(n_files)}
    src = tdir / "src"
    union.build_layer(src, [E(p, data=d) for p, d in files.items()])
    img = _sqfs.mksquashfs(str(src), str(tdir / "l.sqfs"))
    upper, work, mnt = tdir / "upper", tdir / "work", tdir / "mnt"
    for d in (upper, work):
        d.mkdir()
    model = dict(files)
    errors, stop = [], threading.Event()
    names = sorted(files)

    def writer(w):
        r = random.Random(w)
        mine = [p for i, p in enumerate(names) if i % writers == w]
        while not stop.is_set():
            p = r.choice(mine)
            got = (mnt / p).read_bytes()
            if got != model[p]:
                errors.append("%s: read %d bytes, expected %d" % (p, len(got), len(model[p])))
                return
            op = r.randrange(3)
            if op == 0:
                off = r.randrange(len(model[p]) + 1)
                data = r.randbytes(r.randint(1, 3000))
                with open(mnt / p, "r+b") as f:
                    f.seek(off)
                    f.write(data)
                old = model[p]
                model[p] = old[:off] + data + old[off + len(data):]
            elif op == 1:
                size = r.randrange(len(model[p]) + 1)
                os.truncate(mnt / p, size)
                model[p] = model[p][:size]
            else:
                with open(mnt / p, "ab") as f:
                    f.write(b"+")
                model[p] += b"+"

    def reader(k):
        r = random.Random(100 + k)
        while not stop.is_set():
            d = "d%d" % r.randrange(3)
            for n in sorted(os.listdir(mnt / d)):
                (mnt / d / n).read_bytes()
            if r.random() < 0.3:
                union.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"])

    with stratafs(mnt, [img], upper, work):
        ts = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        ts += [threading.Thread(target=reader, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in ts:
            t.join()
        assert not errors, errors
        union.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
        for p, d in model.items():
            assert (mnt / p).read_bytes() == d, p


# ---------------------------------------------------------------------------------------
# corrupt images under the daemon

def walk_all(root):
    """Read everything; return the errnos seen (EIO is allowed, the walk goes on)."""
    seen = set()
    for dirpath, dirs, files in os.walk(root, onerror=lambda e: seen.add(e.errno)):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    union.file_hash(p)
                elif stat.S_ISLNK(st.st_mode):
                    os.readlink(p)
                os.listxattr(p, follow_symlinks=False)
            except OSError as e:
                seen.add(e.errno)
    return seen


@need_stratafs
def test_truncated_image_fails_mount_cleanly(workspace, feature_src, tdir):
    img = image_for(workspace, feature_src, "gzip")
    data = img.read_bytes()
    for cut in (40, 4096, len(data) // 2, len(data) - 4097):
        bad = tdir / f"cut{cut}.sqfs"
        bad.write_bytes(data[:cut])
        mnt = tdir / f"m{cut}"
        mnt.mkdir()
        with pytest.raises(union.MountError) as ei:
            with stratafs(mnt, [bad]):
                pass
        assert str(bad) in str(ei.value), f"message does not name the image: {ei.value}"
        assert not union.is_mounted(mnt)


@need_stratafs
def test_bit_flipped_images_give_eio_not_crashes(tdir):
    corpus = Path(_sqfs.REPO) / "tests" / "fuzz" / "corpus"
    rnd = random.Random(99)
    seeds = sorted(corpus.glob("*.sqfs"))
    mounted = 0
    for i in range(24):
        seed = seeds[i % len(seeds)]
        bad = tdir / f"flip{i}.sqfs"
        bad.write_bytes(flip_bytes(seed.read_bytes(), rnd, rnd.randrange(1, 4)))
        mnt = tdir / f"m{i}"
        try:
            m = stratafs(mnt, [bad])
            fm = m.__enter__()
        except union.MountError:
            continue            # a clean refusal is fine
        try:
            mounted += 1
            seen = walk_all(fm.path())
            assert seen <= {errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.ELOOP}, \
                f"{seed.name} flip #{i}: unexpected errors {seen}"
            assert fm.pids and all(union.pid_alive(p) for p in fm.pids), \
                f"{seed.name} flip #{i}: the daemon died"
            os.stat(fm.path())            # still answering
        finally:
            m.__exit__(None, None, None)
    assert mounted > 0
