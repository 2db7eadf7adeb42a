"""Helpers for the SquashFS image tests: build images with mksquashfs, mount them with
the kernel, and describe a tree in the same one-line-per-entry format that
build/sqfs-dump prints for an image, so any two readers can be compared."""
import contextlib
import os
import stat
import subprocess
import tempfile
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("STRATA_BUILD", os.path.join(REPO, "build"))


def tool(name):
    """Path to a build product, building the test-only tools on demand."""
    path = os.path.join(BUILD, name)
    if not os.path.exists(path) and name == "sqfs-dump":
        # build-san is what `make SAN=1` builds into (with the sanitizer flags)
        if os.path.realpath(BUILD) == os.path.realpath(os.path.join(REPO, "build-san")):
            cmd = ["make", "-C", REPO, "SAN=1", "build-san/" + name]
        else:
            cmd = ["make", "-C", REPO, "BUILD=" + BUILD, path]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def _xattrs(path):
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return "-"
    out = []
    for n in names:
        v = os.getxattr(path, n, follow_symlinks=False)
        out.append("%s=%s" % (n, v.hex()))
    return ",".join(out) or "-"


def _data(path, st):
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return "-"
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            crc = zlib.crc32(b, crc)
    return "%08x" % crc


def entry_line(root, rel, xattrs=True, nlink=True):
    path = os.path.join(root, rel.lstrip("/")) if rel != "/" else root
    st = os.lstat(path)
    size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
    return "\t".join([
        rel, "%o" % st.st_mode, str(st.st_uid), str(st.st_gid), str(int(st.st_mtime)),
        str(size), str(st.st_nlink) if nlink else "-",
        "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)),
        _data(path, st), _xattrs(path) if xattrs else "-"])


def manifest(root, xattrs=True, nlink=True):
    """Sorted lines describing every entry below root (root itself is "/")."""
    lines = [entry_line(root, "/", xattrs, nlink)]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            lines.append(entry_line(root, rel, xattrs, nlink))
    return sorted(lines)


def dump_image(image):
    """Lines from sqfs-dump (strata's reader) for an image, sorted; raises on errors."""
    r = subprocess.run([tool("sqfs-dump"), image], capture_output=True, text=True,
                       errors="surrogateescape")
    if r.returncode != 0:
        raise AssertionError("sqfs-dump %s failed (%d): %s" % (image, r.returncode,
                                                              r.stderr[-2000:]))
    out = []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) == 10 and f[9] != "-":
            f[9] = ",".join(sorted(f[9].split(",")))     # stored order -> name order
        out.append("\t".join(f))
    return sorted(out)


@contextlib.contextmanager
def kernel_mount(image, mnt=None):
    """The kernel's squashfs mount of image (read-only, loop), at mnt or a temp dir."""
    made = mnt is None
    mnt = tempfile.mkdtemp(prefix="sqfs-kmnt-") if made else str(mnt)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False, stderr=subprocess.DEVNULL)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", mnt], check=False)
        if made:
            os.rmdir(mnt)


def mksquashfs(src, out, *opts):
    subprocess.run(["mksquashfs", src, out, "-noappend", "-quiet", "-no-progress"]
                   + list(opts), check=True, stdout=subprocess.DEVNULL)
    return out
