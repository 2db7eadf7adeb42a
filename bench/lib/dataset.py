# SPDX-License-Identifier: GPL-2.0-or-later
"""The layer stack every system reads: three layers (top first L2, L1, L0) as directories, a
native copy of their merged view, and one SquashFS image of that view.

  L0 (base)  the Python 3.11 stdlib (part of it), data/big.bin, small/dNNN/fNNNN, a third of
             bigdir/
  L1         more stdlib packages and top-level modules, rewritten and whited-out small files,
             a third of bigdir/
  L2 (top)   the rest of the stdlib, an opaque directory, a third of bigdir/

So a lookup in usr/lib/python3.11 merges three layers, like a real image whose Python came
in several layers.  The merged view is taken from the kernel's overlayfs (the reference).
"""
import os
import random
import shutil
import stat
import subprocess

from common import NA, fresh_dir, is_mounted, log, rmtree, sh, umount

PYSRC = "/usr/lib/python3.11"
PYREL = "usr/lib/python3.11"

# Packages that arrive in the upper layers (the rest stays in L0).
PKG_L1 = {"json", "email", "http", "urllib", "xml", "xmlrpc", "html", "ctypes", "sqlite3"}
PKG_L2 = {"logging", "asyncio", "unittest", "importlib", "concurrent", "collections",
          "encodings", "zoneinfo", "tomllib"}

# ~130 stdlib modules a Python application imports at start (all pure Python or lib-dynload).
MODULES = """abc argparse ast asyncio base64 bdb binascii bisect bz2 calendar cmd code codecs
codeop collections colorsys configparser contextlib contextvars copy copyreg csv ctypes
dataclasses datetime decimal difflib dis doctest email email.mime.text email.parser
encodings.idna enum filecmp fileinput fnmatch fractions ftplib functools gettext glob graphlib
gzip hashlib heapq hmac html html.parser http.client http.cookies http.server imaplib
importlib.metadata inspect io ipaddress json json.decoder keyword linecache locale logging
logging.handlers lzma mailbox mimetypes netrc numbers operator optparse pathlib pickle
pickletools pkgutil platform plistlib poplib pprint profile pstats queue quopri random re
reprlib rlcompleter sched secrets selectors shelve shlex shutil signal smtplib socket
socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable tabnanny
tarfile tempfile textwrap threading timeit token tokenize tomllib trace traceback tracemalloc
types typing unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref
xml.dom.minidom xml.etree.ElementTree xml.sax xmlrpc.client zipapp zipfile zipimport
zoneinfo""".split()

QUICK = dict(small_dirs=10, small_per_dir=100, bigdir=3000, big_mib=32, untar_files=500,
             stat_paths=1000, stat_rounds=3, randreads=1000, mdtest_procs=2, mdtest_files=100,
             write_mib=32, build_files=8)
FULL = dict(small_dirs=100, small_per_dir=100, bigdir=100000, big_mib=1024, untar_files=20000,
            stat_paths=20000, stat_rounds=5, randreads=20000, mdtest_procs=4,
            mdtest_files=2000, write_mib=1024, build_files=48)


def _layer_of(name):
    """Which layer a top-level stdlib entry goes to: packages by name, modules by hash."""
    stem = name.split(".")[0]
    if stem in PKG_L1:
        return 1
    if stem in PKG_L2:
        return 2
    if "." in name and stem not in ("__future__",):
        return sum(stem.encode()) % 3
    return 0


def _copy_python(layers):
    """Spread /usr/lib/python3.11 over the layers; __pycache__ entries follow their source."""
    for lay in layers:
        os.makedirs(os.path.join(lay, PYREL, "__pycache__"), exist_ok=True)
    for name in sorted(os.listdir(PYSRC)):
        if name in ("__pycache__", "dist-packages", "site-packages", "test"):
            continue
        src = os.path.join(PYSRC, name)
        dst = os.path.join(layers[_layer_of(name)], PYREL, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    for name in sorted(os.listdir(os.path.join(PYSRC, "__pycache__"))):
        dst = os.path.join(layers[_layer_of(name.split(".")[0] + ".py")], PYREL, "__pycache__",
                           name)
        shutil.copy2(os.path.join(PYSRC, "__pycache__", name), dst)
    for lay in layers:
        shutil.copystat(PYSRC, os.path.join(lay, PYREL))


def _small_files(rng, root, dirs, per_dir):
    for d in range(dirs):
        dd = os.path.join(root, "small", "d%03d" % d)
        os.makedirs(dd)
        for i in range(per_dir):
            with open(os.path.join(dd, "f%04d" % i), "wb") as f:
                f.write(rng.randbytes(rng.randint(256, 2048)).hex().encode())


MAKEFILE = """\
# bench: the build-like workload.  make -f SRC/Makefile SRC=... OUT=...
SRC ?= .
OUT ?= out
OBJS = $(patsubst $(SRC)/%.c,$(OUT)/%.o,$(sort $(wildcard $(SRC)/*.c)))
$(OUT)/prog: $(OBJS)
	$(CC) -o $@ $^
$(OUT)/%.o: $(SRC)/%.c $(wildcard $(SRC)/include/*.h)
	$(CC) -O1 -I$(SRC)/include -c -o $@ $<
"""


def _c_project(rng, l0, l1, n):
    """src/: n C files and 12 headers that include each other, in the base layer, with two
    headers (one new, one replacing a base one) in the layer above: a compiler opens every
    header from every unit, so lookups and opens of lower files dominate the union's share."""
    inc0, inc1 = os.path.join(l0, "src", "include"), os.path.join(l1, "src", "include")
    os.makedirs(inc0)
    os.makedirs(inc1)
    for h in range(12):
        body = ["#pragma once"] + ['#include "h%02d.h"' % d for d in range(h) if d % 3 == h % 3]
        body += ["static inline long h%02d_f%d(long x) { return x * %d + %d; }" %
                 (h, k, rng.randint(2, 99), rng.randint(0, 999)) for k in range(20)]
        with open(os.path.join(inc0, "h%02d.h" % h), "w") as f:
            f.write("\n".join(body) + "\n")
    with open(os.path.join(inc1, "h05.h"), "w") as f:       # replaces the base's h05.h
        f.write("#pragma once\n#include \"config.h\"\n" + "".join(
            "static inline long h05_f%d(long x) { return x + CONFIG_K; }\n" % k
            for k in range(20)))
    with open(os.path.join(inc1, "config.h"), "w") as f:
        f.write("#pragma once\n#define CONFIG_K 7\n")
    for i in range(n):
        hs = rng.sample(range(12), 6)
        lines = ['#include "h%02d.h"' % h for h in hs] + ["#include <stdio.h>",
                                                          "#include <string.h>"]
        lines += ["long u%03d(long x);" % j for j in range(n)] if i == 0 else []
        lines.append("long u%03d(long x) {" % i)
        lines.append("    long r = x;")
        lines += ["    r += h%02d_f%d(r);" % (h, k) for h in hs for k in range(0, 20, 4)]
        lines.append("    return r;\n}")
        if i == 0:
            lines.append("int main(void) {\n    long r = 0;")
            lines += ["    r += u%03d(%d);" % (j, j) for j in range(n)]
            lines.append('    printf("%ld\\n", r);\n    return 0;\n}')
        with open(os.path.join(l0, "src", "u%03d.c" % i), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(l0, "src", "Makefile"), "w") as f:
        f.write(MAKEFILE)


def _whiteout(path):
    """An overlay whiteout as the kernel writes it: a 0/0 character device (root only)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return True
    except OSError:
        return False


def _upper_changes(rng, layers, p):
    l0, l1, l2 = layers
    whiteouts = 0
    for d in range(p["small_dirs"]):
        rel = os.path.join("small", "d%03d" % d)
        os.makedirs(os.path.join(l1, rel), exist_ok=True)
        with open(os.path.join(l1, rel, "f0003"), "wb") as f:   # rewritten in L1
            f.write(b"rewritten in L1\n" * 10)
        whiteouts += _whiteout(os.path.join(l1, rel, "f0007"))
    # An opaque directory in L2 hides everything below it in L0/L1.
    opq = os.path.join(l2, "small", "d001")
    os.makedirs(opq)
    for i in range(10):
        with open(os.path.join(opq, "g%02d" % i), "w") as f:
            f.write("from L2\n")
    try:
        os.setxattr(opq, "trusted.overlay.opaque", b"y")
    except OSError:
        pass
    return whiteouts


def _bigdir(layers, n):
    """n empty files in one directory, a third in each layer."""
    for li, lay in enumerate(layers):
        d = os.path.join(lay, "bigdir")
        os.makedirs(d, exist_ok=True)
        for i in range(li, n, 3):
            open(os.path.join(d, "e%06d" % i), "wb").close()


def _bigfile(rng, path, mib):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    chunk = rng.randbytes(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            # Different per MiB (no dedup), not compressible: the data path, not the codec.
            f.write(chunk[i % 4096:] + chunk[:i % 4096])


def _merge(ctx, layers, native):
    """The merged view, as the kernel overlay shows it, copied to a plain directory."""
    mnt = fresh_dir(os.path.join(ctx.root, "merge-mnt"))
    tok = ctx.cleanup.push("umount " + mnt, umount, mnt)
    sh(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(layers), mnt])
    if not is_mounted(mnt):
        raise NA("kernel overlay mount for the merged view failed")
    sh(["cp", "-a", mnt + "/.", native])
    ctx.cleanup.pop(tok)
    rmtree(mnt)


def _untar_src(ctx, rng, n):
    src = fresh_dir(os.path.join(ctx.root, "untar-src"))
    for i in range(n):
        d = os.path.join(src, "u%03d" % (i // 200))
        if i % 200 == 0:
            os.makedirs(d)
        with open(os.path.join(d, "x%05d" % i), "wb") as f:
            f.write(rng.randbytes(rng.randint(100, 1500)))
    tar = os.path.join(ctx.root, "untar.tar")
    sh(["tar", "-cf", tar, "-C", src, "."])
    rmtree(src)
    return tar


def _stat_list(ctx, rng, native, n):
    paths = []
    for dirpath, dirnames, filenames in os.walk(native):
        rel = os.path.relpath(dirpath, native)
        if rel.startswith("bigdir"):
            continue
        paths += [os.path.normpath(os.path.join(rel, x)) for x in dirnames + filenames]
    rng.shuffle(paths)
    lst = os.path.join(ctx.root, "stat.list")
    with open(lst, "w") as f:
        f.write("\n".join(paths[:n]) + "\n")
    return lst


def check_modules(ctx, native):
    """Keep the modules this Python can import from the native tree (the same set for all)."""
    env = dict(os.environ, PYTHONHOME=os.path.join(native, "usr"))
    ok = []
    for m in MODULES:
        p = subprocess.run(["/usr/bin/python3", "-S", "-B", "-s", "-c", "import " + m],
                           env=env, capture_output=True)
        if p.returncode == 0:
            ok.append(m)
    return ok


def build(ctx):
    """Create layers, native copy, image, tar and lists under ctx.root/data."""
    p = ctx.p
    rng = random.Random(20261123)
    data = fresh_dir(os.path.join(ctx.root, "data"))
    layers = [fresh_dir(os.path.join(data, "layers", n)) for n in ("L2", "L1", "L0")]
    l2, l1, l0 = layers
    log("dataset: layers under %s" % data)
    _copy_python([l0, l1, l2])
    _small_files(rng, l0, p["small_dirs"], p["small_per_dir"])
    _c_project(rng, l0, l1, p["build_files"])
    ctx.whiteouts = _upper_changes(rng, [l0, l1, l2], p)
    _bigdir([l0, l1, l2], p["bigdir"])
    _bigfile(rng, os.path.join(l0, "data", "big.bin"), p["big_mib"])
    native = fresh_dir(os.path.join(data, "native"))
    _merge(ctx, layers, native)
    image = os.path.join(data, "image.sqfs")
    log("dataset: image (mksquashfs -comp lz4) of the merged view")
    sh(["mksquashfs", native, image, "-comp", "lz4", "-processors", "2", "-noappend",
        "-quiet", "-no-progress"])
    ctx.untar = _untar_src(ctx, rng, p["untar_files"])
    ctx.stat_list = _stat_list(ctx, rng, native, p["stat_paths"])
    ctx.modules = check_modules(ctx, native)
    ctx.data = data
    return layers, image, native
