"""strata (driver/): the storage driver, end to end through its CLI with --json.

Peers: umoci (builds and unpacks OCI images), the kernel overlay and stratafs (mounts),
runc (runs a container on a strata snapshot), Python's tarfile (the malicious corpus)."""

import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from _driver import (STRATA, STRATAFS, change_rootfs_1, change_rootfs_2, diff_trees,
                     err_code, make_rootfs, sh, store_dirs_ok, strata, tree, umoci_image,
                     umoci_unpack, write_oci_layout)

pytestmark = pytest.mark.skipif(not STRATA.exists(), reason=f"{STRATA} not built")

REPO_DRIVER = Path(__file__).resolve().parent.parent / "driver"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def store(tdir):
    return tdir / "store"


# ---- snapshot lifecycle -------------------------------------------------------------------

def test_lifecycle_json(store, tdir):
    r = strata(store, "prepare", "base-w", "--label", "role=base")
    assert r.json["key"] == "base-w"
    m = r.json["mounts"][0]
    assert m["type"] == "bind" and m["source"].endswith("/fs")
    Path(m["source"], "hello").write_text("hi\n")

    assert strata(store, "commit", "base", "base-w").json == {"name": "base", "key": "base-w"}
    st = strata(store, "stat", "base").json
    assert st["kind"] == "committed" and st["parent"] is None
    assert st["labels"] == {"role": "base"}
    assert st["size"] > 0 and st["inodes"] >= 2

    r = strata(store, "prepare", "c1", "base")
    m = r.json["mounts"][0]
    assert m["type"] in ("overlay", "fuse3.stratafs")
    assert any(o.startswith("lowerdir=") for o in m["options"])
    assert any(o.startswith("upperdir=") for o in m["options"])
    assert any(o.startswith("workdir=") for o in m["options"])
    assert strata(store, "mounts", "c1", "--backend", "fuse").json[0]["type"] == \
        "fuse3.stratafs"
    assert strata(store, "mounts", "c1", "--backend", "kernel").json[0]["type"] == "overlay"

    v = strata(store, "view", "v1", "base").json["mounts"][0]
    assert v["type"] == "bind" and "ro" in v["options"]

    ls = {s["key"]: s for s in strata(store, "ls").json}
    assert set(ls) == {"base", "c1", "v1"}
    assert ls["c1"]["kind"] == "active" and ls["c1"]["parent"] == "base"
    assert ls["v1"]["kind"] == "view"
    assert "size" in ls["base"] and ls["base"]["labels"] == {"role": "base"}

    lab = strata(store, "label", "c1", "a=1", "b=2").json
    assert lab["labels"] == {"a": "1", "b": "2"}
    assert strata(store, "label", "c1", "a=").json["labels"] == {"b": "2"}
    u = strata(store, "usage", "base").json
    assert u["size"] > 0 and u["inodes"] >= 2

    # errors, each with a JSON error object and a non-zero exit
    assert err_code(strata(store, "stat", "nope", ok=False)) == "ENOENT"
    assert err_code(strata(store, "prepare", "x", "nope", ok=False)) == "ENOENT"
    assert err_code(strata(store, "commit", "cv", "v1", ok=False)) == "EINVAL"
    assert err_code(strata(store, "commit", "again", "base", ok=False)) == "EINVAL"
    assert err_code(strata(store, "prepare", "c1", "base", ok=False)) == "EEXIST"
    assert err_code(strata(store, "commit", "base", "c1", ok=False)) == "EEXIST"
    assert err_code(strata(store, "prepare", "on-active", "c1", ok=False)) == "EINVAL"
    assert err_code(strata(store, "rm", "base", ok=False)) == "EBUSY"
    assert err_code(strata(store, "rm", "nope", ok=False)) == "ENOENT"
    assert err_code(strata(store, "view", "v2", ok=False)) == "EINVAL"
    r = strata(store, "frobnicate", ok=None)
    assert r.rc == 2

    # committing moves the key; the children then go and the parent can
    strata(store, "commit", "layer2", "c1")
    assert err_code(strata(store, "stat", "c1", ok=False)) == "ENOENT"
    assert strata(store, "stat", "layer2").json["parent"] == "base"
    strata(store, "rm", "v1")
    assert err_code(strata(store, "rm", "base", ok=False)) == "EBUSY"
    strata(store, "rm", "layer2")
    strata(store, "rm", "base")
    assert strata(store, "ls").json == []
    store_dirs_ok(store)


def test_human_output(store):
    r = strata(store, "prepare", "a", use_json=False)
    assert r.out.startswith("mount -t bind ")
    r = strata(store, "ls", use_json=False)
    assert "KEY" in r.out and "active" in r.out
    r = strata(store, "stat", "missing", use_json=False, ok=None)
    assert r.rc == 1 and "no snapshot 'missing'" in r.err


def test_store_root_resolution(tdir):
    env_root = tdir / "envroot"
    r = subprocess.run([str(STRATA), "--json", "prepare", "k"], capture_output=True,
                       text=True, env=dict(os.environ, STRATA_ROOT=str(env_root)))
    assert r.returncode == 0, r.stderr
    assert (env_root / "metadata.db").exists()
    db = sqlite3.connect(env_root / "metadata.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    # a store from the future is refused, not damaged
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    r = strata(env_root, "ls", ok=False)
    assert "newer" in r.json["error"]["message"]


# ---- mounting ---------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("backend", ["kernel", "fuse"])
def test_mount_write_commit(store, tdir, backend):
    if backend == "fuse" and not STRATAFS.exists():
        pytest.skip("stratafs not built")
    rootfs = tdir / "rootfs"
    make_rootfs(rootfs)
    strata(store, "prepare", "w", use_json=False)
    src = Path(strata(store, "mounts", "w").json[0]["source"])
    shutil.rmtree(src)
    sh("cp", "-a", rootfs, src)
    strata(store, "commit", "base", "w")
    strata(store, "prepare", "c", "base")
    mnt = tdir / "mnt"
    mnt.mkdir()
    strata(store, "mount", "c", mnt, "--backend", backend)
    try:
        assert mounted(mnt)
        assert strata(store, "stat", "c").json["mounts"] == [str(mnt)]
        assert (mnt / "etc/hostname").read_text() == "strata\n"
        (mnt / "etc/hostname").write_text("container\n")
        os.unlink(mnt / "to-delete")
        (mnt / "new").write_text("new\n")
        assert err_code(strata(store, "commit", "l2", "c", ok=False)) == "EBUSY"
        assert err_code(strata(store, "rm", "c", ok=False)) == "EBUSY"
    finally:
        strata(store, "umount", mnt, ok=None)
    assert not mounted(mnt)
    assert strata(store, "stat", "c").json["mounts"] == []
    strata(store, "commit", "l2", "c")
    strata(store, "view", "v", "l2")
    strata(store, "mount", "v", mnt, "--backend", backend)
    try:
        assert (mnt / "etc/hostname").read_text() == "container\n"
        assert not (mnt / "to-delete").exists()
        assert (mnt / "new").read_text() == "new\n"
        with pytest.raises(OSError):
            (mnt / "x").write_text("read-only view\n")
    finally:
        strata(store, "rm", "v", "--force")
    assert not mounted(mnt)
    store_dirs_ok(store)


@needs_root
def test_rm_refuses_unrecorded_mount(store, tdir):
    """A mount strata did not record (say, a crash between mount and record) still keeps
    its snapshot from being removed."""
    strata(store, "prepare", "w")
    strata(store, "commit", "base", "w")
    opts = strata(store, "prepare", "c", "base").json["mounts"][0]["options"]
    mnt = tdir / "m"
    mnt.mkdir()
    sh("mount", "-t", "overlay", "overlay", "-o",
       ",".join(o for o in opts if o.split("=")[0] in ("lowerdir", "upperdir", "workdir")),
       mnt)
    try:
        r = strata(store, "rm", "c", ok=False)
        assert err_code(r) == "EBUSY" and str(mnt) in r.json["error"]["message"]
    finally:
        sh("umount", mnt)
    strata(store, "rm", "c")
    store_dirs_ok(store)


# ---- OCI import / export against umoci --------------------------------------------------

@pytest.fixture(scope="module")
def oci_image(tmp_path_factory):
    work = tmp_path_factory.mktemp("oci")
    img = umoci_image(work, [make_rootfs, change_rootfs_1, change_rootfs_2])
    ref = umoci_unpack(img, work / "ref")
    return img, ref


def mount_tree(store, key, mnt, backend="kernel"):
    strata(store, "prepare", key + "-c", key)
    mnt.mkdir(exist_ok=True)
    strata(store, "mount", key + "-c", mnt, "--backend", backend)
    try:
        return tree(mnt)
    finally:
        strata(store, "umount", mnt)
        strata(store, "rm", key + "-c")


@needs_root
def test_image_import_matches_umoci_unpack(store, tdir, oci_image):
    img, ref = oci_image
    r = strata(store, "image", "import", f"{img}:t", "myimg")
    assert r.json["name"] == "myimg"
    chain = []
    key = "myimg"
    while key:
        st = strata(store, "stat", key).json
        assert st["diff_id"].startswith("sha256:") and st["chain_id"].startswith("sha256:")
        chain.append(st)
        key = st["parent"]
    assert len(chain) == 3
    want = tree(ref)
    got = mount_tree(store, "myimg", tdir / "mnt")
    assert diff_trees(want, got) == []
    if STRATAFS.exists():
        got = mount_tree(store, "myimg", tdir / "mnt", backend="fuse")
        assert diff_trees(want, got) == []
    # importing again reuses the layers (same chain ids) and is idempotent for the name
    before = len(strata(store, "ls").json)
    assert strata(store, "image", "import", f"{img}:t", "myimg").json["name"] == "myimg"
    strata(store, "image", "import", f"{img}:t", "other")
    after = strata(store, "ls").json
    assert len(after) == before + 1   # only the new top layer
    store_dirs_ok(store)


@needs_root
def test_export_reimport_and_determinism(store, tdir, oci_image):
    img, ref = oci_image
    strata(store, "image", "import", f"{img}:t", "img")
    chain = []
    key = "img"
    while key:
        chain.insert(0, key)
        key = strata(store, "stat", key).json["parent"]
    other = tdir / "other-store"
    parent = None
    for i, key in enumerate(chain):
        for comp in ("none", "gzip", "zstd"):
            a, b = tdir / f"{i}-a.{comp}", tdir / f"{i}-b.{comp}"
            ra = strata(store, "export", key, "-o", a, "--compress", comp).json
            rb = strata(store, "export", key, "-o", b, "--compress", comp).json
            assert a.read_bytes() == b.read_bytes(), f"export of {key} ({comp}) differs"
            assert ra["digest"] == rb["digest"]
            assert ra["diff_id"] == strata(store, "stat", key).json["diff_id"] or i >= 0
            assert ra["digest"] == "sha256:" + sh("sha256sum", a).stdout.split()[0]
            if comp == "none":
                assert ra["digest"] == ra["diff_id"]
        # re-import the gzip export elsewhere, checking its digest on the way in
        gz = tdir / f"{i}-a.gzip"
        dg = strata(store, "export", key, "-o", gz, "--compress", "gzip").json["digest"]
        args = ["import", f"L{i}", gz, "--digest", dg]
        if parent:
            args += ["--parent", parent]
        strata(other, *args)
        parent = f"L{i}"
        # export of the re-imported layer is the same bytes again
        again = tdir / f"{i}-again.tar"
        strata(other, "export", parent, "-o", again)
        assert again.read_bytes() == (tdir / f"{i}-a.none").read_bytes()
    want = tree(ref)
    assert diff_trees(want, mount_tree(other, parent, tdir / "mnt")) == []
    # and the whiteouts of the second layer are OCI whiteouts in the tar
    names = tarfile.open(tdir / "1-a.none").getnames()
    assert ".wh.to-delete" in names and ".wh.dir-to-delete" in names
    store_dirs_ok(store)
    store_dirs_ok(other)


@needs_root
def test_export_read_by_umoci(store, tdir, oci_image):
    """Our exports, put in an OCI layout by hand, unpack with umoci to the same tree: the
    whiteouts and opaque markers we write are the ones other tools read."""
    img, ref = oci_image
    strata(store, "image", "import", f"{img}:t", "img")
    chain = []
    key = "img"
    while key:
        chain.insert(0, key)
        key = strata(store, "stat", key).json["parent"]
    layers = []
    for i, key in enumerate(chain):
        out = tdir / f"l{i}.tar.gz"
        r = strata(store, "export", key, "-o", out, "--compress", "gzip").json
        layers.append((out, r["digest"], r["diff_id"], r["mediaType"]))
    layout = write_oci_layout(tdir / "mine", layers)
    got = umoci_unpack(layout, tdir / "unpacked")
    assert diff_trees(tree(ref), tree(got)) == []
    # and strata reads its own layout back, by ref
    other = tdir / "other"
    assert strata(other, "image", "import", f"{layout}:t").json["name"] == "t"
    assert diff_trees(tree(ref), mount_tree(other, "t", tdir / "mnt")) == []


def test_image_import_refuses_bad_layouts(store, tdir, oci_image):
    img, _ = oci_image
    bad = tdir / "bad"
    shutil.copytree(img, bad)
    man_d = json.loads((bad / "index.json").read_text())["manifests"][0]["digest"]
    man = json.loads((bad / "blobs/sha256" / man_d[7:]).read_text())
    assert err_code(strata(store, "image", "import", f"{bad}:nope", ok=False)) == "ENOENT"
    # a corrupt second layer: the first one, imported fine, is removed again
    blob = bad / "blobs/sha256" / man["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = strata(store, "image", "import", f"{bad}:t", "x", ok=False)
    msg = r.json["error"]["message"]
    assert "mismatch" in msg or "bad tar" in msg or "gzip" in msg.lower(), msg
    assert strata(store, "ls").json == []
    # a digest that tries to be a path
    idx = json.loads((bad / "index.json").read_text())
    idx["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (bad / "index.json").write_text(json.dumps(idx))
    r = strata(store, "image", "import", f"{bad}:t", "x", ok=False)
    assert "bad or unsupported digest" in r.json["error"]["message"]
    store_dirs_ok(store)


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (TarInfo kwargs, data or None)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for kw, data in entries:
            ti = tarfile.TarInfo(kw.pop("name"))
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def D(name, **kw):
    return dict(dict(name=name, type=tarfile.DIRTYPE, mode=0o755), **kw), None


def F(name, data=b"x", **kw):
    return dict(dict(name=name, type=tarfile.REGTYPE, mode=0o644), **kw), data


def L(name, target, **kw):
    return dict(name=name, type=tarfile.SYMTYPE, linkname=target, **kw), None


def H(name, target, **kw):
    return dict(name=name, type=tarfile.LNKTYPE, linkname=target, **kw), None


@needs_root
def test_import_whiteouts_and_opaque(store, tdir):
    base = tdir / "base.tar"
    base.write_bytes(tar_bytes([D("a"), F("a/1"), F("a/2"), D("b"), F("b/keep"), F("gone"),
                                F("c", b"c"), H("c-link", "c")]))
    top = tdir / "top.tar"
    top.write_bytes(tar_bytes([D("a"), F("a/.wh..wh..opq", b""), F("a/new"),
                               F(".wh.gone", b""), F("b/.wh.keep", b""), F("b/added")]))
    strata(store, "import", "base", base)
    strata(store, "import", "top", top, "--parent", "base")
    t = mount_tree(store, "top", tdir / "mnt")
    assert sorted(k for k in t if k != "<links>") == ["a", "a/new", "b", "b/added", "c",
                                                      "c-link"]
    assert t["<links>"] == [["c", "c-link"]]
    # the layer itself is in kernel overlay form
    fs = Path(strata(store, "stat", "top").json["path"])
    assert os.getxattr(fs / "a", "trusted.overlay.opaque") == b"y"
    assert os.stat(fs / "gone", follow_symlinks=False).st_rdev == 0
    out = tdir / "top-export.tar"
    strata(store, "export", "top", "-o", out)
    names = tarfile.open(out).getnames()
    assert "a/.wh..wh..opq" in names and "b/.wh.keep" in names and ".wh.gone" in names
    assert "a/new" in names and "b/added" in names
    # umoci applies our export (opaque directory included) the way the overlay shows it
    layers = []
    for i, key in enumerate(["base", "top"]):
        o = tdir / f"e{i}.tar.gz"
        r = strata(store, "export", key, "-o", o, "--compress", "gzip").json
        layers.append((o, r["digest"], r["diff_id"], r["mediaType"]))
    layout = write_oci_layout(tdir / "layout", layers)
    got = umoci_unpack(layout, tdir / "u")
    assert diff_trees(t, tree(got)) == []


# ---- malicious and broken input ---------------------------------------------------------

def corpus(outside):
    big = tarfile.TarInfo("huge")
    big.size = 10 * 1024**3
    hdr = big.tobuf(tarfile.GNU_FORMAT)
    good = tar_bytes([D("d"), F("d/f", b"y" * 5000)])
    return {
        "dotdot": tar_bytes([F("../escaped")]),
        "dotdot-deep": tar_bytes([D("a"), F("a/../../escaped")]),
        "absolute": tar_bytes([F(str(outside / "abs"))]),
        "symlink-then-file": tar_bytes([L("link", str(outside)), F("link/through")]),
        "symlink-rel-then-file": tar_bytes([L("up", "../../../.."), F("up/through")]),
        "symlink-dir-then-mkdir": tar_bytes([L("ld", str(outside)), D("ld/sub")]),
        "hardlink-outside-abs": tar_bytes([H("hl", str(outside / "target"))]),
        "hardlink-outside-rel": tar_bytes([H("hl", "../target")]),
        "hardlink-missing": tar_bytes([H("hl", "not/here")]),
        "whiteout-dotdot": tar_bytes([F(".wh...", b"")]),
        "root-replaced": tar_bytes([F(".", b"")]),
        "huge-size": hdr + b"\0" * 1024,
        "truncated": good[: len(good) // 2 + 100],
        "not-a-tar": os.urandom(4096),
        "empty": b"",
    }


@pytest.mark.parametrize("case", sorted(corpus(Path("/x")).keys()))
def test_malicious_tar_refused(store, tdir, case):
    outside = tdir / "outside"
    outside.mkdir()
    (outside / "target").write_text("do not touch\n")
    data = corpus(outside)[case]
    f = tdir / f"{case}.tar"
    f.write_bytes(data)
    strata(store, "prepare", "w")       # the store exists and has something in it
    before = sorted(os.listdir(tdir))
    r = strata(store, "import", "evil", f, ok=False)
    assert r.json["error"]["message"]
    assert sorted(os.listdir(outside)) == ["target"]
    assert (outside / "target").read_text() == "do not touch\n"
    assert os.stat(outside / "target").st_nlink == 1
    assert sorted(os.listdir(tdir)) == before
    assert not (tdir.parent / "escaped").exists() and not (tdir / "escaped").exists()
    assert err_code(strata(store, "stat", "evil", ok=False)) == "ENOENT"
    assert [s["key"] for s in store_dirs_ok(store)] == ["w"]


def test_digest_mismatch_and_gzip(store, tdir):
    data = tar_bytes([D("d"), F("d/f", b"hello")])
    plain = tdir / "l.tar"
    plain.write_bytes(data)
    sh("gzip", "-k", "-n", plain)
    gz = tdir / "l.tar.gz"
    good = "sha256:" + sh("sha256sum", gz).stdout.split()[0]
    bad = "sha256:" + "0" * 64
    r = strata(store, "import", "x", gz, "--digest", bad, ok=False)
    assert "digest mismatch" in r.json["error"]["message"]
    assert err_code(strata(store, "import", "x", gz, "--digest", "md5:1", ok=False)) == \
        "EINVAL"
    store_dirs_ok(store)
    r = strata(store, "import", "x", gz, "--digest", good,
               "--diff-id", "sha256:" + sh("sha256sum", plain).stdout.split()[0])
    assert r.json["digest"] == good
    sh("zstd", "-q", "-f", plain, "-o", tdir / "l.tar.zst")
    strata(store, "import", "z", tdir / "l.tar.zst")
    assert strata(store, "stat", "z").json["diff_id"] == r.json["diff_id"]
    assert err_code(strata(store, "import", "x", gz, ok=False)) == "EEXIST"
    # from a pipe
    p = subprocess.run([str(STRATA), "--root", str(store), "--json", "import", "piped", "-"],
                       input=gz.read_bytes(), capture_output=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["digest"] == good


@needs_root
def test_full_disk(store, tdir):
    small = tdir / "small"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small)
    try:
        root = small / "store"
        strata(root, "prepare", "w")
        layer = tdir / "big.tar"
        layer.write_bytes(tar_bytes([D("d"), F("d/big", os.urandom(4 * 1024 * 1024))]))
        r = strata(root, "import", "big", layer, ok=False)
        assert "disk full" in r.json["error"]["message"]
        assert [s["key"] for s in store_dirs_ok(root)] == ["w"]
        # the space was given back: a layer that fits imports fine
        small_layer = tdir / "small.tar"
        small_layer.write_bytes(tar_bytes([D("d"), F("d/f", os.urandom(1024 * 1024))]))
        strata(root, "import", "fits", small_layer)
    finally:
        sh("umount", "-l", small, check=False)


@pytest.mark.rootless
def test_rootless_import_skips_devices(tdir):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    layer = tdir / "dev.tar"
    layer.write_bytes(tar_bytes([
        (dict(name="null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        F("f", b"file"), L("s", "f")]))
    store = tdir / "ustore"
    os.chmod(tdir, 0o777)
    r = subprocess.run(["unshare", "-Ur", str(STRATA), "--root", str(store), "--json",
                        "import", "dev", str(layer)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipping device node" in r.stderr
    r = subprocess.run(["unshare", "-Ur", str(STRATA), "--root", str(store), "--json",
                        "stat", "dev"], capture_output=True, text=True)
    fs = Path(json.loads(r.stdout)["path"])
    assert sorted(os.listdir(fs)) == ["f", "s"]


# ---- crashes and concurrency ------------------------------------------------------------

def many_files_tar(path, n=3000):
    ents = [D("d")] + [F(f"d/f{i:05d}", os.urandom(200)) for i in range(n)]
    path.write_bytes(tar_bytes(ents))


@pytest.mark.slow
def test_kill9_anywhere(store, tdir, oci_image):
    img, _ = oci_image
    rng = random.Random(int(os.environ.get("STRATA_TEST_SEED", "5")))
    layer = tdir / "many.tar"
    many_files_tar(layer)
    strata(store, "import", "base", layer)
    expected = tree(strata(store, "stat", "base").json["path"], mtimes=False)
    env = dict(os.environ, STRATAFS=str(STRATAFS))
    for i in range(24):
        op = rng.choice(["import", "commit", "squash", "rm", "image"])
        if op == "image":
            cmd = ["image", "import", f"{img}:t", f"img{i}"]
        elif op == "import":
            cmd = ["import", f"imp{i}", str(layer), "--parent", "base"]
        elif op == "commit":
            strata(store, "prepare", f"act{i}", "base")
            cmd = ["commit", f"com{i}", f"act{i}"]
        elif op == "squash":
            cmd = ["squash", "base", f"sq{i}"]
        else:
            strata(store, "prepare", f"rmme{i}", "base")
            cmd = ["rm", f"rmme{i}"]
        p = subprocess.Popen([str(STRATA), "--root", str(store)] + cmd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        snaps = {s["key"]: s for s in store_dirs_ok(store)}   # recovery runs here
        if f"imp{i}" in snaps:      # all or nothing
            got = tree(snaps[f"imp{i}"]["path"], mtimes=False)
            assert diff_trees(expected, got) == [], f"seed round {i}: partial import"
        if op == "commit":
            assert (f"com{i}" in snaps) != (f"act{i}" in snaps)
        if f"img{i}" in snaps:      # a complete chain under the name
            assert snaps[f"img{i}"]["diff_id"]
            assert snaps[snaps[f"img{i}"]["parent"]]["kind"] == "committed"
    assert diff_trees(expected, tree(strata(store, "stat", "base").json["path"],
                                     mtimes=False)) == []


@pytest.mark.slow
def test_parallel_invocations(store, tdir):
    strata(store, "prepare", "w")
    strata(store, "commit", "base", "w")
    script = tdir / "worker.sh"
    script.write_text(f"""#!/bin/sh
set -e
S="{STRATA} --root {store}"
for i in 1 2 3 4 5 6; do
  $S prepare w$1-$i base >/dev/null
  $S commit c$1-$i w$1-$i >/dev/null
  $S prepare x$1-$i c$1-$i >/dev/null
  $S label x$1-$i k=v >/dev/null
  $S ls >/dev/null
  $S rm x$1-$i >/dev/null
  if [ $((i % 2)) = 0 ]; then $S rm c$1-$i >/dev/null; fi
done
""")
    script.chmod(0o755)
    procs = [subprocess.Popen([str(script), str(n)], stderr=subprocess.PIPE, text=True)
             for n in range(8)]
    errs = [(p.wait(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in errs), errs
    snaps = {s["key"] for s in store_dirs_ok(store)}
    want = {"base"} | {f"c{n}-{i}" for n in range(8) for i in (1, 3, 5)}
    assert snaps == want
    # eight imports racing for one name: exactly one wins, the others fail cleanly
    layer = tdir / "l.tar"
    many_files_tar(layer, 300)
    procs = [subprocess.Popen([str(STRATA), "--root", str(store), "--json", "import", "same",
                               str(layer), "--parent", "base"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    res = [(p.wait(), p.stdout.read()) for p in procs]
    assert sorted(rc for rc, _ in res) == [0] + [1] * 7, res
    assert all(json.loads(out)["error"]["code"] == "EEXIST" for rc, out in res if rc)
    assert "same" in {s["key"] for s in store_dirs_ok(store)}


# ---- squash -----------------------------------------------------------------------------

@needs_root
def test_squash(store, tdir, oci_image):
    if not STRATAFS.exists():
        pytest.skip("stratafs not built")
    img, ref = oci_image
    strata(store, "image", "import", f"{img}:t", "img")
    out = tdir / "img.sqfs"
    strata(store, "squash", "img", "flat", "--comp", "zstd", "--output", out)
    st = strata(store, "stat", "flat").json
    assert st["storage"] == "image" and st["parent"] is None
    assert out.read_bytes()[:4] == b"hsqs"
    assert err_code(strata(store, "mounts", "flat-x", ok=False)) == "ENOENT"
    strata(store, "prepare", "on-flat", "flat")
    m = strata(store, "mounts", "on-flat").json[0]
    assert m["type"] == "fuse3.stratafs"
    assert err_code(strata(store, "mounts", "on-flat", "--backend", "kernel",
                           ok=False)) == "EINVAL"
    strata(store, "rm", "on-flat")
    want = tree(ref)
    got = mount_tree(store, "flat", tdir / "mnt", backend="fuse")
    assert diff_trees(want, got) == []
    # the image is a SquashFS every reader takes
    sh("unsquashfs", "-d", tdir / "unsq", out)
    assert diff_trees(tree(ref, xattrs=False), tree(tdir / "unsq", xattrs=False)) == []
    # a squashed layer exports as the whole tree, read back through the SquashFS reader
    a, b = tdir / "flat-a.tar", tdir / "flat-b.tar"
    strata(store, "export", "flat", "-o", a)
    strata(store, "export", "flat", "-o", b)
    assert a.read_bytes() == b.read_bytes()
    other = tdir / "other"
    strata(other, "import", "flat", a)
    assert diff_trees(want, mount_tree(other, "flat", tdir / "mnt")) == []
    assert err_code(strata(store, "squash", "img", "flat", ok=False)) == "EEXIST"
    store_dirs_ok(store)


# ---- a real runtime ---------------------------------------------------------------------

@needs_root
@pytest.mark.runtime
@pytest.mark.parametrize("backend", ["kernel", "fuse"])
def test_runc_on_strata_snapshot(store, tdir, backend):
    if backend == "fuse" and not STRATAFS.exists():
        pytest.skip("stratafs not built")
    busybox = shutil.which("busybox")
    if not busybox or not shutil.which("runc"):
        pytest.skip("needs busybox-static and runc")
    if "statically" not in sh("file", "-L", busybox, check=False).stdout and \
            "static-pie" not in sh("file", "-L", busybox, check=False).stdout:
        pytest.skip("busybox is not static")

    def bb(root):
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin/busybox")
        for app in ("sh", "echo", "cat"):
            os.symlink("busybox", root / "bin" / app)
        for d in ("proc", "sys", "dev", "tmp", "etc"):
            (root / d).mkdir(exist_ok=True)
        (root / "etc/motd").write_text("from the image\n")
    img = umoci_image(tdir / "oci", [bb])
    strata(store, "image", "import", f"{img}:t", "bb")
    strata(store, "prepare", "ctr", "bb")
    bundle = tdir / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    strata(store, "mount", "ctr", rootfs, "--backend", backend)
    try:
        sh("runc", "spec", "--bundle", bundle)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["process"]["terminal"] = False
        cfg["process"].pop("rlimits", None)
        cfg["process"]["args"] = ["/bin/sh", "-c",
                                  "cat /etc/motd; echo hello-from-strata; "
                                  "echo written-by-container > /written.txt"]
        cfg["root"] = {"path": str(rootfs), "readonly": False}
        (bundle / "config.json").write_text(json.dumps(cfg))
        cid = f"strata-test-{os.getpid()}"
        r = sh("runc", "--root", tdir / "runc-state", "run", "--bundle", bundle, cid,
               check=False, timeout=120)
        sh("runc", "--root", tdir / "runc-state", "delete", "-f", cid, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["from the image", "hello-from-strata"]
    finally:
        strata(store, "umount", rootfs, ok=None)
    out = tdir / "ctr.tar"
    strata(store, "export", "ctr", "-o", out)
    t = tarfile.open(out)
    assert t.extractfile("written.txt").read() == b"written-by-container\n"
    assert "bin/busybox" not in t.getnames()    # the diff only


@pytest.mark.rootless
@pytest.mark.parametrize("backend", ["auto", "kernel"])
def test_rootless_mount(tdir, backend):
    """Root of a user namespace is rootless for strata: auto picks stratafs, kernel mounts
    the overlay with userxattr; whiteouts and opaque markers work with both, and export
    gives the OCI form."""
    if shutil.which("unshare") is None or not STRATAFS.exists():
        pytest.skip("needs unshare and stratafs")
    os.chmod(tdir, 0o777)
    layer = tdir / "l.tar"
    layer.write_bytes(tar_bytes([D("d"), F("d/a"), F("d/b"), D("o"), F("o/old")]))
    script = tdir / "t.sh"
    script.write_text(f"""set -e
S="{STRATA} --root {tdir}/store"
$S import base {layer}
$S --json mounts c 2>/dev/null || true
$S prepare c base >/dev/null
mkdir -p {tdir}/m
$S mount c {tdir}/m --backend {backend}
grep -F " {tdir}/m " /proc/self/mountinfo | grep -q {"fuse" if backend == "auto" else "overlay"}
rm {tdir}/m/d/a
rm -r {tdir}/m/o && mkdir {tdir}/m/o && echo n > {tdir}/m/o/new
echo x > {tdir}/m/added
$S umount {tdir}/m
$S export c -o {tdir}/c.tar
$S check
""")
    r = subprocess.run(["unshare", "-Urm", "sh", str(script)], capture_output=True, text=True,
                       env=dict(os.environ, STRATAFS=str(STRATAFS)))
    assert r.returncode == 0, r.stdout + r.stderr
    names = set(tarfile.open(tdir / "c.tar").getnames())
    assert {"d/.wh.a", "added", "o/new"} <= names
    assert "o/.wh..wh..opq" in names or "o/.wh.old" in names


def test_check_and_recovery(store, tdir):
    import fcntl
    strata(store, "prepare", "w")
    strata(store, "commit", "base", "w")
    # While another strata process is around (we hold its shared lock), nothing is
    # recovered, and check reports the debris.
    lock = open(store / "lock", "r+")
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        (store / "snapshots/999/fs").mkdir(parents=True)
        db = sqlite3.connect(store / "metadata.db")
        db.execute("INSERT INTO snapshots (key, kind, state, created, updated) "
                   "VALUES ('half', 'committed', 'creating', 0, 0)")
        hid = db.execute("SELECT id FROM snapshots WHERE key = 'half'").fetchone()[0]
        db.commit()
        db.close()
        (store / f"snapshots/{hid}/fs").mkdir(parents=True)
        (store / "tmp/junk").mkdir()
        r = strata(store, "check", ok=None)
        assert r.rc == 1 and not r.json["ok"]
        text = "\n".join(r.json["problems"])
        assert "999: content without a snapshot" in text
        assert "'half') is half-made" in text
        assert err_code(strata(store, "stat", "half", ok=False)) == "ENOENT"
        assert [s["key"] for s in strata(store, "ls").json] == ["base"]
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    # alone again: the next invocation rolls everything back
    assert [s["key"] for s in store_dirs_ok(store)] == ["base"]
    assert not (store / "snapshots/999").exists()
    assert not (store / f"snapshots/{hid}").exists()


@needs_root
def test_import_odd_but_valid_names_and_pax_xattrs(store, tdir):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in ("./a/", "a//b/", "./a/./b/c"):
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                t.addfile(ti)
            else:
                ti.size = 2
                ti.pax_headers = {"SCHILY.xattr.user.k": "v1",
                                  "SCHILY.xattr.trusted.overlay.opaque": "y"}
                t.addfile(ti, io.BytesIO(b"hi"))
    f = tdir / "odd.tar"
    f.write_bytes(buf.getvalue())
    strata(store, "import", "odd", f, "--label", "src=test")
    st = strata(store, "stat", "odd").json
    assert st["labels"] == {"src": "test"}
    fs = Path(st["path"])
    assert (fs / "a/b/c").read_bytes() == b"hi"
    assert os.getxattr(fs / "a/b/c", "user.k") == b"v1"
    # overlay-private xattrs from a tar are dropped: a layer cannot fake an opaque dir
    assert "trusted.overlay.opaque" not in os.listxattr(fs / "a/b/c")


def test_library_api(tdir):
    """A runtime links libstrata-driver instead of exec'ing: the public header stands alone."""
    lib = STRATA.parent / "libstrata-driver.a"
    if not lib.exists() or not shutil.which("cc"):
        pytest.skip("no library or compiler")
    src = tdir / "use.c"
    src.write_text(r"""
#include <stdio.h>
#include <string.h>
#include "strata.h"
static int count(const struct strata_snapshot *sn, void *ctx) { (void)sn; ++*(int *)ctx; return 0; }
int main(int argc, char **argv)
{
	struct strata *s;
	struct strata_snapshot sn;
	struct strata_mount_spec m;
	struct strata_label l = { "k", "v" };
	char err[512];
	int n = 0;
	(void)argc;
	if (strata_open(argv[1], &s, err, sizeof(err))) { fprintf(stderr, "%s\n", err); return 1; }
	if (strata_prepare(s, "a", NULL, &l, 1) || strata_commit(s, "base", "a", NULL, 0) ||
	    strata_prepare(s, "c", "base", NULL, 0) ||
	    strata_mounts(s, "c", STRATA_BACKEND_FUSE, &m) || strata_stat(s, "c", &sn)) {
		fprintf(stderr, "%s\n", strata_errmsg(s));
		return 1;
	}
	printf("%s %s %s %s\n", m.type, sn.parent, strata_kind_name(sn.kind), m.options[0]);
	strata_mount_spec_free(&m);
	strata_snapshot_free(&sn);
	if (strata_prepare(s, "c", "base", NULL, 0) != -17) return 2;
	printf("%s\n", strata_errmsg(s));
	strata_walk(s, count, &n);
	printf("%d\n", n);
	strata_close(s);
	return 0;
}
""")
    libs = sh("pkg-config", "--libs", "fuse3", "liblz4", "libxxhash", "libzstd", "zlib",
              "liblzma", "libarchive", "json-c", "sqlite3").stdout.split()
    exe = tdir / "use"
    san = ["-fsanitize=address,undefined"] if "san" in STRATA.parent.name else []
    sh("cc", *san, "-I", REPO_DRIVER, "-o", exe, src, lib, STRATA.parent / "libstrata.a",
       *libs, "-lattr", "-lacl", "-lpthread", "-lm")
    out = sh(exe, tdir / "store").stdout.splitlines()
    assert out[0].startswith("fuse3.stratafs base active lowerdir=")
    assert out[1] == "snapshot 'c' already exists"
    assert out[2] == "2"


@needs_root
def test_umount_after_stratafs_died(store, tdir):
    if not STRATAFS.exists():
        pytest.skip("stratafs not built")
    strata(store, "prepare", "w")
    strata(store, "commit", "base", "w")
    strata(store, "prepare", "c", "base")
    mnt = tdir / "m"
    mnt.mkdir()
    strata(store, "mount", "c", mnt, "--backend", "fuse")
    pids = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid.isdigit() and str(mnt).encode() in cmd and b"stratafs" in cmd[0]:
            pids.append(int(pid))
    assert pids, "no stratafs process for the mount"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.stat(mnt)
        except OSError:
            break       # ENOTCONN: the daemon is gone
        time.sleep(0.1)
    strata(store, "rm", "c", "--force")
    assert not mounted(mnt)
    store_dirs_ok(store)


def test_import_directory_metadata_last_entry_wins(store, tdir):
    layer = tdir / "dup.tar"
    layer.write_bytes(tar_bytes([
        F("x/deep/f"),                          # parents made implicitly first
        D("x/deep", mtime=2000),
        D("x", mtime=1000),
        D("x", mtime=3000, mode=0o700),         # listed again: this one counts
        D("./", mtime=5000, mode=0o711)]))
    strata(store, "import", "dup", layer)
    fs = Path(strata(store, "stat", "dup").json["path"])
    assert os.stat(fs / "x").st_mtime == 3000 and os.stat(fs / "x").st_mode & 0o777 == 0o700
    assert os.stat(fs / "x/deep").st_mtime == 2000
    assert os.stat(fs).st_mtime == 5000 and os.stat(fs).st_mode & 0o777 == 0o711
