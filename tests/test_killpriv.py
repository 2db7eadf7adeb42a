"""Kill-privileges semantics: stratafs against the kernel's overlayfs.

When a file's data or owner changes, the kernel "kills privileges" the old file carried:
it clears the set-user-ID bit, the set-group-ID bit (when it is a real sgid: group execute
set, or the writer neither in the file's group nor holding CAP_FSETID) and removes the
security.capability xattr.  Whether it does depends on the operation (write, truncate,
open with O_TRUNC, chown) and on who does it (CAP_FSETID, group membership).  Getting it
wrong either way matters: a set-id binary or a file capability that survives an
unprivileged user's rewrite is a privilege escalation; bits that root's own write strips
break images.  On the kernel overlay the decision is taken on the overlay inode with the
caller's credentials and carried out on the upper file (copied up first if need be).

stratafs must behave exactly like that.  Each case here builds the same one-file stack --
the file in the lower layer (the action copies it up) or already in the upper layer --
runs the same steps on the kernel overlay and on stratafs, once with FUSE passthrough
where the kernel allows it and once with passthrough=off (the splice path; write()s then
reach the daemon), and compares

  * the outcome of every step (a value, or the errno name),
  * the file as seen through the mount -- mode, owner, size, content, security.capability
    -- at the end and wherever a case records it between steps, and
  * the file in the upper layer after unmount (what a later mount, or the kernel, sees).

The kernel is the reference; cases whose rule is long documented also check the
kernel's own outcome (`expect` in the table), so a broken environment -- no CAP_FSETID
semantics, an unprivileged child that is not -- fails instead of comparing garbage.

The non-root steps of a case run in a child process started with setpriv: by default
`setpriv --reuid=1000 --regid=1000 --clear-groups` (no supplementary groups, no
capabilities), for some cases with a supplementary group, with CAP_FSETID alone, or as root
without CAP_FSETID -- the credentials are checked when the child starts.  It is driven one
system call at a time, so root can act between its steps (chmod_while_open).

The table of cases is CASES below, with the kernel's outcome for each.  With
STRATAFS=/usr/bin/fuse-overlayfs the cases where fuse-overlayfs differs are expected to
fail (`fo_differs`), and the passthrough=off runs are skipped.
"""

import errno
import json
import os
import stat
import struct
import subprocess

import pytest

import union
from union import E, fo_differs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

KERNEL_OPTS = ["index=off", "redirect_dir=on"]
# FUSE mounts default to nodev,nosuid and to access by the mounter only; the kernel overlay
# to dev,suid and everyone.  These make the two comparable (as in test_union_diff.py).
IMPL_OPTS = ["allow_other", "dev", "suid"]

USER = 1000      # the unprivileged uid and gid
OTHER = 2000     # an unrelated uid/gid for chown

# security.capability, VFS_CAP_REVISION_2 with the effective flag: cap_net_bind_service (10)
# permitted and effective.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
CAP_XATTR = "security.capability"

DATA = b"original content\n"


# ---------------------------------------------------------------------------------------
# the unprivileged process

_CHILD = r"""
import errno, json, mmap, os, sys

fds = {}

def mmap_write(name, off, data):
    fd = fds[name]
    m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED,
                  mmap.PROT_READ | mmap.PROT_WRITE)
    m[off:off + len(data)] = data
    m.close()                           # munmap, no msync; close() comes next

def whoami():
    with open("/proc/self/status") as f:
        caps = [l.split()[1] for l in f if l.startswith(("CapEff", "CapPrm"))]
    return [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups(), caps]

OPS = {
    "open": lambda name, path, flags: fds.__setitem__(name, os.open(path, flags)),
    "write": lambda name, data: os.write(fds[name], data),
    "ftruncate": lambda name, size: os.ftruncate(fds[name], size),
    "close": lambda name: os.close(fds.pop(name)),
    "truncate": os.truncate,
    "chown": os.chown,
    "mmap_write": mmap_write,
    "whoami": whoami,
}

for line in sys.stdin:
    op, args = json.loads(line)
    args = [bytes.fromhex(a["hex"]) if isinstance(a, dict) else a for a in args]
    try:
        reply = OPS[op](*args)
    except OSError as e:
        reply = errno.errorcode.get(e.errno, "E%d" % e.errno)
    print(json.dumps(reply), flush=True)
"""


class Who:
    """Credentials of the process that does a case's unprivileged (`u`) steps."""

    def __init__(self, uid, gid, groups=(), fsetid=False):
        self.uid, self.gid, self.groups, self.fsetid = uid, gid, list(groups), fsetid

    def setpriv(self):
        a = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}"]
        a += [f"--groups={','.join(map(str, self.groups))}"] if self.groups \
            else ["--clear-groups"]
        if self.uid == 0 and not self.fsetid:       # root, but without CAP_FSETID
            a += ["--bounding-set=-fsetid"]
        elif self.uid != 0 and self.fsetid:         # a user with CAP_FSETID only
            a += ["--inh-caps=+fsetid", "--ambient-caps=+fsetid"]
        return a

    def __repr__(self):
        return (f"uid {self.uid} gid {self.gid} groups {self.groups} "
                f"{'with' if self.fsetid else 'without'} CAP_FSETID")


PLAIN = Who(USER, USER)                          # no groups, no capabilities at all
CAP_FSETID = 4


class User:
    """A child process with the credentials `who` doing one system call per call(); its
    fds are named by the caller (fd numbers are per process, not comparable)."""

    def __init__(self, who):
        self.proc = subprocess.Popen(
            who.setpriv() + [union.PYTHON, "-c", _CHILD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        uid, euid, gid, egid, groups, (prm, eff) = self.call("whoami")
        prm, eff = int(prm, 16), int(eff, 16)
        ok = (uid == euid == who.uid and gid == egid == who.gid and groups == who.groups
              and prm == eff and bool(eff >> CAP_FSETID & 1) == who.fsetid
              and (who.uid == 0 or eff == (1 << CAP_FSETID if who.fsetid else 0)))
        if not ok:
            self.close()
            pytest.fail(f"the child meant to run as {who} has uid {uid}/{euid}, gid "
                        f"{gid}/{egid}, groups {groups}, CapPrm {prm:x}, CapEff {eff:x}")

    def call(self, op, *args):
        args = [{"hex": a.hex()} if isinstance(a, bytes) else a for a in args]
        self.proc.stdin.write(json.dumps([op, args]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the unprivileged child died during {op}{tuple(args)}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


# ---------------------------------------------------------------------------------------
# one run of a case on one mount

def file_state(path):
    """What the kernel decides about: mode (with the set-id bits), owner, size, content and
    whether security.capability is there."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        os.getxattr(path, CAP_XATTR)
        cap = True
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        cap = False
    return {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid,
            "size": st.st_size, "data": data.decode(errors="replace"), "cap": cap}


class Steps:
    """What a case's steps see: `f` is the file in the mount; `u(...)` runs a system call
    in the child with the case's credentials (logged as "user"), `root(...)` one as root
    in this process, `state(...)` records the file's state through the mount; every
    outcome goes to `log`."""

    def __init__(self, mnt, who):
        self.f = os.path.join(mnt, "f")
        self.who = who
        self.log = []
        self._user = None

    def u(self, op, *args):
        if self._user is None:
            self._user = User(self.who)
        self.log.append((f"user {op}", self._user.call(op, *args)))

    def root(self, label, fn, *args):
        try:
            v = fn(*args)
        except OSError as e:
            v = union.ename(e.errno)
        self.log.append((f"root {label}", v))

    def state(self, label):
        self.log.append((label, file_state(self.f)))

    def done(self):
        if self._user is not None:
            self._user.close()
            self._user = None


def run_case(kind, base, case, where):
    """Build the stack under `base`, mount it as `kind`, run the case's steps; returns
    {'steps': log, 'final': state via the mount, 'upper': state of the upper file}."""
    entry = [E("f", data=DATA, mode=case.mode, uid=case.owner[0], gid=case.owner[1],
               xattrs={CAP_XATTR: CAP} if case.cap else {})]
    lowers, upper, work, mnt = union.build_stack(
        base, [entry if where == "lower" else []],
        upper_entries=entry if where == "upper" else None)
    if kind == "kernel":
        m = union.KernelMount(mnt, lowers, upper, work, KERNEL_OPTS)
    else:
        m = union.FuseMount(mnt, lowers, upper, work, IMPL_OPTS + MOUNT_KINDS.get(kind, []))
    out = {}
    with m:
        s = Steps(mnt, case.who)
        try:
            case.steps(s)
        finally:
            s.done()
        out["steps"] = s.log
        out["final"] = file_state(s.f)
        if kind != "kernel":
            try:
                out["daemon passthrough"] = union.daemon_stats(mnt).get("passthrough")
            except OSError:
                pass
    out["upper"] = file_state(upper / "f")
    return out


# ---------------------------------------------------------------------------------------
# the steps of each case

def user_write(s):
    s.u("open", "a", s.f, os.O_WRONLY)
    s.u("write", "a", b"NEW")
    s.u("close", "a")


def user_write_empty(s):
    s.u("open", "a", s.f, os.O_WRONLY)
    s.u("write", "a", b"")
    s.u("close", "a")


def root_write(s):
    fd = os.open(s.f, os.O_WRONLY)
    try:
        s.root("write", os.write, fd, b"NEW")
    finally:
        os.close(fd)


def root_open_trunc(s):
    s.root("open O_TRUNC", lambda: os.close(os.open(s.f, os.O_WRONLY | os.O_TRUNC)))


def user_open_trunc(s):
    s.u("open", "a", s.f, os.O_WRONLY | os.O_TRUNC)
    s.u("close", "a")


def user_ftruncate(s):
    s.u("open", "a", s.f, os.O_WRONLY)
    s.u("ftruncate", "a", 5)
    s.u("close", "a")


def user_truncate(s):
    s.u("truncate", s.f, 5)


def chmod_while_open(s):
    """The user opens a plain 0777 file for writing; root makes it set-uid while the fd is
    open; the user writes through the old fd."""
    s.u("open", "a", s.f, os.O_WRONLY)
    s.root("chmod 4777", os.chmod, s.f, 0o4777)
    s.state("after chmod")
    s.u("write", "a", b"NEW")
    s.u("close", "a")


def root_chown(uid, gid):
    def steps(s):
        s.root(f"chown {uid}:{gid}", os.chown, s.f, uid, gid)
    return steps


def user_chown(uid, gid):
    def steps(s):
        s.u("chown", s.f, uid, gid)
    return steps


def user_mmap_write(s):
    s.u("open", "a", s.f, os.O_RDWR)
    s.u("mmap_write", "a", 0, b"NEW")
    s.u("close", "a")


def repeated_writes(s):
    """Three writes through one fd, a second open and write after the bit is gone; then
    root sets it again and the user writes again."""
    s.u("open", "a", s.f, os.O_WRONLY)
    for i in range(3):
        s.u("write", "a", b"w%d" % i)
        s.state(f"after write {i}")
    s.u("close", "a")
    s.u("open", "b", s.f, os.O_WRONLY | os.O_APPEND)
    s.u("write", "b", b"again\n")
    s.u("close", "b")
    s.state("after the second open")
    s.root("chmod 4777", os.chmod, s.f, 0o4777)
    s.state("after chmod")
    s.u("open", "c", s.f, os.O_WRONLY | os.O_APPEND)
    s.u("write", "c", b"third\n")
    s.u("close", "c")


class Case:
    def __init__(self, name, mode, steps, owner=(0, 0), cap=False, who=PLAIN, expect=None,
                 fo=None):
        self.name, self.mode, self.steps, self.owner, self.cap = name, mode, steps, owner, cap
        self.who = who           # who does the `u` steps
        self.fo = fo             # how fuse-overlayfs 1.10 differs, if it does (fo_differs)
        self.expect = expect     # the mode the kernel must end with, where the rule is
                                 # long documented (security.capability must be gone then)


# The file starts as `mode`, owned by `owner` (uid, gid), with security.capability if
# `cap`.  The comments give the kernel's outcome observed on Linux 6.18, the same for a
# lower file and an upper one, and repeatable run to run.
CASES = [
    # 1. an unprivileged write kills set-uid                              -> 0777
    Case("user_write_suid", 0o4777, user_write, expect=0o777),
    #    ... not an empty write                                            -> 4777
    Case("user_write_empty", 0o4777, user_write_empty),
    # 2. ... and a real set-gid (group exec set)                          -> 0777
    Case("user_write_sgid", 0o2777, user_write, expect=0o777),
    #    sgid without group exec, the writer not in the file's group:     -> 0767, cleared
    #    (the kernel keeps it only for members, or with CAP_FSETID)
    Case("user_write_sgid_noexec", 0o2767, user_write, fo="keeps sgid"),
    # 3. O_TRUNC, ftruncate(), truncate() by the unprivileged user        -> 0777
    Case("user_open_trunc", 0o6777, user_open_trunc, expect=0o777, fo="keeps set-id bits"),
    Case("user_ftruncate", 0o6777, user_ftruncate, expect=0o777),
    Case("user_truncate", 0o6777, user_truncate, expect=0o777),
    # 4. root (CAP_FSETID) writes: set-id bits stay                       -> 4777, 6777
    Case("root_write_suid", 0o4777, root_write, expect=0o4777),
    Case("root_write_setid", 0o6777, root_write, expect=0o6777),
    #    what counts is CAP_FSETID, not the uid: root without it          -> 0777
    Case("root_nofsetid_write_setid", 0o6777, user_write, who=Who(0, 0), expect=0o777),
    #    ... and a user with it                                            -> 6777
    Case("user_fsetid_write_setid", 0o6777, user_write, who=Who(USER, USER, fsetid=True),
         expect=0o6777),
    # 5. any write removes security.capability, root's too                -> 0755, no cap
    Case("root_write_cap", 0o755, root_write, cap=True, expect=0o755),
    #    ... and leaves root's set-uid alone                               -> 4755, no cap
    Case("root_write_suid_cap", 0o4755, root_write, cap=True, expect=0o4755),
    #    ... so does root's open(O_TRUNC)                                  -> 4755, no cap
    Case("root_open_trunc_suid_cap", 0o4755, root_open_trunc, cap=True, expect=0o4755),
    #    an unprivileged write to a file with a capability                 -> 0777, no cap
    Case("user_write_cap", 0o777, user_write, cap=True, expect=0o777),
    # 6. a member of the file's group writes, group exec set              -> 0775
    Case("group_member_write_sgid", 0o2775, user_write, owner=(0, USER),
         fo="keeps sgid on a lower file"),
    #    ... no group exec: a member keeps sgid                            -> 2765
    Case("group_member_write_sgid_noexec", 0o2765, user_write, owner=(0, USER)),
    #    ... a member through a supplementary group too                    -> 2765
    Case("supp_group_write_sgid_noexec", 0o2765, user_write, owner=(0, 3000),
         who=Who(USER, USER, groups=[3000])),
    # 7. root sets set-uid while the user has the file open for writing;  -> 4777, then
    #    the user writes through that fd                                     0777
    Case("chmod_while_open", 0o777, chmod_while_open),
    # 8. chown kills set-id bits, root's chown too (chown(2))             -> 0755
    Case("root_chown_same", 0o6755, root_chown(0, 0), expect=0o755),
    Case("root_chown_other", 0o6755, root_chown(OTHER, OTHER), expect=0o755),
    #    root's chgrp of an sgid file without group exec: CAP_FSETID keeps -> 2745
    Case("root_chgrp_sgid_noexec", 0o2745, root_chown(-1, OTHER), owner=(0, 3000)),
    #    the owner "changes" the group to its own gid, or nothing at all  -> 0775
    Case("owner_chgrp_own", 0o6775, user_chown(-1, USER), owner=(USER, USER)),
    Case("owner_chown_noop", 0o6775, user_chown(-1, -1), owner=(USER, USER)),
    #    ... without group exec: the owner is in the group, sgid stays    -> 2765
    Case("owner_chgrp_own_noexec", 0o6765, user_chown(-1, USER), owner=(USER, USER)),
    # 9. a write through a shared mapping: the kernel kills nothing        -> 4777
    Case("user_mmap_write", 0o4777, user_mmap_write),
    # 10. three writes, a second open and write, root's chmod 4777, and   -> 0777 each time
    #     a write again
    Case("repeated_writes", 0o4777, repeated_writes, expect=0o777),
]

MOUNT_KINDS = {"stratafs": [], "stratafs-nopassthrough": ["passthrough=off"]}


def show(r):
    lines = [f"    {label}: {v}" for label, v in r["steps"]]
    lines += [f"    final (mount): {r['final']}", f"    upper file:    {r['upper']}"]
    if "daemon passthrough" in r:
        lines.append(f"    daemon passthrough: {r['daemon passthrough']}")
    return "\n".join(lines)


@pytest.mark.parametrize("kind", list(MOUNT_KINDS))
@pytest.mark.parametrize("where", ["lower", "upper"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[fo_differs(c.fo)] if c.fo
                                               else []) for c in CASES])
def test_kill_privileges(tdir, impl, case, where, kind):
    if union.impl_is_fuse_overlayfs():
        if kind != "stratafs":
            pytest.skip("passthrough=off is a stratafs option")
        kind = "fuse-overlayfs"
    k = run_case("kernel", tdir / "kernel", case, where)
    i = run_case(kind, tdir / "impl", case, where)
    if case.expect is not None:
        got = (k["final"]["mode"], k["final"]["cap"])
        assert got == (oct(case.expect), False), (
            f"the kernel reference itself ended with mode {got[0]}, capability {got[1]}; "
            f"expected {oct(case.expect)} and none -- is the environment sane?\n{show(k)}")
    differ = [key for key in ("steps", "final", "upper") if k[key] != i[key]]
    assert not differ, (f"{kind} differs from the kernel overlay in {', '.join(differ)} "
                        f"(file in the {where} layer)\n  kernel:\n{show(k)}\n"
                        f"  {kind}:\n{show(i)}")
