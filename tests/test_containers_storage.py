"""A real runtime: Debian's containers-storage CLI, overlay driver, mount_program = the
implementation under test (storage.conf in a temp dir via CONTAINERS_STORAGE_CONF).

containers/storage starts the mount program with its own argv (relative l/ABC lowerdirs,
its own options), expects exit 0 = mounted, unmounts it, and reads the diff dirs back to
compute `changes` and `diff` -- so the layers stratafs writes must be what the overlay
driver expects."""

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import union

pytestmark = [pytest.mark.runtime,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not shutil.which("containers-storage"),
                                 reason="containers-storage is not installed")]


class Store:
    def __init__(self, root, mount_program):
        self.root = Path(root)
        self.conf = self.root / "storage.conf"
        self.conf.write_text(f"""[storage]
driver = "overlay"
graphroot = "{self.root}/graph"
runroot = "{self.root}/run"
[storage.options.overlay]
mount_program = "{mount_program}"
mountopt = "nodev"
""")
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(self.conf),
                        ASAN_OPTIONS="detect_leaks=0")
        self.mount_program = mount_program

    def __call__(self, *args, stdin=None, check=True, text=True):
        p = subprocess.run(["containers-storage", *args], env=self.env, input=stdin,
                           capture_output=True, text=text, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"containers-storage {' '.join(args)} -> {p.returncode}: "
                                 f"{p.stderr}")
        return p.stdout.strip() if text else p.stdout

    def mount(self, ident):
        path = Path(self("mount", ident))
        assert union.is_mounted(path), f"{path} not mounted after containers-storage mount"
        fstype = union.mount_fstype(path)
        want = "fuse." + os.path.basename(self.mount_program)
        assert fstype == want, f"mounted by {fstype}, not by the mount program ({want})"
        return path

    def unmount(self, ident, path):
        pids = union.pids_with_arg(path)
        self("unmount", ident)
        assert not union.is_mounted(path), "still mounted after containers-storage unmount"
        assert union.wait_gone(pids, 10), "mount program still running after unmount"

    def close(self):
        self("shutdown", "--force", check=False)
        union.cleanup_tree(self.root)


@pytest.fixture
def store(tdir, impl):
    s = Store(tdir, impl)
    yield s
    s.close()


def changes(store, layer):
    return sorted(store("changes", layer).splitlines())


def diff_members(store, layer):
    data = store("diff", layer, text=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name[2:] if m.name.startswith("./") else m.name.lstrip("/"): (m.type, tf.extractfile(m).read() if m.isfile() else None)
                for m in tf.getmembers()}


def test_layers_mount_write_diff(store):
    base = store("create-layer")
    p = store.mount(base)
    (p / "etc").mkdir()
    (p / "etc" / "conf").write_bytes(b"v1\n")
    (p / "bin").mkdir()
    (p / "bin" / "tool").write_bytes(b"tool\n")
    os.chmod(p / "bin" / "tool", 0o755)
    (p / "old").write_bytes(b"old\n")
    os.symlink("bin/tool", p / "link")
    store.unmount(base, p)
    assert changes(store, base) == sorted(['Add "/bin"', 'Add "/bin/tool"', 'Add "/etc"',
                                           'Add "/etc/conf"', 'Add "/link"', 'Add "/old"'])

    top = store("create-layer", base)
    p = store.mount(top)
    assert (p / "etc" / "conf").read_bytes() == b"v1\n"
    assert os.readlink(p / "link") == "bin/tool"
    with open(p / "etc" / "conf", "ab") as f:       # copy-up
        f.write(b"v2\n")
    os.unlink(p / "old")                              # whiteout
    (p / "new").write_bytes(b"new\n")
    os.chmod(p / "bin" / "tool", 0o700)              # metadata copy-up
    store.unmount(top, p)

    assert changes(store, top) == sorted([
        'Modify "/bin"', 'Modify "/bin/tool"', 'Modify "/etc"', 'Modify "/etc/conf"',
        'Delete "/old"', 'Add "/new"'])
    members = diff_members(store, top)
    assert members["etc/conf"] == (tarfile.REGTYPE, b"v1\nv2\n")
    assert members["new"] == (tarfile.REGTYPE, b"new\n")
    assert ".wh.old" in members, sorted(members)
    assert "old" not in members

    # the written layer reads back the same in a fresh mount
    p = store.mount(top)
    assert sorted(os.listdir(p)) == ["bin", "etc", "link", "new"]
    assert (p / "etc" / "conf").read_bytes() == b"v1\nv2\n"
    assert os.stat(p / "bin" / "tool").st_mode & 0o777 == 0o700
    store.unmount(top, p)


def test_image_container(store):
    base = store("create-layer")
    p = store.mount(base)
    (p / "app").mkdir()
    (p / "app" / "data").write_bytes(b"data\n")
    store.unmount(base, p)
    image = store("create-image", base)
    ctr = store("create-container", image)
    p = store.mount(ctr)
    assert (p / "app" / "data").read_bytes() == b"data\n"
    (p / "app" / "data").write_bytes(b"changed\n")
    (p / "run.log").write_bytes(b"log\n")
    store.unmount(ctr, p)
    info = store("container", ctr)
    layer = [ln.split(":", 1)[1].strip() for ln in info.splitlines()
             if ln.startswith("Layer:")][0]
    assert changes(store, layer) == sorted(['Modify "/app"', 'Modify "/app/data"',
                                            'Add "/run.log"'])
    store("delete-container", ctr)
    store("delete-image", image)


def test_import_layer_with_whiteouts(store, tdir):
    """Layers imported from OCI tars keep .wh. names on disk when a mount program is set;
    the mount must honour them."""
    base = store("create-layer")
    p = store.mount(base)
    for n in ("keep", "gone", "d/inner", "d/other", "opq/x"):
        (p / n).parent.mkdir(parents=True, exist_ok=True)
        (p / n).write_bytes(n.encode())
    store.unmount(base, p)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name, data=b"", kind=tarfile.REGTYPE):
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add(".wh.gone")
        add("d", kind=tarfile.DIRTYPE)
        add("d/.wh.inner")
        add("opq", kind=tarfile.DIRTYPE)
        add("opq/.wh..wh..opq")
        add("opq/y", b"y")
        add("added", b"added")
    layer = store("import-layer", base, stdin=buf.getvalue(), text=False).decode().strip()
    p = store.mount(layer)
    try:
        assert sorted(os.listdir(p)) == ["added", "d", "keep", "opq"]
        assert sorted(os.listdir(p / "d")) == ["other"]
        assert sorted(os.listdir(p / "opq")) == ["y"]
        # and writes on top of such a layer
        (p / "d" / "new").write_bytes(b"n")
        os.unlink(p / "d" / "other")
        assert sorted(os.listdir(p / "d")) == ["new"]
    finally:
        store.unmount(layer, p)
    assert 'Delete "/d/other"' in changes(store, layer)


def test_mount_program_argv(store):
    """What containers/storage sends (relative lowerdirs, its cwd, its options) is
    accepted: the daemon's argv is recorded for the report."""
    base = store("create-layer")
    mid = store("create-layer", base)
    top = store("create-layer", mid)
    p = store.mount(top)
    try:
        pids = union.pids_with_arg(p)
        assert pids, "no mount program process found"
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        print("mount program argv:", argv)
        (p / "x").write_bytes(b"x")
    finally:
        store.unmount(top, p)
    assert changes(store, top) == ['Add "/x"']
