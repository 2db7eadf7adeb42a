"""Read-ahead of directories (fs/dirahead.c): while a program walks a tree, stratafs reads
the listings of the subdirectories it is about to enter, and looks their entries up in the
layers, before the program asks.

What must hold: a walk sees exactly what the kernel overlay shows of the same layers, and a
listing read ahead never shows a state older than the last change made through the mount --
whatever happens between the read-ahead and the read (creates, unlinks, renames, copy-ups,
the kernel forgetting inodes).  And the read-ahead is really used (the daemon's counters).
"""

import os
import random
import stat
import time

import pytest

import union
from union import E

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(union.impl_is_fuse_overlayfs(), reason="stratafs feature"),
]

KERNEL_OPTS = ["index=off", "redirect_dir=on"]
IMPL_OPTS = ["allow_other", "dev", "suid"]


def tree_layers(ndirs=12, nfiles=15):
    """Three lower layers (top first) of ndirs directories with nfiles files each, spread
    over the layers, with whiteouts, an opaque directory, rewritten files and nesting."""
    top, mid, bottom = [], [], []
    for d in range(ndirs):
        for f in range(nfiles):
            p = f"t/d{d:02}/f{f:02}"
            [bottom, mid, top][f % 3].append(E(p, data=b"%d %d\n" % (d, f) * (f + 1)))
        bottom.append(E(f"t/d{d:02}/sub/deep/z", data=b"z" * d))
        mid.append(E(f"t/d{d:02}/sub/deep/y", data=b"y"))
        top.append(E(f"t/d{d:02}/sub/x", data=b"x"))
        bottom.append(E(f"t/d{d:02}/old", data=b"old bottom\n"))
        mid.append(E(f"t/d{d:02}/old", data=b"newer, in the middle\n"))
        if d != 3:          # (the kernel lists a whiteout in an opaque lower dir)
            bottom.append(E(f"t/d{d:02}/gone", data=b"whited out\n"))
            top.append(E(f"t/d{d:02}/gone", "w"))
    bottom.append(E("t/d03/hidden_below", data=b"hidden by the opaque dir\n"))
    top.append(E("t/d03", "d", opaque=True))
    top.append(E("t/d03/only_top", data=b"only\n"))
    return [top, mid, bottom]


def stacks(tdir, layers):
    k = union.build_stack(tdir / "k", layers, kernel_form=True)
    i = union.build_stack(tdir / "i", layers)
    return k, i


def view(root, rel="t"):
    """A directory's entries with type, size and content: what a walk sees."""
    snap = union.snapshot(os.path.join(root, rel), times=False, xattrs=False)
    return {k: v for k, v in snap.items() if k != "."}


def listdir_stat(path):
    """os.scandir + lstat: what sends readdirplus for path and queues its subdirs."""
    with os.scandir(path) as it:
        return sorted((e.name, e.stat(follow_symlinks=False).st_size) for e in it)


def test_walk_matches_kernel_and_uses_read_ahead(tdir, impl):
    (kl, ku, kw, km), (il, iu, iw, im) = stacks(tdir, tree_layers())
    with union.make_mount("kernel", km, kl, ku, kw, KERNEL_OPTS), \
            union.make_mount("impl", im, il, iu, iw, IMPL_OPTS):
        want = view(km)
        got = view(im)
        assert union.diff_snapshots(want, got) == ""
        s = union.daemon_stats(im)
        # every d?? below t/ and their sub/ and sub/deep/ were queued by a readdirplus
        assert s["dirs_read_ahead_used"] > 0, s
        assert s["dirs_read_ahead_used"] <= s["dirs_read_ahead"], s
        # a second walk reads the same
        assert union.diff_snapshots(want, view(im)) == ""


FILES = ["f%02d" % i for i in range(15)] + ["old", "gone", "x", "y", "z", "only_top"] + \
    ["new%d" % i for i in range(5)] + ["ren%d" % i for i in range(5)]


def _op(rng, root, d, log):
    """One random namespace or data change inside directory d of root, made without
    listing d (a listing would use up what was read ahead); names are picked from those
    the tree may have, so some changes fail -- alike on both mounts.  The same rng state
    gives the same change on both."""
    base = os.path.join(root, d)
    kind = rng.choice(["create", "unlink", "rename", "append", "mkdir", "rename_in",
                       "truncate", "symlink"])
    name = os.path.join(base, rng.choice(FILES))
    try:
        if kind == "create":
            with open(os.path.join(base, "new%d" % rng.randrange(5)), "ab") as f:
                f.write(b"created\n")
        elif kind == "unlink":
            os.unlink(name)
        elif kind == "rename":
            os.rename(name, os.path.join(base, "ren%d" % rng.randrange(5)))
        elif kind == "append":
            with open(name, "ab") as f:
                f.write(b"appended %d\n" % rng.randrange(1000))
        elif kind == "truncate":
            os.truncate(name, rng.randrange(4))
        elif kind == "mkdir":
            os.mkdir(os.path.join(base, "dir%d" % rng.randrange(10)))
        elif kind == "rename_in":
            # from a sibling directory (maybe one read ahead too) into this one
            other = os.path.join(root, "t", "d%02d" % rng.randrange(12), rng.choice(FILES))
            os.rename(other, os.path.join(base, "moved%d" % rng.randrange(50)))
        elif kind == "symlink":
            os.symlink("f00", os.path.join(base, "sym%d" % rng.randrange(20)))
        log.append((kind, "ok"))
    except OSError as e:
        log.append((kind, union.ename(e.errno)))


def _drop_dentries():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_changes_between_read_ahead_and_read(tdir, impl, seed):
    """List a directory (which reads its subdirectories ahead), give the read-ahead time to
    finish, change one subdirectory through the mount -- sometimes after the kernel forgot
    its inodes, so the daemon's nodes are gone too -- then list it: every listing must
    match the kernel overlay after the same steps."""
    (kl, ku, kw, km), (il, iu, iw, im) = stacks(tdir, tree_layers())
    with union.make_mount("kernel", km, kl, ku, kw, KERNEL_OPTS), \
            union.make_mount("impl", im, il, iu, iw, IMPL_OPTS):
        rng = random.Random(seed)
        for step in range(40):
            d = "t/d%02d" % rng.randrange(12)
            sub = rng.choice(["", "/sub", "/sub/deep"])
            forget = rng.random() < 0.4
            state = rng.getstate()
            logs = []
            for root in (km, im):
                rng.setstate(state)
                log = []
                listdir_stat(os.path.join(root, "t"))           # queue d??/ for read-ahead
                listdir_stat(os.path.join(root, d))             # and d??/sub/
                if root == im:
                    time.sleep(0.02)                            # let it read them
                for _ in range(rng.randrange(1, 4)):
                    _op(rng, root, d + sub, log)
                if forget:
                    _drop_dentries()
                logs.append(log)
            assert logs[0] == logs[1], f"seed {seed} step {step}"
            # the changed directory first (the read-ahead may hold its listing), then all
            for rel in (d + sub, "t"):
                if os.path.isdir(os.path.join(km, rel)):
                    assert union.diff_snapshots(view(km, rel), view(im, rel)) == "", \
                        f"seed {seed} step {step} {rel} after {logs[1]}"
        assert union.daemon_stats(im)["dirs_read_ahead"] > 0


def test_copy_up_after_read_ahead_of_a_forgotten_file(tdir, impl):
    """The read-ahead looked a lower file up; then the file is copied up and grows, and the
    kernel forgets it (so the daemon drops its node): the next listing must show the copy's
    size, not the size looked up ahead."""
    layers = [[E("a/b/f%d" % i, data=b"1234") for i in range(20)]]
    (kl, ku, kw, km), (il, iu, iw, im) = stacks(tdir, layers)
    with union.make_mount("kernel", km, kl, ku, kw, KERNEL_OPTS), \
            union.make_mount("impl", im, il, iu, iw, IMPL_OPTS):
        for root in (km, im):
            listdir_stat(os.path.join(root, "a"))    # queues a/b: read ahead, looked up
        time.sleep(0.1)
        for root in (km, im):
            with open(os.path.join(root, "a/b/f7"), "ab") as f:
                f.write(b"more bytes")
        _drop_dentries()
        time.sleep(0.1)
        for root in (km, im):
            assert dict(listdir_stat(os.path.join(root, "a/b")))["f7"] == 14
        assert union.diff_snapshots(view(km, "a"), view(im, "a")) == ""


def test_big_directories_are_not_read_ahead(tdir, impl):
    """A directory with more entries than the read-ahead keeps is read when asked, and
    reads complete and right."""
    layers = [[E("top/big/f%05d" % i) for i in range(5000)] + [E("top/small/x")]]
    (kl, ku, kw, km), (il, iu, iw, im) = stacks(tdir, layers)
    with union.make_mount("kernel", km, kl, ku, kw, KERNEL_OPTS), \
            union.make_mount("impl", im, il, iu, iw, IMPL_OPTS):
        listdir_stat(os.path.join(im, "top"))
        time.sleep(0.2)
        s = union.daemon_stats(im)
        assert s["dirs_read_ahead"] == 1, s          # small/, not big/
        assert listdir_stat(os.path.join(im, "top/big")) == \
            listdir_stat(os.path.join(km, "top/big"))


def test_option_off(tdir, impl):
    """dir_readahead=0: no read-ahead, the same view; a bad value is refused."""
    (kl, ku, kw, km), (il, iu, iw, im) = stacks(tdir, tree_layers(ndirs=4))
    with union.make_mount("kernel", km, kl, ku, kw, KERNEL_OPTS), \
            union.make_mount("impl", im, il, iu, iw, IMPL_OPTS + ["dir_readahead=0"]):
        assert union.diff_snapshots(view(km), view(im)) == ""
        s = union.daemon_stats(im)
        assert s["dirs_read_ahead"] == 0 and s["dirs_listed"] > 0, s
    p = union.run([impl, "-o", union.overlay_opts(il, iu, iw, ["dir_readahead=2"]), str(im)],
                  check=False)
    assert p.returncode != 0
    assert "dir_readahead" in p.stderr
    assert not union.is_mounted(im)
