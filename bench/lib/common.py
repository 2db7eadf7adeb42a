# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared machinery of the bench suite: the run context, cleanup, mounts, timing, progress.

Everything the suite sets up (mounts, daemons, network namespaces, veth links, temp dirs) is
registered with Cleanup the moment it exists, and Cleanup undoes it in reverse order from a
finally block -- also on Ctrl-C (SIGINT/SIGTERM are turned into KeyboardInterrupt).
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time


class NA(Exception):
    """A system or workload cannot run here; the message is the reason shown as n/a."""


def log(msg):
    Progress.current.clear()
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """One progress line on a TTY (rewritten in place); one line per step otherwise."""
    current = None

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.step = 0
        self.total = 0
        self.shown = False
        Progress.current = self

    def update(self, text, detail=False):
        """detail lines (run i/n) only rewrite the TTY line; a log gets one per step."""
        if detail and not self.tty:
            return
        el = time.monotonic() - self.t0
        line = "[%3d/%3d %4d:%02d] %s" % (self.step, self.total, el // 60, el % 60, text)
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150])
            self.shown = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def clear(self):
        if self.tty and self.shown:
            sys.stderr.write("\r\033[K")
            self.shown = False


Progress.current = Progress()


class Cleanup:
    """A stack of undo actions, run last-in first-out; failures are logged, never raised."""

    def __init__(self):
        self.stack = []

    def push(self, what, fn, *args):
        self.stack.append((what, fn, args))
        return len(self.stack) - 1

    def pop(self, token):
        """Run one action now (e.g. unmount before the next run) and forget it."""
        what, fn, args = self.stack[token]
        self.stack[token] = None
        self._run(what, fn, args)

    def _run(self, what, fn, args):
        try:
            fn(*args)
        except Exception as e:  # cleanup must go on whatever happens
            log("cleanup: %s: %s" % (what, e))

    def run_all(self):
        while self.stack:
            item = self.stack.pop()
            if item:
                self._run(*item)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def install_signal_handlers():
    # Explicitly, also SIGINT: a shell starting us in the background leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


def ignore_signals():
    """While cleaning up, a second Ctrl-C must not abort the cleanup half-way."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)


def sh(cmd, check=True, timeout=900, env=None, cwd=None, input=None):
    """Run a command, capture output; raise NA with the tail of stderr on failure."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=cwd, input=input, errors="replace")
    except FileNotFoundError:
        raise NA("%s not found" % cmd[0])
    except subprocess.TimeoutExpired:
        raise NA("%s timed out after %ds" % (os.path.basename(cmd[0]), timeout))
    if check and p.returncode != 0:
        err = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise NA("%s exited %d: %s" % (os.path.basename(cmd[0]), p.returncode,
                                       err[-1][:200] if err else "no output"))
    return p


def timed(cmd, **kw):
    """Wall time of one command in seconds (the command's own start-up included)."""
    t0 = time.perf_counter()
    p = sh(cmd, **kw)
    return time.perf_counter() - t0, p


def kv(text):
    """Parse 'a=1 b=2' lines (the C tools' output) into a dict of floats."""
    out = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


def umount(path):
    """FUSE first (fusermount3 -u), then the kernel's umount, then a lazy one."""
    if not is_mounted(path):
        return
    for cmd in (["fusermount3", "-u", path], ["umount", path]):
        for _ in range(20):
            if subprocess.run(cmd, capture_output=True).returncode == 0 or \
               not is_mounted(path):
                break
            time.sleep(0.1)
        if not is_mounted(path):
            return
    subprocess.run(["umount", "-l", path], capture_output=True)


def wait_mounted(path, proc=None, timeout=15.0):
    """Wait until PATH is a mount point; a FUSE daemon may fork or stay in the foreground."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if is_mounted(path):
            return
        if proc is not None and proc.poll() not in (None, 0):
            break
        time.sleep(0.02)
    raise NA("mount did not appear at %s" % path)


def rmtree(path):
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            subprocess.run(["rm", "-rf", "--one-file-system", path], capture_output=True)


def fresh_dir(path):
    rmtree(path)
    os.makedirs(path)
    return path


def drop_caches(ctx):
    """Cold-cache runs: write back, then drop page cache, dentries and inodes (root only)."""
    if ctx.cold_cmd:
        # Site-specific: e.g. a Lustre client's lock LRU, which drop_caches does not clear.
        subprocess.run(["sh", "-c", ctx.cold_cmd], capture_output=True)
    if not ctx.can_drop:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        ctx.can_drop = False
        return False


def summarize(samples):
    """median, min, max and relative spread ((max-min)/median) of a list of seconds."""
    med = statistics.median(samples)
    lo, hi = min(samples), max(samples)
    return {"median": med, "min": lo, "max": hi, "n": len(samples),
            "spread": (hi - lo) / med if med > 0 else 0.0}


def fmt_s(x):
    if x is None:
        return "n/a"
    if x >= 100:
        return "%.0f s" % x
    if x >= 1:
        return "%.2f s" % x
    if x >= 0.001:
        return "%.1f ms" % (x * 1e3)
    return "%.0f µs" % (x * 1e6)


def fmt_ratio(x):
    return "n/a" if x is None else "%.2f×" % x


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0
