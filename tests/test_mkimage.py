"""mkimage squash / inspect against independent readers: the kernel's squashfs, unsquashfs,
and, for layer stacks, the kernel overlay's merged view of the same layers."""
import contextlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

import union
from _mkimage import (KiB, MiB, assert_same, every_kind_entries, kmount, mkimage,
                      overlay, run_as_nobody, set_times, squash, unsquashfs, view)

E = union.E


@pytest.fixture(scope="module", autouse=True)
def _need_binary():
    from _mkimage import mkimage_bin
    if not os.access(mkimage_bin(), os.X_OK):
        pytest.fail(f"{mkimage_bin()} not built (make build/mkimage)")


def build(tdir, entries, name="src", index=0):
    root = Path(tdir) / name
    union.build_layer(root, entries, kernel_form=False, layer_index=index)
    return root


def unsquashfs_stat_ok(img):
    for args in (["-s"], ["-stat"]):
        p = subprocess.run(["unsquashfs"] + args + [str(img)], capture_output=True, text=True)
        assert p.returncode == 0, f"unsquashfs {args} rejects {img}: {p.stderr}"
        assert "Found a valid SQUASHFS 4:0 superblock" in p.stdout


# ---------------------------------------------------------------------------------------
# round trip of one directory

def test_every_kind_round_trip_kernel(tdir):
    src = build(tdir, every_kind_entries())
    img = tdir / "out.sqfs"
    squash(img, src)
    unsquashfs_stat_ok(img)
    # the tree exercises all 14 inode types, basic and extended
    types = json.loads(mkimage("inspect", "--json", img).stdout)["inode_types"]
    assert sorted(types) == sorted(
        ["dir", "file", "symlink", "blkdev", "chrdev", "fifo", "socket", "ext_dir",
         "ext_file", "ext_symlink", "ext_blkdev", "ext_chrdev", "ext_fifo", "ext_socket"])
    with kmount(img, tdir / "mnt") as m:
        assert_same(view(src), view(m))
        # hard links are one inode
        assert os.lstat(m / "hard1").st_ino == os.lstat(m / "sub/hard3").st_ino
        assert os.lstat(m / "hard1").st_nlink == 3


def test_every_kind_round_trip_unsquashfs(tdir):
    src = build(tdir, every_kind_entries(seed=2))
    img = tdir / "out.sqfs"
    squash(img, src)
    out = unsquashfs(img, tdir / "x")
    assert_same(view(src), view(out))


def test_sparse_files_are_holes(tdir):
    src = build(tdir, [E("sparse", "f", sparse=[(0, b"a")], size=64 * MiB)])
    img = tdir / "out.sqfs"
    squash(img, src)
    assert img.stat().st_size < 64 * KiB
    with kmount(img, tdir / "mnt") as m:
        with open(m / "sparse", "rb") as f:
            assert f.read(1) == b"a"
            f.seek(40 * MiB)
            assert f.read(4096) == bytes(4096)


def test_huge_sparse_file_beyond_4g(tdir):
    """A 6 GiB file of holes with data at 0 and 5 GiB: the extended inode's 64-bit sizes,
    and holes skipped without reading them."""
    src = tdir / "src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.write(b"start")
        f.seek(5 << 30)
        f.write(b"at5G")
        f.truncate((6 << 30) + 77)
    img = tdir / "out.sqfs"
    squash(img, src)
    assert img.stat().st_size <= 64 * KiB
    with kmount(img, tdir / "mnt") as m:
        assert os.stat(m / "huge").st_size == (6 << 30) + 77
        with open(m / "huge", "rb") as f:
            assert f.read(5) == b"start"
            f.seek(5 << 30)
            assert f.read(4) == b"at5G"
            f.seek((6 << 30) + 70)
            assert f.read() == bytes(7)


@pytest.mark.parametrize("comp,level", [("lz4", None), ("lz4hc", None), ("lz4hc", 4),
                                        ("zstd", None), ("zstd", 3), ("gzip", None),
                                        ("gzip", 1), ("xz", None), ("none", None)])
def test_every_compressor_mounts(tdir, comp, level):
    src = build(tdir, every_kind_entries(seed=3)[:40])
    img = tdir / "out.sqfs"
    opts = ["--comp", comp] + (["--level", str(level)] if level else [])
    squash(img, src, opts=opts)
    unsquashfs_stat_ok(img)
    with kmount(img, tdir / "mnt") as m:
        assert_same(view(src), view(m))


@pytest.mark.parametrize("bs", ["4K", "64K", "1M"])
def test_block_sizes(tdir, bs):
    src = build(tdir, every_kind_entries(seed=4)[:40])
    img = tdir / "out.sqfs"
    squash(img, src, opts=["--block-size", bs, "--comp", "zstd"])
    p = subprocess.run(["unsquashfs", "-s", str(img)], capture_output=True, text=True)
    size = {"4K": 4096, "64K": 65536, "1M": 1048576}[bs]
    assert f"Block size {size}" in p.stdout
    with kmount(img, tdir / "mnt") as m:
        assert_same(view(src), view(m))


def test_big_directory_lookup_and_readdir(tdir):
    ents = [E(f"d/f{i:06d}", "f", data=str(i).encode()) for i in range(6000)]
    src = build(tdir, ents)
    img = tdir / "out.sqfs"
    squash(img, src)
    with kmount(img, tdir / "mnt") as m:
        assert sorted(os.listdir(m / "d")) == sorted(os.listdir(src / "d"))
        for i in (0, 1, 255, 256, 257, 2999, 4444, 5999):  # lookups go through the index
            assert (m / f"d/f{i:06d}").read_bytes() == str(i).encode()
        assert not (m / "d/f999999").exists()
    fm = tdir / "fmnt"
    fm.mkdir()
    union.run(["squashfuse", str(img), str(fm)])      # another reader of the index
    try:
        for i in (0, 256, 3333, 5999):
            assert (fm / f"d/f{i:06d}").read_bytes() == str(i).encode()
        assert len(os.listdir(fm / "d")) == 6000
    finally:
        union.force_unmount(fm)


def test_strata_reader_agrees(tdir):
    """strata's own reader (the image layer backend) sees what the source holds."""
    import _sqfs
    src = build(tdir, every_kind_entries(seed=9))
    img = tdir / "out.sqfs"
    squash(img, src, opts=["--comp", "zstd"])
    assert _sqfs.dump_image(str(img)) == _sqfs.manifest(str(src))


def test_squashfuse_reads_image(tdir):
    src = build(tdir, every_kind_entries(seed=5)[:30])
    img = tdir / "out.sqfs"
    squash(img, src, opts=["--comp", "zstd"])
    mnt = tdir / "fmnt"
    mnt.mkdir()
    union.run(["squashfuse", str(img), str(mnt)])
    try:
        # squashfuse 0.1.105 swaps the trusted./security. prefixes and fails on empty
        # values (with mksquashfs images too), so its xattrs are checked on user.* only
        a = union.strip(view(src), "nlink", "links", "xattrs")
        assert_same(a, union.strip(view(mnt), "nlink", "links", "xattrs"))
        assert os.getxattr(mnt / "xattrs", "user.b") == b"\0\1\2"
    finally:
        union.force_unmount(mnt)


# ---------------------------------------------------------------------------------------
# layer stacks: the image equals the kernel overlay's merged view

STACK = [
    # top
    [E("etc/conf", "f", data=b"top conf"),
     E("gone", "w"),                                  # whiteout of a file
     E("gonedir", "w"),                               # whiteout of a whole directory
     E("opq", "d", opaque=True, mode=0o750),          # opaque: hides lower contents
     E("opq/new", "f", data=b"only this"),
     E("merged/top_only", "f", data=b"t"),
     E("merged/sub/deep_top", "f", data=b"dt"),
     E("file_to_dir", "d"),                           # a dir hiding a lower file
     E("file_to_dir/inside", "f", data=b"i"),
     E("dir_to_file", "f", data=b"now a file"),       # a file hiding a lower dir
     E("hl/a", "f", data=b"hard"), E("hl/b", "h", target="hl/a"),
     E("merged/wh_in_merged", "w"),
     E("xa", "f", data=b"x", xattrs={"user.k": b"v"}),
     E("dev", "c", rdev=(1, 5))],
    # middle
    [E("etc/conf", "f", data=b"middle conf"),
     E("etc/passwd", "f", data=b"root:x:0:0\n", mode=0o644),
     E("gone", "f", data=b"should not show"),
     E("opq/old", "f", data=b"hidden by opaque"),
     E("merged/mid_only", "f", data=b"m"),
     E("merged/wh_in_merged", "f", data=b"hidden"),
     E("merged/sub/deep_mid", "f", data=b"dm"),
     E("revived", "w"),
     E("midlink", "l", target="etc/passwd")],
    # bottom
    [E("etc/conf", "f", data=b"bottom conf"),
     E("etc/shadow", "f", data=b"secret", mode=0o600),
     E("gonedir/x", "f", data=b"x"), E("gonedir/y/z", "f", data=b"z"),
     E("opq/older", "f", data=b"also hidden"),
     E("file_to_dir", "f", data=b"was a file"),
     E("dir_to_file/child", "f", data=b"hidden child"),
     E("merged/bottom_only", "f", data=b"b"),
     E("revived", "f", data=b"whited out in the middle"),
     E("sock", "s"), E("fifo", "p")],
]


def stack(tdir, layers, kernel_form, name):
    lowers, _, _, _ = union.build_stack(tdir / name, layers, kernel_form=kernel_form)
    return lowers


def test_stack_matches_kernel_overlay(tdir):
    lowers = stack(tdir, STACK, True, "k")
    img = tdir / "out.sqfs"
    squash(img, *lowers)
    unsquashfs_stat_ok(img)
    out = unsquashfs(img, tdir / "x")
    with overlay(lowers, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        ov = view(o, nlink=False)
        assert_same(ov, view(m, nlink=False), ("overlay", "kernel squashfs"))
        assert_same(ov, view(out, nlink=False), ("overlay", "unsquashfs"))
    # no whiteouts, no overlay xattrs left in the image itself
    for dirpath, dirnames, filenames in os.walk(out):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), p
            assert not n.startswith(".wh."), p
            assert not any(x.startswith(("trusted.overlay.", "user.overlay."))
                           for x in os.listxattr(p, follow_symlinks=False)), p


@pytest.mark.parametrize("form", ["wh", "user"])
def test_oci_whiteout_forms_match_kernel(tdir, form):
    """.wh.NAME whiteouts, .wh..wh..opq and user.overlay.opaque give the same image as
    the kernel forms the overlay oracle reads."""
    layers = []
    for layer in STACK:
        out = []
        for path, kind, a in layer:
            a = dict(a)
            if kind == "w":
                a["form"] = "wh"
            if a.get("opaque"):
                a["opaque"] = form
            out.append((path, kind, a))
        layers.append(out)
    oci = stack(tdir, layers, False, "oci")
    kern = stack(tdir, STACK, True, "k")
    img = tdir / "out.sqfs"
    squash(img, *oci)
    with overlay(kern, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        assert_same(view(o, nlink=False), view(m, nlink=False), ("overlay", "image"))


def test_image_layers(tdir):
    """A layer can itself be a SquashFS image: [img(top), dir, img(bottom)] flattens to
    the same tree as the directories."""
    lowers = stack(tdir, STACK, True, "k")
    # the bottom layer has no whiteouts of its own, so its image is an exact stand-in
    bottom_img = tdir / "bottom.sqfs"
    squash(bottom_img, lowers[2])
    img_dirs, img_mixed = tdir / "dirs.sqfs", tdir / "mixed.sqfs"
    squash(img_dirs, *lowers)
    squash(img_mixed, lowers[0], lowers[1], bottom_img)
    with kmount(img_dirs, tdir / "m1") as a, kmount(img_mixed, tdir / "m2") as b:
        assert_same(view(a), view(b), ("dirs", "with image layer"))


def test_image_layer_with_whiteouts(tdir):
    """An image made by mksquashfs from a layer directory keeps that layer's whiteouts
    (char 0/0) and opaque xattrs; as the top layer it must hide lower entries exactly as
    the directory does under the kernel overlay."""
    lowers = stack(tdir, STACK, True, "k")
    top = tdir / "top_ms.sqfs"
    union.run(["mksquashfs", str(lowers[0]), str(top), "-noappend", "-quiet", "-no-progress",
               "-xattrs"])
    img = tdir / "out.sqfs"
    squash(img, top, lowers[1], lowers[2])
    with overlay(lowers, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        a, b = view(o, nlink=False), view(m, nlink=False)
        # mksquashfs stores the top layer's root time; the overlay shows it too
        assert_same(a, b, ("overlay", "image"))


# ---------------------------------------------------------------------------------------
# reproducibility, dedup, options

def test_reproducible_across_runs_and_threads(tdir):
    src = build(tdir, every_kind_entries(seed=6))
    imgs = []
    for i, threads in enumerate(["1", "2", "7", "1"]):
        img = tdir / f"r{i}.sqfs"
        squash(img, src, opts=["--threads", threads, "--comp", "zstd", "--level", "3"])
        imgs.append(img.read_bytes())
    assert all(b == imgs[0] for b in imgs)


def test_zstd_default_level(tdir):
    """zstd's default is level 14 (mksquashfs's is 15): plain libzstd level 14, recorded in
    the compressor options, the same bytes at any thread count, and read back by
    unsquashfs; 15 is the one level stored without options."""
    src = build(tdir, every_kind_entries(seed=12))
    imgs = {}
    for name, opts in [("default1", ["--threads", "1"]), ("default2", ["--threads", "2"]),
                       ("l14", ["--threads", "2", "--level", "14"]),
                       ("l15", ["--threads", "2", "--level", "15"])]:
        imgs[name] = tdir / f"{name}.sqfs"
        squash(imgs[name], src, opts=["--comp", "zstd"] + opts)
    data = {k: v.read_bytes() for k, v in imgs.items()}
    assert data["default1"] == data["default2"] == data["l14"]
    assert data["l15"] != data["l14"]

    def stat(img):
        return subprocess.run(["unsquashfs", "-s", str(img)], capture_output=True,
                              text=True, check=True).stdout
    assert "compression-level 14" in stat(imgs["default1"])
    assert "compression-level" not in stat(imgs["l15"])

    def flags(img):
        return json.loads(mkimage("inspect", "--json", img).stdout)["flags"]
    assert "compressor-options" in flags(imgs["default1"])
    assert "compressor-options" not in flags(imgs["l15"])
    assert_same(view(src), view(unsquashfs(imgs["default1"], tdir / "x")))


def test_mtime_and_source_date_epoch(tdir):
    src = build(tdir, every_kind_entries(seed=7)[:20])
    a, b = tdir / "a.sqfs", tdir / "b.sqfs"
    squash(a, src, opts=["--mtime", "1234567890"])
    squash(b, src, env={"SOURCE_DATE_EPOCH": "1234567890"})
    assert a.read_bytes() == b.read_bytes()
    p = subprocess.run(["unsquashfs", "-s", str(a)], capture_output=True, text=True)
    assert "Fri Feb 13 23:31:30 2009" in p.stdout
    with kmount(a, tdir / "mnt") as m:
        for dirpath, dirnames, filenames in os.walk(m):
            for n in dirnames + filenames:
                assert os.lstat(os.path.join(dirpath, n)).st_mtime == 1234567890
    # a touched source changes the image only through its times
    set_times(src, 1500000000)
    c = tdir / "c.sqfs"
    squash(c, src, opts=["--mtime", "1234567890"])
    assert c.read_bytes() == a.read_bytes()


def test_dedup_n_copies_cost_one(tdir):
    blob = os.urandom(3 * MiB + 12345)
    ents = [E(f"copy{i}", "f", data=blob) for i in range(8)]
    ents += [E(f"sub/small{i}", "f", data=b"tail only, deduplicated\n" * 10) for i in range(5)]
    src = build(tdir, ents)
    one = build(tdir, [E("copy0", "f", data=blob)], name="one")
    img, img1 = tdir / "out.sqfs", tdir / "one.sqfs"
    squash(img, src)
    squash(img1, one)
    assert img.stat().st_size < img1.stat().st_size + 64 * KiB
    with kmount(img, tdir / "mnt") as m:
        assert_same(view(src), view(m))


def test_forced_hash_collision_does_not_merge(tdir):
    """With every hash forced equal, files of one size but different bytes stay apart
    (whole files and tails), while true copies are still shared."""
    a, b = os.urandom(300 * KiB), os.urandom(300 * KiB)
    ents = [E("a1", "f", data=a), E("b1", "f", data=b), E("a2", "f", data=a),
            E("b2", "f", data=b), E("t1", "f", data=b"tail-one"), E("t2", "f", data=b"tail-two"),
            E("t3", "f", data=b"tail-one")]
    src = build(tdir, ents)
    img = tdir / "out.sqfs"
    squash(img, src, env={"STRATA_MKIMAGE_FORCE_HASH_COLLISION": "1"})
    with kmount(img, tdir / "mnt") as m:
        assert_same(view(src), view(m))
    ref = tdir / "ref.sqfs"
    squash(ref, src)
    assert abs(img.stat().st_size - ref.stat().st_size) < 8 * KiB


def test_excludes_and_ownership_options(tdir):
    src = build(tdir, [E("keep/a", "f", data=b"a", uid=5, gid=6),
                       E("keep/b.pyc", "f", data=b"b"),
                       E("cache/x", "f", data=b"x"),
                       E("keep/cache/y", "f", data=b"y"),
                       E("x", "f", data=b"x", xattrs={"user.q": b"1"})])
    img = tdir / "out.sqfs"
    squash(img, src, opts=["--exclude", "*.pyc", "-e", "/cache", "--all-root", "--no-xattrs"])
    with kmount(img, tdir / "mnt") as m:
        names = sorted(str(p.relative_to(m)) for p in m.rglob("*"))
        assert names == ["keep", "keep/a", "keep/cache", "keep/cache/y", "x"]
        assert (os.lstat(m / "keep/a").st_uid, os.lstat(m / "keep/a").st_gid) == (0, 0)
        assert os.listxattr(m / "x") == []
    squash(img, src, opts=["--force-uid", "1234", "--force-gid", "4321"])
    with kmount(img, tdir / "mnt") as m:
        st = os.lstat(m / "keep/a")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
        assert os.getxattr(m / "x", "user.q") == b"1"


def test_summary_quiet_and_no_progress_off_tty(tdir):
    src = build(tdir, [E("a", "f", data=b"a" * 5000)])
    p = squash(tdir / "out.sqfs", src)
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and "\r" not in p.stdout
    assert "1 files" in lines[0] and "image" in lines[0]
    p = squash(tdir / "out.sqfs", src, opts=["--quiet"])
    assert p.stdout == "" and p.stderr == ""


# ---------------------------------------------------------------------------------------
# inspect

def test_inspect_text_and_json(tdir):
    blob = os.urandom(200 * KiB)
    src = build(tdir, [E("a", "f", data=blob), E("b", "f", data=blob),
                       E("c", "f", data=b"small", uid=7), E("d", "d")])
    img = tdir / "out.sqfs"
    squash(img, src, opts=["--comp", "zstd", "--block-size", "64K"])
    p = mkimage("inspect", img)
    assert "zstd" in p.stdout and "65536" in p.stdout
    j = json.loads(mkimage("inspect", "--json", img).stdout)
    assert j["compressor"] == "zstd"
    assert j["block_size"] == 65536
    assert j["inodes"] == 5
    assert j["ids"] == 2
    assert j["fragments"] >= 1
    assert j["files"] == 3
    assert j["dedup_saved_bytes"] >= 128 * KiB
    assert j["bytes_used"] <= img.stat().st_size
    bad = tdir / "bad.sqfs"
    bad.write_bytes(b"not an image" * 100)
    p = mkimage("inspect", bad, check=False)
    assert p.returncode == 1 and "bad.sqfs" in p.stderr


# ---------------------------------------------------------------------------------------
# errors: a clear message, exit status 1 (2 for usage), and no OUT left behind

def leftovers(d):
    return sorted(n for n in os.listdir(d) if n.startswith(".out.sqfs.tmp") or n == "out.sqfs")


def test_error_missing_layer(tdir):
    src = build(tdir, [E("a", "f", data=b"a")])
    p = squash(tdir / "out.sqfs", src, tdir / "nope", check=False)
    assert p.returncode == 1
    assert "nope" in p.stderr and "No such file or directory" in p.stderr
    assert leftovers(tdir) == []


def test_error_unreadable_file(tdir):
    src = build(tdir, [E("ok", "f", data=b"fine"), E("secret", "f", data=b"s" * 1000,
                                                       mode=0o000)])
    outdir = tdir / "o"
    outdir.mkdir(mode=0o777)
    os.chmod(outdir, 0o777)
    p = run_as_nobody(["squash", "-o", outdir / "out.sqfs", src], check=False)
    assert p.returncode == 1, p.stderr
    assert "secret" in p.stderr and "Permission denied" in p.stderr
    assert leftovers(outdir) == []


def test_error_path_too_long(tdir):
    src = tdir / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 * 250 bytes > PATH_MAX
            os.mkdir("d" * 249, dir_fd=fd)
            nfd = os.open("d" * 249, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    p = squash(tdir / "out.sqfs", src, check=False)
    assert p.returncode == 1
    assert "too long" in p.stderr
    assert leftovers(tdir) == []


def test_error_disk_full(tdir):
    small = tdir / "small"
    small.mkdir()
    union.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)])
    try:
        src = build(tdir, [E("big", "f", data=os.urandom(3 * MiB))])
        p = squash(small / "out.sqfs", src, check=False)
        assert p.returncode == 1
        assert "No space left on device" in p.stderr and "out.sqfs" in p.stderr
        assert os.listdir(small) == []
    finally:
        union.force_unmount(small)


@pytest.mark.parametrize("args,msg", [
    (["--comp", "brotli"], "compressor"),
    (["--block-size", "3K"], "block size"),
    (["--block-size", "2M"], "block size"),
    (["--level", "99", "--comp", "zstd"], "level"),
    (["--comp", "lz4", "--level", "3"], "level"),
    (["--threads", "0"], "thread"),
])
def test_error_bad_options(tdir, args, msg):
    src = build(tdir, [E("a", "f", data=b"a")])
    p = squash(tdir / "out.sqfs", src, opts=args, check=False)
    assert p.returncode in (1, 2), p
    assert msg in p.stderr
    assert leftovers(tdir) == []


def test_error_usage(tdir):
    p = mkimage("squash", tdir, check=False)
    assert p.returncode == 2 and "-o" in p.stderr
    p = mkimage("frobnicate", check=False)
    assert p.returncode == 2


def test_failed_run_keeps_previous_out(tdir):
    src = build(tdir, [E("a", "f", data=b"a")])
    out = tdir / "out.sqfs"
    squash(out, src)
    before = out.read_bytes()
    p = squash(out, src, tdir / "missing", check=False)
    assert p.returncode == 1
    assert out.read_bytes() == before


def test_killed_run_leaves_nothing(tdir):
    """The image is an unnamed file until it is complete: SIGKILL leaves no trace."""
    src = build(tdir, [E(f"f{i}", "f", data=os.urandom(256 * KiB)) for i in range(64)])
    outdir = tdir / "o"
    outdir.mkdir()
    from _mkimage import mkimage_bin
    p = subprocess.Popen([mkimage_bin(), "squash", "-q", "--comp", "xz", "--threads", "1",
                          "-o", str(outdir / "out.sqfs"), str(src)],
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    try:
        p.wait(timeout=0.3)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        assert os.listdir(outdir) == []


def test_output_inside_a_layer_is_left_out(tdir):
    src = build(tdir, [E("a", "f", data=b"a")])
    squash(src / "out.sqfs", src)
    squash(src / "out.sqfs", src)       # the old image is in the layer now
    with kmount(src / "out.sqfs", tdir / "mnt") as m:
        assert sorted(os.listdir(m)) == ["a"]


def test_progress_bar_on_a_tty(tdir):
    src = build(tdir, [E(f"f{i}", "f", data=os.urandom(64 * KiB)) for i in range(200)])
    from _mkimage import mkimage_bin
    cmd = f"{mkimage_bin()} squash --comp gzip -o {tdir}/out.sqfs {src}"
    p = union.run(["script", "-qec", cmd, "/dev/null"],
                  env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert "files" in p.stdout and "image" in p.stdout   # the summary
    assert "\x1b[K" in p.stdout and "ETA" in p.stdout      # the bar redraws in place
    p = union.run(["script", "-qec", cmd + " --quiet", "/dev/null"],
                  env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert p.stdout.strip() == ""


def random_stack(seed, nlayers=4, nops=40):
    """Seeded random layers (kernel whiteout forms) over a small name space, so names
    collide across layers: files over dirs, dirs over files, whiteouts, opaque dirs."""
    import random
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"]
    layers = []
    for li in range(nlayers):
        kinds = {}
        for _ in range(nops):
            depth = rng.randint(1, 3)
            path = "/".join(rng.choice(names) for _ in range(depth))
            parts = path.split("/")
            if any(kinds.get("/".join(parts[:i]), "d") != "d" for i in range(1, len(parts))):
                continue
            if path in kinds or any(k.startswith(path + "/") for k in kinds):
                continue
            for i in range(1, len(parts)):
                kinds.setdefault("/".join(parts[:i]), "d")
            kinds[path] = rng.choice("ffffddllwwo")
        ents = []
        for path in sorted(kinds, key=lambda p: (p.count("/"), p)):
            k = kinds[path]
            if k == "f":
                ents.append(E(path, "f", data=rng.randbytes(rng.choice([0, 5, 3000, 70000])),
                              mode=rng.choice([0o644, 0o600, 0o4755])))
            elif k == "d":
                ents.append(E(path, "d", mode=rng.choice([0o755, 0o700])))
            elif k == "o":
                ents.append(E(path, "d", opaque=True))
            elif k == "l":
                ents.append(E(path, "l", target=rng.choice(names)))
            else:
                ents.append(E(path, "w"))
        layers.append(ents)
    return layers


@pytest.mark.parametrize("seed", range(int(os.environ.get("MKIMAGE_SEEDS", "12"))))
def test_random_stacks_match_kernel_overlay(tdir, seed):
    layers = random_stack(seed)
    lowers = stack(tdir, layers, True, "k")
    img = tdir / "out.sqfs"
    squash(img, *lowers)
    with overlay(lowers, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        # The kernel reads a directory that only one lower layer has straight from that
        # layer, so a whiteout left in it is listed although lookup says ENOENT: the name
        # does not exist in the merged view, and the image rightly leaves it out.
        ov = {k: v for k, v in view(o, nlink=False).items()
              if v.get("type") != "listed, but lstat: ENOENT"}
        d = union.diff_snapshots(ov, view(m, nlink=False), ("overlay", "image"))
        assert not d, f"seed {seed}: trees differ:\n{d}"


def test_inspect_survives_corrupt_images(tdir):
    """Seeded byte flips and truncations of a real image: inspect reports or rejects,
    never crashes (run under build-san to catch memory errors too)."""
    import random
    src = build(tdir, every_kind_entries(seed=8)[:40])
    img = tdir / "good.sqfs"
    squash(img, src, opts=["--comp", "gzip"])
    good = img.read_bytes()
    rng = random.Random(1234)
    bad = tdir / "bad.sqfs"
    for i in range(150):
        b = bytearray(good)
        if i % 5 == 0:
            b = b[:rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 8)):
                # mostly the superblock and the metadata at the end, where inspect looks
                pos = rng.randrange(96) if rng.random() < 0.3 else \
                    rng.randrange(max(0, len(b) - 8192), len(b))
                b[pos] = rng.randrange(256)
        bad.write_bytes(bytes(b))
        p = mkimage("inspect", "--json", bad, check=False)
        assert p.returncode in (0, 1), f"iteration {i}: exit {p.returncode}\n{p.stderr}"
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr


def test_error_layer_not_an_image(tdir):
    junk = tdir / "junk.tar"
    junk.write_bytes(b"\0" * 4096)
    p = squash(tdir / "out.sqfs", junk, check=False)
    assert p.returncode == 1
    assert "junk.tar" in p.stderr and "neither a directory nor a SquashFS image" in p.stderr
    assert leftovers(tdir) == []


def test_nfs_export_table_file_handles(tdir):
    """The kernel turns file handles back into inodes through the export table: encode a
    handle for files and directories of the mounted image, then open by handle."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    class FH(ctypes.Structure):
        _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                    ("f_handle", ctypes.c_ubyte * 128)]

    src = build(tdir, [E(f"d{i}/f{j}", "f", data=f"{i}-{j}".encode())
                       for i in range(30) for j in range(40)])
    img = tdir / "out.sqfs"
    squash(img, src)
    with kmount(img, tdir / "mnt") as m:
        mfd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel in ["d0/f0", "d17/f23", "d29/f39", "d5", "."]:
                fh = FH(handle_bytes=128)
                mid = ctypes.c_int()
                r = libc.name_to_handle_at(-100, str(m / rel).encode(), ctypes.byref(fh),
                                           ctypes.byref(mid), 0)
                assert r == 0, (rel, os.strerror(ctypes.get_errno()))
                fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
                assert fd >= 0, (rel, os.strerror(ctypes.get_errno()))
                try:
                    assert os.fstat(fd).st_ino == os.lstat(m / rel).st_ino
                    if rel.startswith("d") and "/" in rel:
                        i, j = rel[1:].split("/f")
                        assert os.read(fd, 100) == f"{i}-{j}".encode()
                finally:
                    os.close(fd)
        finally:
            os.close(mfd)


@pytest.mark.parametrize("comp", ["lz4", "xz"])
def test_same_tree_as_mksquashfs_by_sqfsdiff(tdir, comp):
    """squashfs-tools-ng parses both images and finds the same entries, owners, modes,
    times, link targets, device numbers and contents as mksquashfs's image of the tree."""
    src = build(tdir, every_kind_entries(seed=10))
    ours, ref = tdir / "ours.sqfs", tdir / "ref.sqfs"
    squash(ours, src, opts=["--comp", comp])
    union.run(["mksquashfs", str(src), str(ref), "-noappend", "-quiet", "-no-progress",
               "-comp", comp])
    p = union.run(["sqfsdiff", "-T", "-a", str(ref), "-b", str(ours)], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # and sqfs2tar reads every file of ours
    with open(tdir / "out.tar", "wb") as f:
        r = subprocess.run(["sqfs2tar", str(ours)], stdout=f, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr


def test_error_unreadable_directory_among_many(tdir):
    """A walk error in one directory while its siblings' scans are queued or running:
    a clear message, exit 1, nothing left behind, no hang."""
    ents = [E(f"{d}/sub{i}/f", "f", data=b"x" * 100) for d in "abcdefghijklmnopqrstuvwxyz"
            for i in range(5)]
    ents.append(E("m/locked", "d", mode=0o000))
    src = build(tdir, ents)
    outdir = tdir / "o"
    outdir.mkdir()
    os.chmod(outdir, 0o777)
    p = run_as_nobody(["squash", "-o", outdir / "out.sqfs", src], check=False)
    assert p.returncode == 1, p.stderr
    assert "m/locked" in p.stderr and "Permission denied" in p.stderr
    assert os.listdir(outdir) == []


def test_error_output_is_a_directory_or_unwritable(tdir):
    src = build(tdir, [E("a", "f", data=b"a")])
    p = squash(tdir, src, check=False)
    assert p.returncode == 1 and "Is a directory" in p.stderr
    p = squash(tdir / "no/such/dir/out.sqfs", src, check=False)
    assert p.returncode == 1 and "No such file or directory" in p.stderr


def random_files(seed, bs, n=250):
    """Seeded files sized around block boundaries, with copies (whole and tail-equal),
    holes and hard links: the cases where blocks, fragments and dedup meet."""
    import random
    rng = random.Random(seed)
    ents, made = [], []
    for i in range(n):
        path = f"d{rng.randrange(8)}/f{i:04d}"
        r = rng.random()
        if made and r < 0.2:                       # an exact copy of an earlier file
            data = rng.choice(made)
        elif made and r < 0.3:                     # same tail as an earlier file
            base = rng.choice(made)
            data = rng.randbytes(rng.randrange(3) * bs) + base[-(len(base) % bs or 1):]
        else:
            size = rng.choice([0, 1, bs - 1, bs, bs + 1, 3 * bs, 2 * bs + 17,
                               rng.randrange(1, 5 * bs)])
            kind = rng.random()
            if kind < 0.3:
                data = bytes(size)                 # zeros: holes
            elif kind < 0.6:
                data = (b"text %d " % rng.randrange(50)) * (size // 8 + 1)
                data = data[:size]
            else:
                data = rng.randbytes(size)
        made.append(data)
        if rng.random() < 0.1 and ents and ents[-1][1] == "f":
            ents.append(E(path, "h", target=ents[-1][0]))
        else:
            ents.append(E(path, "f", data=data))
    return ents


@pytest.mark.parametrize("seed", range(int(os.environ.get("MKIMAGE_FILE_SEEDS", "4"))))
def test_random_files_round_trip_and_reproducible(tdir, seed):
    bs = [4096, 8192, 65536, 4096][seed % 4]
    src = build(tdir, random_files(seed, bs))
    a, b = tdir / "a.sqfs", tdir / "b.sqfs"
    # odd seeds: every hash collides, so only byte comparison keeps files apart
    env = {"STRATA_MKIMAGE_FORCE_HASH_COLLISION": "1"} if seed % 2 else None
    squash(a, src, opts=["--block-size", str(bs), "--threads", "1", "--comp", "gzip",
                         "--level", "1"], env=env)
    squash(b, src, opts=["--block-size", str(bs), "--threads", "3", "--comp", "gzip",
                         "--level", "1"], env=env)
    assert a.read_bytes() == b.read_bytes()
    with kmount(a, tdir / "mnt") as m:
        assert_same(view(src), view(m))


# ---------------------------------------------------------------------------------------
# redirects (directories renamed with redirect_dir) and what the stack hides

def human(n):
    """mkimage's size format (mk_human)."""
    units, u, x = ["B", "KiB", "MiB", "GiB", "TiB"], 0, float(n)
    while x >= 1024 and u < 4:
        x /= 1024
        u += 1
    return f"{x:.1f} {units[u]}" if u else f"{x:.0f} B"


def summary_hidden(p):
    import re
    m = re.search(r", (\S+ \S+) hidden left out \((\d+) files\), ", p.stdout)
    assert m, f"no hidden count in the summary: {p.stdout!r}"
    return m[1], int(m[2])


def audit_totals(layers):
    p = mkimage("audit", "--json", "--fail-on", "never", *layers)
    return json.loads(p.stdout)["totals"]


def assert_hidden_like_audit(p, layers):
    """The squash summary's hidden count is the audit's (files and dead bytes)."""
    t = audit_totals(layers)
    assert summary_hidden(p) == (human(t["dead_bytes"]), t["hidden_files"]), t


@contextlib.contextmanager
def follow_overlay(layers, mnt):
    """The kernel overlay's read-only merged view of layers (top first), redirects followed."""
    Path(mnt).mkdir(parents=True, exist_ok=True)
    with union.KernelMount(mnt, layers, opts=["redirect_dir=follow"]):
        yield Path(mnt)


def overlay_view(m):
    # a whiteout left in a directory only one lower layer has is listed by the kernel
    # although lookup says ENOENT: the name is not in the merged view (see above)
    return {k: v for k, v in view(m, nlink=False).items()
            if v.get("type") != "listed, but lstat: ENOENT"}


def assert_image_is_merged_view(tdir, img, layers):
    out = unsquashfs(img, tdir / "x")
    with follow_overlay(layers, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        ov = overlay_view(o)
        assert_same(ov, view(m, nlink=False), ("overlay", "kernel squashfs"))
        assert_same(ov, view(out, nlink=False), ("overlay", "unsquashfs"))


def has_redirect(root):
    for dirpath, dirnames, _ in os.walk(root):
        for n in dirnames:
            if "trusted.overlay.redirect" in os.listxattr(os.path.join(dirpath, n)):
                return True
    return False


def kernel_renamed_stack(tdir):
    """Two lower layers and an upper written by the kernel overlay (redirect_dir=on) while
    directories with lower content were renamed: within their parent (a relative
    redirect), elsewhere (absolute), into a renamed directory, twice, and with their parent
    renamed after them; a new directory takes an old name; lower files in a renamed
    directory are deleted and new ones added.  Returns the layers, top first."""
    lowers = stack(tdir, [
        [E("a/x", "f", data=b"x in the middle"), E("a/sub/deep", "f", data=b"deep"),
         E("a/sub/gone", "f", data=b"deleted after the rename"),
         E("p/q/r", "f", data=b"r" * 3000), E("p/q/s/t", "f", data=b"t"),
         E("m/n/o", "f", data=b"o"), E("keep/k", "f", data=b"k", mode=0o600),
         E("twice/t", "f", data=b"t2"), E("hl/one", "f", data=b"linked"),
         E("hl/two", "h", target="hl/one"), E("a/h1", "f", data=b"linked in a"),
         E("a/h2", "h", target="a/h1"), E("keep/kl", "h", target="a/h1")],
        [E("a/y", "f", data=b"y at the bottom"), E("a/x", "f", data=b"x hidden below"),
         E("far/away/f", "f", data=b"far"), E("p/q/u", "f", data=b"u"),
         E("m/n/o2", "f", data=b"o2"), E("twice/deeper/z", "f", data=b"z")],
    ], True, "k")
    upper, work, mnt = tdir / "upper", tdir / "work", tdir / "kmnt"
    for d in (upper, work, mnt):
        d.mkdir()
    with union.KernelMount(mnt, lowers, upper, work, opts=["redirect_dir=on"]):
        os.rename(mnt / "a", mnt / "b")                       # relative: "a"
        os.rename(mnt / "p/q", mnt / "moved_q")               # absolute: "/p/q"
        os.rename(mnt / "m/n", mnt / "m/n2")
        (mnt / "m/n2/new").write_bytes(b"new in a renamed dir")
        os.rename(mnt / "m", mnt / "m_renamed")               # parent renamed after
        os.mkdir(mnt / "a")                                   # opaque, over a whiteout
        (mnt / "a/fresh").write_bytes(b"fresh")
        os.rename(mnt / "far/away", mnt / "b/sub/away")       # into a renamed dir
        os.unlink(mnt / "b/x")
        os.unlink(mnt / "b/sub/gone")
        os.rename(mnt / "twice", mnt / "twice1")
        os.rename(mnt / "twice1", mnt / "twice2")
        os.rename(mnt / "keep", mnt / "hl/keep")
    assert has_redirect(upper)
    return [upper] + lowers


def test_kernel_renamed_dirs_match_kernel_overlay(tdir):
    layers = kernel_renamed_stack(tdir)
    img = tdir / "out.sqfs"
    p = squash(img, *layers)
    unsquashfs_stat_ok(img)
    assert_image_is_merged_view(tdir, img, layers)
    with kmount(img, tdir / "m2") as m:           # the lower content under the new names
        assert (m / "b/y").read_bytes() == b"y at the bottom"
        assert (m / "b/sub/away/f").read_bytes() == b"far"
        assert (m / "moved_q/r").read_bytes() == b"r" * 3000
        assert (m / "m_renamed/n2/o2").read_bytes() == b"o2"
        assert not (m / "b/x").exists() and not (m / "p/q").exists()
        # one inode, whether its names are under renamed directories or not
        assert len({os.lstat(m / n).st_ino for n in ("b/h1", "b/h2", "hl/keep/kl")}) == 1
    assert_hidden_like_audit(p, layers)


def test_kernel_renamed_dirs_image_layers(tdir):
    """The same stack with the lower layers as SquashFS images (the redirect's lower
    content is read through the image backend)."""
    layers = kernel_renamed_stack(tdir)
    imgs = []
    for i, l in enumerate(layers[1:]):
        imgs.append(tdir / f"l{i}.sqfs")
        squash(imgs[-1], l)
    a, b = tdir / "dirs.sqfs", tdir / "imgs.sqfs"
    squash(a, *layers)
    p = squash(b, layers[0], *imgs)
    with kmount(a, tdir / "m1") as x, kmount(b, tdir / "m2") as y:
        assert_same(view(x), view(y), ("dir layers", "image layers"))
    assert_hidden_like_audit(p, [layers[0]] + imgs)


def every_form_layers(oci):
    """Three layers (top first): every whiteout form, opaque forms, replaced files and
    directories, hard links (one name hidden, the other shown; both hidden), and
    redirects (absolute, relative, and one met again in a lower layer).  oci: whiteouts
    as .wh. files, opaque as .wh..wh..opq / user.overlay.opaque; else the kernel's forms.
    Sizes stay small: the hidden bytes are below 1 KiB, so the summary shows them exactly."""
    wh = "wh" if oci else "char"
    top = [
        E("gone_char", "w"), E("gone_wh", "w", form=wh), E("gonedir", "w", form=wh),
        E("opq_x", "d", opaque="xattr"), E("opq_x/new", "f", data=b"n1"),
        E("opq_u", "d", opaque="user" if oci else "xattr"), E("opq_u/new", "f", data=b"n2"),
        E("opq_m", "d", opaque="wh" if oci else "xattr"), E("opq_m/new", "f", data=b"n3"),
        E("rep", "f", data=b"newest"), E("rep_dir_by_file", "f", data=b"now a file"),
        E("rep_file_by_dir/in", "f", data=b"in"),
        E("renamed", "d", xattrs={"trusted.overlay.redirect": b"/orig"}),
        E("orig", "w", form=wh), E("renamed/drop", "w", form=wh),
        E("renamed/added", "f", data=b"added"),
        E("rel_new", "d", xattrs={"trusted.overlay.redirect": b"rel_old"}),
        E("rel_old", "w"),
        E("hl_a", "w", form=wh), E("hl_c", "w"), E("hl_d", "w", form=wh),
        E("nest/moved", "d", xattrs={"trusted.overlay.redirect": b"/src/dir"}),
        E("src", "w", form=wh), E("elsewhere", "w"),
    ]
    middle = [
        E("gone_char", "f", data=b"gc"), E("gone_wh", "f", data=b"gw" * 5),
        E("gonedir/x", "f", data=b"x" * 7), E("gonedir/y/z", "f", data=b"z" * 11),
        E("gonedir/l", "l", target="x"),
        E("opq_x/old", "f", data=b"o" * 13), E("opq_u/old/deep", "f", data=b"d" * 17),
        E("opq_m/old", "f", data=b"m" * 19),
        E("rep", "f", data=b"r" * 23), E("rep_dir_by_file/child", "f", data=b"c" * 29),
        E("rep_file_by_dir", "f", data=b"f" * 31),
        E("orig/a", "f", data=b"a" * 37), E("orig/drop", "f", data=b"p" * 41),
        E("orig/sub/b", "f", data=b"b" * 43),
        E("rel_old/r", "f", data=b"r" * 47),
        E("hl_a", "f", data=b"h" * 53), E("hl_b", "h", target="hl_a"),
        E("hl_c", "f", data=b"H" * 59), E("hl_d", "h", target="hl_c"),
        # met again below: the lower copy of src/dir is itself redirected
        E("src/dir", "d", xattrs={"trusted.overlay.redirect": b"/elsewhere"}),
        E("src/dir/mid", "f", data=b"m" * 61),
    ]
    bottom = [
        E("rep", "f", data=b"R" * 67), E("opq_x/older", "f", data=b"O" * 71),
        E("orig/a", "f", data=b"A" * 73), E("orig/bottom", "f", data=b"B" * 3),
        E("gonedir/w", "f", data=b"w" * 5),
        E("rel_old/rb", "f", data=b"rb"), E("rel_new/own", "f", data=b"q" * 79),
        E("elsewhere/e", "f", data=b"e"), E("src/dir/not_shown", "f", data=b"s" * 83),
        E("merge/m", "f", data=b"m"),
    ]
    return [top, middle, bottom]


def test_every_form_hidden_count_equals_audit(tdir):
    oci = stack(tdir, every_form_layers(True), False, "oci")
    kern = stack(tdir, every_form_layers(False), True, "k")
    img = tdir / "out.sqfs"
    p = squash(img, *oci)
    t = audit_totals(oci)
    assert t == audit_totals(kern)
    assert 0 < t["dead_bytes"] < 1024 and t["hidden_files"] > 10
    assert summary_hidden(p) == (f"{t['dead_bytes']} B", t["hidden_files"])
    assert_image_is_merged_view(tdir, img, kern)
    # the same stack again, as images: the same count
    imgs = []
    for i, l in enumerate(oci):
        imgs.append(tdir / f"l{i}.sqfs")
        union.run(["mksquashfs", str(l), str(imgs[-1]), "-noappend", "-quiet",
                   "-no-progress", "-xattrs"])
    p = squash(tdir / "from_imgs.sqfs", *imgs)
    assert summary_hidden(p) == (f"{t['dead_bytes']} B", t["hidden_files"])
    with kmount(img, tdir / "m1") as a, kmount(tdir / "from_imgs.sqfs", tdir / "m2") as b:
        assert_same(view(a), view(b), ("dir layers", "image layers"))


def test_hidden_count_skips_nothing_it_should_count(tdir):
    """Hard links: a hidden name whose inode another name still shows costs nothing; two
    hidden names of one inode count once; a single layer hides nothing."""
    lowers = stack(tdir, [
        [E("a", "w"), E("big1", "w"), E("big2", "w")],
        [E("a", "f", data=b"h" * 1000), E("b", "h", target="a"),
         E("big1", "f", data=b"b" * 5000), E("big2", "h", target="big1")],
    ], True, "k")
    p = squash(tdir / "out.sqfs", *lowers)
    assert summary_hidden(p) == (human(5000), 3)
    p = squash(tdir / "one.sqfs", lowers[1])
    assert summary_hidden(p) == ("0 B", 0)


def random_redirect_stack(seed, nlayers=4, nops=40):
    """random_stack() with a few directories of each layer but the bottom one redirected
    (absolute and relative values), mostly to directories the lower layers hold."""
    import random
    rng = random.Random(seed * 7919 + 1)
    names = ["a", "b", "c", "d"]
    layers = random_stack(seed, nlayers, nops)
    for li in range(nlayers - 1):
        ents = layers[li]
        dirs = {"/".join(p.split("/")[:i]) for p, k, a in ents for i in range(1, p.count("/") + 1)}
        dirs |= {p for p, k, a in ents if k == "d" and not a.get("opaque")}
        dirs -= {p for p, k, a in ents if k != "d" or a.get("opaque")}
        below = sorted({"/".join(p.split("/")[:i]) for lower in layers[li + 1:]
                        for p, k, a in lower for i in range(1, p.count("/") + 1 + (k == "d"))})
        for path in rng.sample(sorted(dirs), min(3, len(dirs))):
            r = rng.random()
            if r < 0.5 and below:                  # a directory a lower layer holds
                target = "/" + rng.choice(below)
            elif r < 0.65:
                target = "/" + "/".join(rng.choice(names) for _ in range(rng.randint(1, 3)))
            else:
                target = rng.choice(names)
            ents.append(E(path, "d", xattrs={"trusted.overlay.redirect": target.encode()}))
    return layers


@pytest.mark.parametrize("seed", range(int(os.environ.get("MKIMAGE_REDIRECT_SEEDS", "10"))))
def test_random_redirect_stacks_match_kernel_overlay(tdir, seed):
    layers = random_redirect_stack(seed)
    lowers = stack(tdir, layers, True, "k")
    img = tdir / "out.sqfs"
    p = squash(img, *lowers)
    with follow_overlay(lowers, tdir / "ovl") as o, kmount(img, tdir / "mnt") as m:
        # A redirect here may show a directory that is still visible at its own path
        # (the kernel never writes that: a rename whites out the old name), and the
        # kernel then shows one inode at two paths, where the image has two copies.
        a = union.strip(overlay_view(o), "links")
        d = union.diff_snapshots(a, union.strip(view(m, nlink=False), "links"),
                                 ("overlay", "image"))
        assert not d, f"seed {seed}: trees differ:\n{d}"
    t = audit_totals(lowers)
    assert summary_hidden(p) == (human(t["dead_bytes"]), t["hidden_files"]), f"seed {seed}"


def test_unreadable_hidden_dir_leaves_the_count_out_not_the_image(tdir):
    """A hidden directory the user cannot read: the image is complete (nothing in it
    comes from there), and the summary says nothing about hidden bytes it cannot know."""
    lowers = stack(tdir, [
        [E("locked", "w"), E("shown", "f", data=b"top")],
        [E("locked/secret", "f", data=b"s" * 100), E("lower", "f", data=b"low")],
    ], True, "k")
    os.chmod(lowers[1] / "locked", 0o000)
    outdir = tdir / "o"
    outdir.mkdir()
    os.chmod(outdir, 0o777)
    p = run_as_nobody(["squash", "-o", outdir / "out.sqfs", *lowers])
    assert "hidden left out" not in p.stdout and "2 files" in p.stdout, p.stdout
    with kmount(outdir / "out.sqfs", tdir / "mnt") as m:
        assert sorted(os.listdir(m)) == ["lower", "shown"]
