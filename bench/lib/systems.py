# SPDX-License-Identifier: GPL-2.0-or-later
"""The systems compared side by side: how each one mounts the same layer stack or image.

A system mounts a Source (layers as directories, top first; one SquashFS image of the merged
view; a native copy of the merged view) at a fresh scratch dir and returns a Mount.  Every
mount, FUSE daemon and loop device is registered with the run's Cleanup before anything else
can fail, so Ctrl-C at any point leaves nothing behind.
"""
import os
import subprocess

from common import NA, fresh_dir, is_mounted, sh, umount, wait_mounted


class Source:
    def __init__(self, layers, image, native, where="local disk"):
        self.layers = layers        # top first, like lowerdir=
        self.image = image          # SquashFS image of the merged view
        self.native = native        # plain directory holding the merged view
        self.where = where


class Mount:
    """A mounted system: .path is the merged view; close() undoes everything it set up."""

    def __init__(self, ctx, path):
        self.ctx = ctx
        self.path = path
        self.tokens = []

    def add(self, what, fn, *args):
        self.tokens.append(self.ctx.cleanup.push(what, fn, *args))

    def close(self):
        while self.tokens:
            self.ctx.cleanup.pop(self.tokens.pop())


def _fuse_down(mnt, holder):
    """Unmount first (the daemon then exits by itself), then make sure the daemon is gone."""
    umount(mnt)
    proc = holder.get("proc")
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fuse_mount(ctx, m, cmd, mnt, log):
    """Start a FUSE daemon (daemonizing or not) and wait for its mount."""
    holder = {}
    m.add("unmount " + mnt, _fuse_down, mnt, holder)
    with open(log, "w") as lf:
        try:
            holder["proc"] = subprocess.Popen(cmd, stdout=lf, stderr=lf,
                                              stdin=subprocess.DEVNULL,
                                              start_new_session=True)
        except OSError as e:
            raise NA("%s: %s" % (cmd[0], e.strerror))
    try:
        wait_mounted(mnt, holder["proc"])
    except NA:
        with open(log, errors="replace") as lf:
            tail = lf.read().strip().splitlines()
        raise NA("%s did not mount: %s" % (os.path.basename(cmd[0]),
                                           tail[-1][:200] if tail else "no output"))
    return mnt


def kernel_mount(m, args, mnt):
    m.add("umount " + mnt, umount, mnt)
    sh(["mount"] + args + [mnt])
    if not is_mounted(mnt):
        raise NA("mount did not appear at %s" % mnt)


def _dirs(base):
    return (fresh_dir(os.path.join(base, "upper")), fresh_dir(os.path.join(base, "work")),
            fresh_dir(os.path.join(base, "mnt")))


class System:
    key = label = ""
    kind = "dir"            # "dir": layers as directories; "image": one SquashFS image
    writable = True
    strata = False
    needs = ()              # executables that must exist

    def check(self, ctx):
        for exe in self.needs:
            path = exe(ctx) if callable(exe) else exe
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise NA("%s not built/installed" % os.path.relpath(path, ctx.repo)
                         if path.startswith(ctx.repo) else "%s missing" % path)

    def mount(self, ctx, src, base):
        raise NotImplementedError


class Native(System):
    key, label = "native", "native dir"

    def mount(self, ctx, src, base):
        return Mount(ctx, src.native)


class KernelOverlay(System):
    key, label = "kovl", "kernel overlay"

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        m = Mount(ctx, mnt)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (":".join(src.layers), up, wk)
        kernel_mount(m, ["-t", "overlay", "overlay", "-o", opts], mnt)
        return m


class FuseOverlayfs(System):
    key, label = "fovl", "fuse-overlayfs"
    needs = ("/usr/bin/fuse-overlayfs",)

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        m = Mount(ctx, mnt)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (":".join(src.layers), up, wk)
        fuse_mount(ctx, m, ["fuse-overlayfs", "-o", opts, mnt], mnt,
                   os.path.join(base, "fovl.log"))
        return m


def stratafs_bin(ctx):
    return ctx.bin("stratafs")


class StratafsDir(System):
    key, label = "stratafs", "stratafs (dirs)"
    strata = True
    needs = (stratafs_bin,)
    extra_opts = ""

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        m = Mount(ctx, mnt)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s%s" % (":".join(src.layers), up, wk,
                                                        self.extra_opts)
        fuse_mount(ctx, m, [stratafs_bin(ctx), "-o", opts, mnt], mnt,
                   os.path.join(base, "stratafs.log"))
        return m


class StratafsDirNoPassthrough(StratafsDir):
    """The same with the kernel passthrough off: every READ/WRITE through the daemon."""
    key, label = "stratafs-nopt", "stratafs (dirs, passthrough=off)"
    extra_opts = ",passthrough=off"
    fs_only = True              # the network/latency groups compare metadata, not data paths


class KernelSquashfs(System):
    key, label = "ksq", "kernel squashfs"
    kind, writable = "image", False

    def mount(self, ctx, src, base):
        mnt = fresh_dir(os.path.join(base, "mnt"))
        m = Mount(ctx, mnt)
        kernel_mount(m, ["-t", "squashfs", "-o", "loop,ro", src.image], mnt)
        return m


class KernelSquashOverlay(System):
    key, label = "ksq+kovl", "kernel squashfs+overlay"
    kind = "image"

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        low = fresh_dir(os.path.join(base, "lower"))
        m = Mount(ctx, mnt)
        kernel_mount(m, ["-t", "squashfs", "-o", "loop,ro", src.image], low)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (low, up, wk)
        kernel_mount(m, ["-t", "overlay", "overlay", "-o", opts], mnt)
        return m


class SquashfuseLL(System):
    key, label = "sqfuse_ll", "squashfuse_ll"
    kind, writable = "image", False
    needs = ("/usr/bin/squashfuse_ll",)

    def mount(self, ctx, src, base):
        mnt = fresh_dir(os.path.join(base, "mnt"))
        m = Mount(ctx, mnt)
        fuse_mount(ctx, m, ["squashfuse_ll", "-f", src.image, mnt], mnt,
                   os.path.join(base, "sqfuse_ll.log"))
        return m


class SquashfuseFovl(System):
    key, label = "sqfuse+fovl", "squashfuse+fuse-overlayfs"
    kind = "image"
    needs = ("/usr/bin/squashfuse", "/usr/bin/fuse-overlayfs")

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        low = fresh_dir(os.path.join(base, "lower"))
        m = Mount(ctx, mnt)
        fuse_mount(ctx, m, ["squashfuse", "-f", src.image, low], low,
                   os.path.join(base, "sqfuse.log"))
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (low, up, wk)
        fuse_mount(ctx, m, ["fuse-overlayfs", "-o", opts, mnt], mnt,
                   os.path.join(base, "fovl.log"))
        return m


class StratafsImage(System):
    key, label = "stratafs-img", "stratafs (image)"
    kind, strata = "image", True
    needs = (stratafs_bin,)

    def mount(self, ctx, src, base):
        up, wk, mnt = _dirs(base)
        m = Mount(ctx, mnt)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (src.image, up, wk)
        fuse_mount(ctx, m, [stratafs_bin(ctx), "-o", opts, mnt], mnt,
                   os.path.join(base, "stratafs.log"))
        return m


class StratafsImageRO(System):
    """The image alone, read-only: what the kernel's squashfs and squashfuse_ll mount."""
    key, label = "stratafs-img-ro", "stratafs (image, read-only)"
    kind, strata, writable = "image", True, False
    needs = (stratafs_bin,)

    def mount(self, ctx, src, base):
        mnt = fresh_dir(os.path.join(base, "mnt"))
        m = Mount(ctx, mnt)
        fuse_mount(ctx, m, [stratafs_bin(ctx), "-o", "lowerdir=%s" % src.image, mnt], mnt,
                   os.path.join(base, "stratafs.log"))
        return m


ALL = [Native(), KernelOverlay(), FuseOverlayfs(), StratafsDir(), StratafsDirNoPassthrough(),
       KernelSquashfs(),
       KernelSquashOverlay(), SquashfuseLL(), SquashfuseFovl(), StratafsImage(),
       StratafsImageRO()]
