# SPDX-License-Identifier: GPL-2.0-or-later
"""File-system workloads, run on every system's mount of the same stack.

Modes:
  warm   mount once, one warm-up run, then the measured runs (caches hot)
  cold   per run: fresh mount, drop caches (root), one measured run
  fresh  per run: fresh mount with an empty upper dir (write workloads), caches flushed

Native has no mount: write workloads run in a scratch directory on the same file system,
holding a copy of whatever the workload changes (so "rm -rf" removes the same tree).
"""
import os
import time

from common import NA, drop_caches, fresh_dir, kv, rmtree, sh, timed

# Time budget: a run longer than SLOW seconds caps that system's runs (3 warm, 2 cold or
# fresh); a cold/fresh run longer than VERY_SLOW leaves it at that one run.
SLOW = 5.0
VERY_SLOW = 30.0


def runs_after(first, runs):
    return 1 if first > VERY_SLOW else min(runs, 2) if first > SLOW else runs


class Workload:
    key = title = ""
    mode = "warm"
    write = False
    check = None            # "entries" / "bytes": must equal native's

    def runs(self, ctx):
        return ctx.runs_cold if self.mode != "warm" else ctx.runs

    def setup(self, ctx, path, native):
        """Untimed, before each measured run (fresh/cold) or once (warm)."""

    def run(self, ctx, path, native):
        """One measured run; returns (seconds, extra dict)."""
        raise NotImplementedError


def tool(ctx, name):
    return os.path.join(ctx.tools, name)


def run_tool(ctx, cmd, **kw):
    """C tool run: its own secs= (no process start-up) plus everything else it printed."""
    p = sh(cmd, timeout=ctx.timeout, **kw)
    res = kv(p.stdout)
    if "secs" not in res:
        raise NA("%s printed no timing" % os.path.basename(cmd[0]))
    return res["secs"], res


class WalkWarm(Workload):
    """The whole tree but bigdir/, which has its own row (and would drown the rest)."""
    key, title, check = "walk_warm", "tree walk, warm (lstat every entry)", "entries"

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "walk"), "tree"] +
                        [os.path.join(path, d) for d in ("usr", "small", "data")])


class WalkCold(WalkWarm):
    key, title, mode = "walk_cold", "tree walk, cold (fresh mount + drop caches)", "cold"


class StatStorm(Workload):
    key, title = "stat_storm", "stat storm (random paths, repeated)"

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "walk"), "stat", ctx.stat_list,
                              str(ctx.p["stat_rounds"])], cwd=path)


class ReaddirBig(Workload):
    key, title, check = "readdir_big", "readdir of a big directory spread over 3 layers", \
        "entries"

    def title_for(self, ctx):
        return "readdir of a %d-entry directory spread over 3 layers" % ctx.p["bigdir"]

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "walk"), "readdir", os.path.join(path, "bigdir")])


class PyImportWarm(Workload):
    key, title = "py_import_warm", "import ~130 Python modules from the mount, warm"

    def run(self, ctx, path, native):
        env = dict(os.environ, PYTHONHOME=os.path.join(path, "usr"))
        env.pop("PYTHONPATH", None)
        code = "import " + ", ".join(ctx.modules)
        secs, _ = timed(["/usr/bin/python3", "-S", "-B", "-s", "-c", code], env=env,
                        timeout=ctx.timeout)
        return secs, {"modules": len(ctx.modules)}


class PyImportCold(PyImportWarm):
    key, title, mode = "py_import_cold", "container start: import ~130 modules, cold", "cold"


class ReadAll(Workload):
    key, title, mode, check = "read_all", "read every file (stdlib + small files), cold", \
        "cold", "bytes"

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "walk"), "read", os.path.join(path, "usr"),
                              os.path.join(path, "small")])


class SeqReadWarm(Workload):
    key, title, check = "seq_read_warm", "sequential read of the big file, warm", "bytes"

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "walk"), "read", os.path.join(path, "data")])


class SeqReadCold(SeqReadWarm):
    key, title, mode = "seq_read_cold", "sequential read of the big file, cold", "cold"


class RandRead(Workload):
    key, title, mode = "rand_read", "random 4 KiB reads in the big file, cold", "cold"

    def run(self, ctx, path, native):
        return run_tool(ctx, [tool(ctx, "randread"), os.path.join(path, "data", "big.bin"),
                              str(ctx.p["randreads"])])


class WriteWorkload(Workload):
    mode, write = "fresh", True

    def target(self, ctx, path, native):
        """Where the workload writes: the mount, or native's scratch dir."""
        if not native:
            return path
        return fresh_dir(os.path.join(ctx.root, "native-scratch"))

    def setup(self, ctx, path, native):
        # Last run's dirty data must not be written back inside this run's timing.
        os.sync()


def dd_write(ctx, out, conv):
    """write_mib MiB of zeros to `out` with dd (conv=...), timed."""
    secs, _ = timed(["dd", "if=/dev/zero", "of=" + out, "bs=1M",
                     "count=%d" % ctx.p["write_mib"], "conv=" + conv, "status=none"],
                    timeout=ctx.timeout)
    return secs, {"bytes": ctx.p["write_mib"] << 20}


class SeqWrite(WriteWorkload):
    key, title = "seq_write", "sequential write of a new file (fsync)"

    def run(self, ctx, path, native):
        return dd_write(ctx, os.path.join(self.target(ctx, path, native), "out.bin"), "fsync")


class CopyUp(WriteWorkload):
    key, title = "copyup", "copy-up: append 1 byte to the big lower file (fsync)"

    def run(self, ctx, path, native):
        big = os.path.join(path, "data", "big.bin")
        if native:
            # Native has no copy-up; the equivalent work is a copy of the file.
            dst = os.path.join(self.target(ctx, path, native), "big.bin")
            secs, _ = timed(["cp", big, dst], timeout=ctx.timeout)
            t2, _ = timed(["sync", "-f", dst])
            return secs + t2, {}
        secs, _ = timed(["dd", "of=" + big, "oflag=append", "conv=notrunc,fsync",
                         "status=none"], input="x", timeout=ctx.timeout)
        return secs, {}


class CopiedUpWrite(WriteWorkload):
    key, title = "copyup_write", "sequential write over the copied-up big file (fsync)"

    def setup(self, ctx, path, native):
        big = os.path.join(path, "data", "big.bin")
        if native:              # the same file, as a plain copy in the scratch dir
            self.file = os.path.join(self.target(ctx, path, native), "big.bin")
            sh(["cp", big, self.file], timeout=ctx.timeout)
        else:                   # an open for writing copies it up (untimed)
            self.file = big
            with open(big, "r+b"):
                pass
        super().setup(ctx, path, native)

    def run(self, ctx, path, native):
        return dd_write(ctx, self.file, "notrunc,fsync")


class Untar(WriteWorkload):
    key, title = "untar", "untar small files into the mount"

    def run(self, ctx, path, native):
        dst = os.path.join(self.target(ctx, path, native), "untar")
        os.mkdir(dst)
        secs, _ = timed(["tar", "-xf", ctx.untar, "-C", dst], timeout=ctx.timeout)
        return secs, {"files": ctx.p["untar_files"]}


class Build(WriteWorkload):
    key, title = "build", "build-like: make -j2 of a C project whose sources are in the layers"

    def run(self, ctx, path, native):
        out = os.path.join(self.target(ctx, path, native), "build-out")
        os.mkdir(out)
        src = os.path.join(path, "src")
        secs, _ = timed(["make", "-s", "-j2", "-f", os.path.join(src, "Makefile"),
                         "SRC=" + src, "OUT=" + out], timeout=ctx.timeout)
        if not os.path.exists(os.path.join(out, "prog")):
            raise NA("the build made no program")
        return secs, {"files": ctx.p["build_files"]}


class RmRf(WriteWorkload):
    key, title = "rm_rf", "rm -rf of a lower tree (small/, spread over layers)"

    def run(self, ctx, path, native):
        victim = os.path.join(path, "small")
        if native:
            victim = os.path.join(self.target(ctx, path, native), "small")
            sh(["cp", "-a", os.path.join(path, "small"), victim], timeout=ctx.timeout)
            os.sync()
        secs, _ = timed(["rm", "-rf", victim], timeout=ctx.timeout)
        if os.path.exists(victim):
            raise NA("rm -rf left %s behind" % victim)
        return secs, {}


class Mdtest(WriteWorkload):
    key, title = "mdtest", "parallel metadata (mdtest: create/stat/open/unlink)"

    def title_for(self, ctx):
        return "parallel metadata, %d processes (create/stat/open/unlink)" % \
            ctx.p["mdtest_procs"]

    def run(self, ctx, path, native):
        d = os.path.join(self.target(ctx, path, native), "md")
        os.mkdir(d)
        p = sh([tool(ctx, "mdtest"), "-d", d, "-p", str(ctx.p["mdtest_procs"]),
                "-n", str(ctx.p["mdtest_files"])], timeout=ctx.timeout)
        extra, secs = {}, None
        for line in p.stdout.splitlines():
            r = kv(line)
            if r.get("phase") == "total":
                secs = r["secs"]
            elif "phase" in r:
                extra["%s_ops_s" % r["phase"]] = r["ops_per_s"]
        if secs is None:
            raise NA("mdtest printed no total")
        return secs, extra


ALL = [WalkWarm(), WalkCold(), StatStorm(), ReaddirBig(), PyImportWarm(), PyImportCold(),
       ReadAll(), SeqReadWarm(), SeqReadCold(), RandRead(), SeqWrite(), CopyUp(),
       CopiedUpWrite(), Untar(), Build(), RmRf(), Mdtest()]


def save_logs(ctx, base, name):
    """A failed system's daemon logs (tails) go next to the report, for the bug report."""
    logs = []
    for dp, dn, fn in os.walk(base):
        dn[:] = [d for d in dn if d not in ("mnt", "lower", "upper", "work")]
        logs += [os.path.join(dp, f) for f in fn if f.endswith(".log")]
    for lg in logs:
        try:
            with open(lg, "rb") as f:
                f.seek(max(0, os.path.getsize(lg) - 20000))
                tail = f.read()
            os.makedirs(os.path.join(ctx.outdir, "logs"), exist_ok=True)
            with open(os.path.join(ctx.outdir, "logs", "%s-%s" % (name, os.path.basename(lg))),
                      "wb") as f:
                f.write(tail)
        except OSError:
            pass


class _Run:
    """One system's side of an interleaved measurement."""

    def __init__(self, ctx, w, system):
        self.system, self.native = system, system.key == "native"
        self.base = os.path.join(ctx.root, "mnt", system.key)
        self.samples, self.extra = [], {}
        self.runs = w.runs(ctx)
        self.mount = None               # warm mode: mounted once
        self.failed = None              # NA once it went wrong

    def guard(self, ctx, w, fn):
        """Anything going wrong (a daemon dying, ENOTCONN, a timeout) becomes NA for this
        system, with its daemon logs saved, never a crash of the suite."""
        if self.failed:
            return
        try:
            fn()
            return
        except NA as e:
            self.failed = e
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            self.failed = NA("failed: %s: %s" % (type(e).__name__, e))
        save_logs(ctx, self.base, "%s-%s" % (w.key, self.system.key))
        self.close()

    def close(self):
        if self.mount:
            m, self.mount = self.mount, None
            m.close()


def measure_all(ctx, w, systems, src):
    """Samples and extras of one workload on every system, as {key: (samples, extra)} or
    {key: NA}.  Runs are interleaved -- run i of every system before run i+1 of any -- so
    that a machine getting slower or faster during the workload (write-back of the data
    set, another tenant of the VM) shifts every system alike and the ratios hold."""
    out, live = {}, []
    for s in systems:
        try:
            if w.write and not s.writable:
                raise NA("read-only")
            s.check(ctx)
        except NA as e:
            out[s.key] = e
            continue
        live.append(_Run(ctx, w, s))
    try:
        if w.mode == "warm":
            for r in live:
                r.guard(ctx, w, lambda r=r: _warm_up(ctx, w, r, src))
        i = 0
        while any(not r.failed and i < r.runs for r in live):
            for r in live:
                if i < r.runs:
                    r.guard(ctx, w, lambda r=r: _one_run(ctx, w, r, src, i))
            i += 1
    finally:
        for r in live:
            r.close()
            rmtree(r.base)
    for r in live:
        out[r.system.key] = r.failed or (r.samples, r.extra)
    return out


def _warm_up(ctx, w, r, src):
    r.mount = r.system.mount(ctx, src, fresh_dir(r.base))
    w.setup(ctx, r.mount.path, r.native)
    ctx.progress.update("%s · %s · warm-up" % (w.key, r.system.key), True)
    t0 = time.perf_counter()
    w.run(ctx, r.mount.path, r.native)
    if time.perf_counter() - t0 > SLOW:
        r.runs = min(r.runs, 3)         # a slow system: fewer runs, same warm-up


def _one_run(ctx, w, r, src, i):
    ctx.progress.update("%s · %s · run %d/%d" % (w.key, r.system.key, i + 1, r.runs), True)
    if w.mode == "warm":
        secs, r.extra = w.run(ctx, r.mount.path, r.native)
        r.samples.append(secs)
        return
    # cold / fresh: a mount of its own; setup and run back to back (workloads keep what
    # setup made for run, e.g. CopiedUpWrite.file)
    m = r.system.mount(ctx, src, fresh_dir(r.base))
    try:
        w.setup(ctx, m.path, r.native)
        if w.mode == "cold":
            drop_caches(ctx)
        secs, r.extra = w.run(ctx, m.path, r.native)
        r.samples.append(secs)
    finally:
        m.close()
    if i == 0:
        r.runs = runs_after(secs, r.runs)
