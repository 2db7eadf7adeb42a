"""Helpers for tests/test_driver.py: run build/strata, build rootfs trees and OCI images
with umoci, compare trees."""

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("STRATA_BUILD", REPO / "build"))
STRATA = BUILD / "strata"
STRATAFS = BUILD / "stratafs"


class Result:
    def __init__(self, p):
        self.rc = p.returncode
        self.out = p.stdout
        self.err = p.stderr
        try:
            self.json = json.loads(p.stdout) if p.stdout.strip() else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return f"<rc={self.rc} out={self.out[:500]!r} err={self.err[:500]!r}>"


def strata(root, *args, ok=True, use_json=True, timeout=300, env=None):
    cmd = [str(STRATA), "--root", str(root)] + (["--json"] if use_json else []) + \
        [str(a) for a in args]
    e = dict(os.environ)
    e.setdefault("STRATAFS", str(STRATAFS))
    if env:
        e.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    r = Result(p)
    if ok is True:
        assert r.rc == 0, f"{cmd}: {r}"
    elif ok is False:
        assert r.rc != 0, f"{cmd} should have failed: {r}"
        if use_json:
            assert r.json and "error" in r.json, f"{cmd}: no JSON error: {r}"
    return r


def err_code(r):
    return r.json["error"]["code"]


def sh(*cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(c) for c in cmd], **kw)


# ---- trees ------------------------------------------------------------------------------

def _xattrs(path):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in sorted(names):
        if n.startswith(("trusted.overlay.", "user.overlay.", "security.")):
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            pass
    return out


def tree(root, mtimes=True, xattrs=True, skip=()):
    """{relpath: attributes} of everything below root (root itself excluded), plus the
    hard-link groups."""
    root = str(root)
    res = {}
    inodes = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if rel in skip or rel.split("/")[0] in skip:
                continue
            st = os.lstat(p)
            e = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                 "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    e["sha"] = hashlib.sha256(f.read()).hexdigest()
                e["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if mtimes and not stat.S_ISDIR(st.st_mode):
                e["mtime"] = int(st.st_mtime)
            if xattrs:
                e["xattrs"] = _xattrs(p)
            res[rel] = e
    res["<links>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return res


def diff_trees(a, b):
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return out


# ---- a rootfs with every file type ------------------------------------------------------

def make_rootfs(root, devices=True):
    root = Path(root)
    (root / "bin").mkdir(parents=True)
    (root / "etc/deep/er/still").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "etc/hostname").write_text("strata\n")
    (root / "etc/deep/er/still/file").write_bytes(os.urandom(70000))
    (root / "etc/emptyfile").write_bytes(b"")
    (root / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "setuid").write_text("#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "private").write_text("secret\n")
    os.chmod(root / "private", 0o600)
    os.chown(root / "private", 1234, 5678)
    os.chown(root / "etc/deep", 99, 98)
    os.chmod(root / "etc/deep", 0o750)
    (root / ("long-" + "x" * 150)).write_text("long name\n")
    (root / "ünïcödé").write_text("utf8\n")
    os.symlink("hostname", root / "etc/rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.link(root / "etc/hostname", root / "hardlink")
    os.mkfifo(root / "fifo")
    if devices:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "blk", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    (root / "xattr-file").write_text("x\n")
    os.setxattr(root / "xattr-file", "user.strata.test", b"value-1")
    os.setxattr(root / "empty", "user.dir.attr", b"d")
    (root / "to-delete").write_text("bye\n")
    (root / "dir-to-delete/sub").mkdir(parents=True)
    (root / "dir-to-delete/sub/f").write_text("f\n")
    (root / "becomes-dir").write_text("file first\n")
    (root / "replaced-dir").mkdir()
    (root / "replaced-dir/old1").write_text("1\n")
    (root / "replaced-dir/old2").write_text("2\n")
    os.utime(root / "etc/hostname", (1000000000, 1000000000))


def change_rootfs_1(root):
    """Second layer: deletions, a file turned into a directory, modifications."""
    root = Path(root)
    os.unlink(root / "to-delete")
    import shutil
    shutil.rmtree(root / "dir-to-delete")
    os.unlink(root / "becomes-dir")
    (root / "becomes-dir").mkdir()
    (root / "becomes-dir/inside").write_text("now a dir\n")
    (root / "etc/hostname").write_text("changed\n")
    (root / "added").write_bytes(os.urandom(5000))


def change_rootfs_2(root):
    """Third layer: a directory emptied and refilled, a symlink retargeted, a delete."""
    root = Path(root)
    import shutil
    shutil.rmtree(root / "replaced-dir")
    (root / "replaced-dir").mkdir()
    (root / "replaced-dir/new").write_text("new\n")
    os.unlink(root / "etc/rel-link")
    os.symlink("deep", root / "etc/rel-link")
    os.unlink(root / "fifo")


def umoci_image(work, rootfs_steps, tag="t"):
    """Builds an OCI layout with one layer per step (each step edits the rootfs).
    Returns the layout dir."""
    work = Path(work)
    img = work / "img"
    sh("umoci", "init", "--layout", img)
    sh("umoci", "new", "--image", f"{img}:{tag}")
    for i, step in enumerate(rootfs_steps):
        b = work / f"bundle{i}"
        sh("umoci", "unpack", "--image", f"{img}:{tag}", b)
        step(b / "rootfs")
        sh("umoci", "repack", "--image", f"{img}:{tag}", b)
        sh("rm", "-rf", b)
    return img


def umoci_unpack(img, dest, tag="t"):
    sh("umoci", "unpack", "--image", f"{img}:{tag}", dest)
    return Path(dest) / "rootfs"


def store_dirs_ok(root):
    """No debris: every snapshots/<id> belongs to a listed snapshot, tmp/ is empty."""
    root = Path(root)
    r = strata(root, "ls")
    ids = {Path(s["path"]).parent.name for s in r.json}
    on_disk = set(os.listdir(root / "snapshots"))
    assert on_disk == ids, f"orphans: {on_disk - ids}, missing: {ids - on_disk}"
    assert os.listdir(root / "tmp") == []
    c = strata(root, "check", ok=None)
    assert c.rc == 0 and c.json["ok"], c
    return r.json


def write_oci_layout(d, layers, tag="t"):
    """An OCI image layout from layer blobs: [(path, digest, diff_id, mediaType)]."""
    d = Path(d)
    blobs = d / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data):
        dg = hashlib.sha256(data).hexdigest()
        (blobs / dg).write_bytes(data)
        return {"digest": "sha256:" + dg, "size": len(data)}

    descs = []
    for path, digest, diff_id, mt in layers:
        data = Path(path).read_bytes()
        desc = put(data)
        assert desc["digest"] == digest
        descs.append(dict(desc, mediaType=mt))
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]}}
    cdesc = dict(put(json.dumps(cfg).encode()),
                 mediaType="application/vnd.oci.image.config.v1+json")
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": cdesc, "layers": descs}
    mdesc = dict(put(json.dumps(man).encode()),
                 mediaType="application/vnd.oci.image.manifest.v1+json",
                 annotations={"org.opencontainers.image.ref.name": tag})
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    (d / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return d
