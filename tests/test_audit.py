"""mkimage audit / strata audit: what a layer stack hides, checked against the kernel.

The oracle for "hidden" is the kernel's overlayfs on the same layers (converted to the
kernel's whiteout forms, with a probe file per layer in every directory): an entry of layer
j is visible when the merged view shows it -- a directory when its layer-j probe shows
through, anything else when the merged path has the layer's inode -- and hidden otherwise.
That is "all lower paths minus the merged view, plus the replaced entries".
"""
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("STRATA_BUILD", REPO / "build"))
MKIMAGE = BUILD / "mkimage"
STRATA = BUILD / "strata"
PROBE = "__audit_probe_"

# Secret material for the tests: shaped like the real thing, valid for nothing.
KEY_BODY = "MIIEowIBAAKCAQEAz7q3vY8Wx2kR5tN9pLmQ4sHfJ6dGbC1aE0uVyXoZiTnKrSlPwM"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\n" + KEY_BODY + "\n"
       "-----END RSA PRIVATE KEY-----\n")
TOKEN = "ghp_" + "Zx9Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz2Xc4Vb"
ENV = "DEBUG=1\nDATABASE_PASSWORD=" + "s3cr3T-Pa55w0rd-9f8e7d6c" + "\nAPI_TOKEN=" + TOKEN + "\n"


def run(args, check=True, env=None, timeout=600):
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    if env:
        e.update(env)
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} -> {p.returncode}\nstdout: {p.stdout}\n"
                             f"stderr: {p.stderr}")
    return p


def audit(*args, rc=0):
    p = run([MKIMAGE, "audit", *args], check=False)
    assert p.returncode == rc, (p.returncode, p.stdout, p.stderr)
    return p


def audit_json(*args, rc=0):
    p = audit("--json", *args, rc=rc)
    return json.loads(p.stdout)


def hidden_set(j):
    return {(e["layer"], e["path"]) for e in j["hidden"]}


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@contextlib.contextmanager
def kernel_overlay(lowers, mnt, opts=""):
    """The kernel overlay's read-only merged view of lowers (top first); always unmounted."""
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         "ro,lowerdir=" + ":".join(str(x) for x in lowers) + opts, mnt])
    try:
        yield mnt
    finally:
        for cmd in (["umount", mnt], ["umount", "-l", mnt]):
            if not is_mounted(mnt):
                break
            subprocess.run([str(c) for c in cmd], capture_output=True)


@pytest.fixture
def tdir(tmp_path):
    yield tmp_path
    # anything a failed test left mounted below tmp_path
    with open("/proc/self/mountinfo") as f:
        mnts = [line.split()[4] for line in f]
    for m in sorted((m for m in mnts if m.startswith(str(tmp_path))), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


# ---- building layers ----------------------------------------------------------------------

class Layer:
    """A directory layer; every whiteout and opaque form can be written."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def p(self, rel):
        q = self.root / rel
        q.parent.mkdir(parents=True, exist_ok=True)
        return q

    def file(self, rel, data=b"x"):
        if isinstance(data, str):
            data = data.encode()
        self.p(rel).write_bytes(data)
        return self

    def dir(self, rel):
        self.p(rel).mkdir(exist_ok=True)
        return self

    def link(self, rel, target):
        os.symlink(target, self.p(rel))
        return self

    def fifo(self, rel):
        os.mkfifo(self.p(rel))
        return self

    def wh(self, rel):                      # the kernel's whiteout
        os.mknod(self.p(rel), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        return self

    def whf(self, rel):                     # the OCI whiteout
        q = self.p(rel)
        (q.parent / (".wh." + q.name)).write_bytes(b"")
        return self

    def opaque(self, rel, form):
        d = self.p(rel)
        d.mkdir(exist_ok=True)
        if form == "trusted":
            os.setxattr(d, "trusted.overlay.opaque", b"y")
        elif form == "user":
            os.setxattr(d, "user.overlay.opaque", b"y")
        else:
            (d / ".wh..wh..opq").write_bytes(b"")
        return self


def walk(root):
    """(relative path, lstat) of every entry below root, directories before their content."""
    out = []

    def rec(d, rel):
        for name in sorted(os.listdir(d)):
            full = os.path.join(d, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue    # the kernel lists a lower whiteout of a one-layer dir
            r = f"{rel}/{name}" if rel else name
            out.append((r, st))
            if stat.S_ISDIR(st.st_mode):
                rec(full, r)
    rec(str(root), "")
    return out


def is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def kernel_form(src, dst, index):
    """A copy of layer src the kernel understands (.wh. files become char 0/0, opaque markers
    and user.overlay.* become trusted.overlay.*), with a probe file of its own in every
    directory.  Returns {probe name: directory path}."""
    run(["cp", "-a", src, dst])
    for rel, st in reversed(walk(dst)):
        full = Path(dst) / rel
        name = full.name
        if name == ".wh..wh..opq":
            full.unlink()
            os.setxattr(full.parent, "trusted.overlay.opaque", b"y")
        elif name.startswith(".wh."):
            full.unlink()
            target = full.parent / name[4:]
            if not os.path.lexists(target):
                os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif stat.S_ISDIR(st.st_mode):
            for x in ("opaque", "redirect"):
                with contextlib.suppress(OSError):
                    v = os.getxattr(full, "user.overlay." + x, follow_symlinks=False)
                    os.removexattr(full, "user.overlay." + x)
                    os.setxattr(full, "trusted.overlay." + x, v)
    probes = {}
    for rel, st in [("", os.lstat(dst))] + walk(dst):
        if stat.S_ISDIR(st.st_mode):
            name = f"{PROBE}{index}_{len(probes)}"
            (Path(dst) / rel / name).write_bytes(b"")
            probes[name] = rel
    return probes


def reference(layers, tdir, opts=""):
    """The hidden set per the kernel: {(layer, path): (type, size)}, and the stack bytes.
    An entry is visible when the merged view shows it anywhere (a redirect shows a lower
    directory under another name): a directory by its probe, anything else by its inode."""
    copies, probes = [], []
    for i, l in enumerate(layers):
        copies.append(tdir / f"kform{i}")
        probes.append(kernel_form(l, copies[-1], i))
    hidden, stack = {}, 0
    with kernel_overlay(copies, tdir / "kmnt", opts) as m:
        shown = walk(m)
    names = {Path(rel).name for rel, _ in shown}
    inos = {st.st_ino for _, st in shown if not stat.S_ISDIR(st.st_mode)}
    for i, c in enumerate(copies):
        seen_dirs = {rel for name, rel in probes[i].items() if name in names}
        for rel, st in walk(c):
            if Path(rel).name.startswith(PROBE) or is_whiteout(st):
                continue
            if stat.S_ISREG(st.st_mode):
                stack += st.st_size
            if stat.S_ISDIR(st.st_mode):
                visible = rel in seen_dirs
            else:
                visible = st.st_ino in inos
            if not visible:
                size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else 0
                hidden[(i, rel)] = (stat.S_IFMT(st.st_mode), size)
    return hidden, stack


def check_against_reference(j, ref, stack):
    assert hidden_set(j) == set(ref), (
        f"audit only: {sorted(hidden_set(j) - set(ref))}\n"
        f"kernel only: {sorted(set(ref) - hidden_set(j))}")
    for e in j["hidden"]:
        assert e["size"] == ref[(e["layer"], e["path"])][1], e
    t = j["totals"]
    files = [k for k, v in ref.items() if v[0] != stat.S_IFDIR]
    assert t["hidden_entries"] == len(ref)
    assert t["hidden_files"] == len(files)
    assert t["hidden_dirs"] == len(ref) - len(files)
    assert t["dead_bytes"] == sum(v[1] for v in ref.values() if v[0] == stat.S_IFREG)
    assert t["stack_bytes"] == stack
    assert abs(t["dead_percent"] - 100.0 * t["dead_bytes"] / max(stack, 1)) < 1e-6


def every_form_stack(base):
    """Four layers (top first) with every whiteout form, opaque forms, replacements."""
    l3 = Layer(base / "l3")
    l3.file("etc/passwd", "root:x:0:0\n").file("etc/old.conf", "old=1\n" * 40)
    l3.file("var/cache/apt/archives/pkg1.deb", os.urandom(100 * 1024))
    l3.file("var/cache/apt/archives/pkg2.deb", os.urandom(50 * 1024))
    l3.file("var/cache/apt/lists/x", "list\n")
    l3.file("tmp/build/obj/a.o", os.urandom(20 * 1024)).file("tmp/build/src.tar", b"t" * 65536)
    for form in ("trusted", "user", "marker"):
        l3.file(f"opq_{form}/a", "a" * 10).file(f"opq_{form}/sub/b", "b" * 20)
    l3.file("rep_file", "old content\n")
    l3.file("rep_dir_by_file/child1", "c1").file("rep_dir_by_file/child2/grand", "g" * 7)
    l3.file("rep_file_by_dir", "was a file")
    l3.link("link", "etc/passwd").fifo("fifo")
    l3.file("recreated/x", "x" * 3)
    l3.file("keep/deep/file", "keep")
    l3.file("merge/m3", "m3")
    l3.file("wh_under_merge/z", "z" * 5).file("wh_under_merge/stays", "s")
    l3.file("below_nondir/inner", "i" * 9)
    l3.link("symdir", "keep")

    l2 = Layer(base / "l2")
    l2.dir("var/cache/apt").whf("var/cache/apt/archives")
    l2.wh("tmp/build")
    for form in ("trusted", "user", "marker"):
        l2.opaque(f"opq_{form}", form).file(f"opq_{form}/new", "new")
    l2.file("rep_dir_by_file", "now a file")
    l2.whf("link").wh("fifo").wh("recreated").whf("etc/old.conf")
    l2.file("below_nondir", "a file between two dirs")
    l2.dir("symdir").file("symdir/f", "dir over a symlink")

    l1 = Layer(base / "l1")
    l1.file("rep_file", "new content, longer\n")
    l1.file("rep_file_by_dir/inner", "now a dir")
    l1.file("merge/m1", "m1")
    l1.dir("wh_under_merge").whf("wh_under_merge/z")
    l1.file("etc/passwd", "root:x:0:0:new\n")
    l1.file("opq_trusted/new", "newer")
    l1.file("below_nondir/top", "dir over file over dir")

    l0 = Layer(base / "l0")
    l0.file("recreated/y", "y")
    l0.file("top.txt", "top")
    l0.file("tmp/build2/file", "b2")
    return [l0.root, l1.root, l2.root, l3.root]


def mksquashfs(src, out):
    run(["mksquashfs", src, out, "-noappend", "-quiet", "-no-progress", "-comp", "gzip"])
    return out


# ---- the hidden set -------------------------------------------------------------------------

def test_every_form_matches_the_kernel(tdir):
    layers = every_form_stack(tdir)
    ref, stack = reference(layers, tdir)
    j = audit_json(*layers)
    check_against_reference(j, ref, stack)
    by = {(e["layer"], e["path"]): (e["hidden_by"]["layer"], e["hidden_by"]["kind"])
          for e in j["hidden"]}
    assert by[(3, "var/cache/apt/archives")] == (2, "whiteout")
    assert by[(3, "var/cache/apt/archives/pkg1.deb")] == (2, "whiteout")
    assert by[(3, "tmp/build/obj/a.o")] == (2, "whiteout")
    assert by[(3, "etc/old.conf")] == (2, "whiteout")
    assert by[(3, "link")] == (2, "whiteout") and by[(3, "fifo")] == (2, "whiteout")
    assert by[(3, "recreated/x")] == (2, "whiteout")
    assert by[(3, "wh_under_merge/z")] == (1, "whiteout")
    for form in ("trusted", "user", "marker"):
        assert by[(3, f"opq_{form}")] == (2, "opaque")
        assert by[(3, f"opq_{form}/sub/b")] == (2, "opaque")
    assert by[(3, "rep_file")] == (1, "replaced")
    assert by[(3, "etc/passwd")] == (1, "replaced")
    assert by[(3, "rep_dir_by_file/child2/grand")] == (2, "replaced")
    assert by[(3, "rep_file_by_dir")] == (1, "replaced")
    assert by[(2, "below_nondir")] == (1, "replaced")
    assert by[(3, "below_nondir/inner")] == (1, "replaced")
    assert by[(3, "symdir")] == (2, "replaced")
    for visible in ["merge", "merge/m3", "keep/deep/file", "wh_under_merge/stays", "recreated"]:
        assert (3, visible) not in by or visible == "recreated"
    assert (0, "recreated") not in by
    # the human table: largest first, and the summary line
    p = audit(*layers)
    rows = [line for line in p.stdout.splitlines() if re.match(r"\s+\d", line)]
    assert "var/cache/apt/archives/pkg1.deb" in rows[0]
    m = re.search(r"^(\d+) hidden files, ([\d.]+) MiB dead \(([\d.]+) % of the stack\); "
                  r"(\d+) look like secrets; `mkimage squash` would drop all of them$",
                  p.stdout, re.M)
    assert m, p.stdout
    assert int(m[1]) == j["totals"]["hidden_files"] and int(m[4]) == 0
    assert abs(float(m[2]) - j["totals"]["dead_bytes"] / 2**20) <= 0.05


def test_image_layers_and_mixed_stacks_agree(tdir):
    layers = every_form_stack(tdir)
    images = [mksquashfs(l, tdir / f"layer{i}.sqfs") for i, l in enumerate(layers)]
    ref, stack = reference(layers, tdir)
    check_against_reference(audit_json(*images), ref, stack)
    mixed = [layers[0], images[1], layers[2], images[3]]
    check_against_reference(audit_json(*mixed), ref, stack)


REDIRECTS = int(os.environ.get("AUDIT_REDIRECTS", "1"))


def test_random_stacks_match_the_kernel(tdir):
    import random
    seed = int(os.environ.get("AUDIT_SEED", "1234"))
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"]
    for round_ in range(int(os.environ.get("AUDIT_ROUNDS", "6"))):
        base = tdir / f"r{round_}"
        layers = [Layer(base / f"l{i}") for i in range(4)]
        for i in reversed(range(4)):
            l = layers[i]
            for _ in range(40):
                rel = "/".join(rng.choice(names) for _ in range(rng.randint(1, 3)))
                full = l.root / rel
                if any(os.path.lexists(p) and not p.is_dir()
                       for p in [l.root / Path(rel).parents[k]
                                 for k in range(len(Path(rel).parents) - 1)]):
                    continue
                if os.path.lexists(full):
                    continue
                what = rng.choice(["file", "file", "dir", "wh", "whf", "opq", "link"] +
                                  ["redir"] * REDIRECTS)
                if i == 3 and what in ("wh", "whf", "opq", "redir"):
                    what = "file"
                if what == "file":
                    l.file(rel, os.urandom(rng.randint(0, 3000)))
                elif what == "dir":
                    l.dir(rel)
                elif what == "wh":
                    l.wh(rel)
                elif what == "whf":
                    if not os.path.lexists(full.parent / (".wh." + full.name)):
                        l.whf(rel)
                elif what == "redir":
                    target = "/".join(rng.choice(names) for _ in range(rng.randint(1, 2)))
                    l.dir(rel)
                    os.setxattr(full, "trusted.overlay.redirect", b"/" + target.encode())
                elif what == "opq":
                    l.opaque(rel, rng.choice(["trusted", "user", "marker"]))
                else:
                    l.link(rel, "a")
        roots = [l.root for l in layers]
        ref, stack = reference(roots, base, ",redirect_dir=follow" if REDIRECTS else "")
        images = [mksquashfs(r, base / f"img{i}.sqfs") for i, r in enumerate(roots)]
        try:
            check_against_reference(audit_json(*roots), ref, stack)
            check_against_reference(audit_json(*images), ref, stack)
        except AssertionError as e:
            raise AssertionError(f"seed {seed} round {round_}: {e}") from None


def test_redirected_directory(tdir):
    """A directory renamed with redirect_dir: its lower content is visible at the new name,
    the old name is whited out, and only what the redirect does not show is hidden."""
    l1 = Layer(tdir / "l1").file("a/x", "xx").file("a/y", "yyy").file("b/old", "o" * 4)
    l0 = Layer(tdir / "l0").wh("a").dir("b").wh("b/y")
    os.setxattr(l0.root / "b", "trusted.overlay.redirect", b"/a")
    ref, stack = reference([l0.root, l1.root], tdir, ",redirect_dir=follow")
    j = audit_json(l0.root, l1.root)
    check_against_reference(j, ref, stack)
    assert hidden_set(j) == {(1, "a/y"), (1, "b"), (1, "b/old")}


def test_hard_links_count_once_and_not_while_visible(tdir):
    l1 = Layer(tdir / "l1").file("a", b"h" * 1000).file("big1", b"b" * 5000)
    os.link(l1.root / "a", l1.root / "b")
    os.link(l1.root / "big1", l1.root / "big2")
    l0 = Layer(tdir / "l0").wh("a").wh("big1").wh("big2")
    j = audit_json(l0.root, l1.root)
    assert hidden_set(j) == {(1, "a"), (1, "big1"), (1, "big2")}
    assert j["totals"]["dead_bytes"] == 5000          # "a" is still visible as "b"
    assert j["totals"]["stack_bytes"] == 6000


# ---- secrets ---------------------------------------------------------------------------------

def secret_stack(tdir):
    base = Layer(tdir / "base").file("etc/os-release", "ID=test\n").file("app/main.py", "print(1)\n")
    add = Layer(tdir / "add").file("root/.ssh/id_rsa", PEM).file("app/.env", ENV)
    add.file("app/notes.txt", "nothing to see\n")
    rm = Layer(tdir / "rm").wh("root/.ssh/id_rsa").whf("app/.env")
    return [rm.root, add.root, base.root]


def test_deleted_secrets_are_flagged(tdir):
    layers = secret_stack(tdir)
    p = audit(*layers, rc=3)
    assert KEY_BODY not in p.stdout and TOKEN not in p.stdout and "s3cr3T" not in p.stdout
    assert "root/.ssh/id_rsa" in p.stdout and "private key block" in p.stdout
    assert re.search(r"2 look like secrets; `mkimage squash` would drop all of them", p.stdout)
    j = audit_json(*layers, rc=3)
    txt = json.dumps(j)
    assert KEY_BODY not in txt and TOKEN not in txt and "s3cr3T" not in txt
    sec = {s["path"]: s for s in j["secrets"]}
    assert set(sec) == {"root/.ssh/id_rsa", "app/.env"}
    assert all(s["hidden"] and s["layer"] == 1 and s["hidden_by"]["layer"] == 0
               for s in sec.values())
    assert "private key block" in sec["root/.ssh/id_rsa"]["reasons"]
    assert "SSH private key file (.ssh/id_*)" in sec["root/.ssh/id_rsa"]["reasons"]
    assert ".env file with a secret value" in sec["app/.env"]["reasons"]
    assert "GitHub token" in sec["app/.env"]["reasons"]
    assert j["totals"]["hidden_secrets"] == 2
    audit("--fail-on", "never", *layers, rc=0)
    # the same with image layers
    images = [mksquashfs(l, tdir / f"s{i}.sqfs") for i, l in enumerate(layers)]
    assert {s["path"] for s in audit_json(*images, rc=3)["secrets"]} == set(sec)


def test_squash_drops_the_secret_bytes(tdir):
    layers = secret_stack(tdir)
    img = tdir / "flat.sqfs"
    p = run([MKIMAGE, "squash", "--comp", "none", "-o", img, *layers])
    dead = audit_json(*layers, rc=3)["totals"]["dead_bytes"]
    m = re.search(r", (\S+ \S+) hidden left out \((\d+) files\), ", p.stdout)
    assert m and int(m[2]) == 2, p.stdout
    assert m[1] == (f"{dead} B" if dead < 1024 else f"{dead / 1024:.1f} KiB")
    data = img.read_bytes()
    assert b"nothing to see" in data          # stored uncompressed: the search means something
    for secret in (KEY_BODY, TOKEN, "s3cr3T-Pa55w0rd"):
        assert secret.encode() not in data
    j = audit_json(img)
    assert j["hidden"] == [] and j["secrets"] == [] and j["totals"]["dead_bytes"] == 0
    audit("--fail-on", "any-secret", img, rc=0)


def test_visible_secrets_with_all_and_fail_on(tdir):
    l1 = Layer(tdir / "l1").file("home/u/.aws/credentials",
                                 "[default]\naws_access_key_id = AKIAZ7QW3ER5TY7UI9OP\n")
    l1.file("home/u/.docker/config.json", '{"auths": {"r.io": {"auth": "dXNlcjpwYXNz"}}}\n')
    l1.file("home/u/.docker/empty/config.json", "{}")
    l1.file("home/u/.netrc", "machine h login u password p\n")
    l1.file("home/u/.git-credentials", "https://u:tok@example.com\n")
    l1.file("home/u/.pypirc", "[pypi]\nusername = u\npassword = pw\n")
    l1.file("srv/slack.txt", "hook xoxb-1234567890-abcdefghij\n")
    l1.file("srv/gcp.js", "key = 'AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q'\n")
    l1.file("srv/config.yaml", "client_secret: 'q8Zr3Lm5Np7Xv9Bt2Wk4'\n")
    l1.file("srv/readme.txt", "the password is in the vault; token: see docs\n")
    l1.file("home/u/.ssh/id_rsa.pub", "ssh-rsa AAAA u@h\n")
    l0 = Layer(tdir / "l0").file("hello", "hi")
    layers = [l0.root, l1.root]
    j = audit_json(*layers)                       # nothing hidden: clean, nothing scanned
    assert j["secrets"] == [] and j["scanned"] == {"hidden": True, "visible": False}
    j = audit_json("--all", *layers)              # visible ones reported, exit still 0
    sec = {s["path"]: s["reasons"] for s in j["secrets"]}
    assert not any(s["hidden"] for s in j["secrets"])
    assert "AWS credentials file (.aws/credentials)" in sec["home/u/.aws/credentials"]
    assert "AWS access key id" in sec["home/u/.aws/credentials"]
    assert "Docker registry auth (.docker/config.json)" in sec["home/u/.docker/config.json"]
    assert "netrc credentials (.netrc)" in sec["home/u/.netrc"]
    assert "git credentials (.git-credentials)" in sec["home/u/.git-credentials"]
    assert "PyPI credentials (.pypirc)" in sec["home/u/.pypirc"]
    assert "Slack token" in sec["srv/slack.txt"]
    assert "Google API key" in sec["srv/gcp.js"]
    assert "secret-looking assignment (high entropy)" in sec["srv/config.yaml"]
    for clean in ("home/u/.docker/empty/config.json", "srv/readme.txt",
                  "home/u/.ssh/id_rsa.pub", "hello"):
        assert clean not in sec
    p = audit("--all", *layers)
    assert re.search(r"^\d+ visible files look like secrets", p.stdout, re.M)
    audit("--fail-on", "any-secret", *layers, rc=3)


def test_scan_is_bounded_and_streams_long_lines(tdir):
    l1 = Layer(tdir / "l1")
    # a token past the scan limit is not seen; one inside a 600 KiB line is
    l1.file("far", b"\0" * (2 << 20) + PEM.encode())
    l1.file("longline", b"A" * (512 << 10) + b" " + TOKEN.encode() + b" " + b"B" * 100000)
    l1.file("split", b"x" * (4096 - 20) + b" " + TOKEN.encode() + b"\n")
    l0 = Layer(tdir / "l0").wh("far").wh("longline").wh("split")
    j = audit_json("--scan-limit", "1M", l0.root, l1.root, rc=3)
    assert {s["path"] for s in j["secrets"]} == {"longline", "split"}
    assert j["totals"]["scanned_bytes"] <= 3 * (1 << 20)
    j = audit_json(l0.root, l1.root, rc=3)            # default limit: 4 MiB
    assert {s["path"] for s in j["secrets"]} == {"far", "longline", "split"}


# ---- JSON, errors, scale, strata ----------------------------------------------------------

def doc_schema():
    text = (REPO / "Documentation" / "audit.md").read_text()
    m = re.search(r"<!-- audit-json-schema -->\s*```json\n(.*?)```", text, re.S)
    assert m, "schema block missing from Documentation/audit.md"
    return json.loads(m[1])


def validate(v, s, root, where="$"):
    """The part of JSON Schema the documented shape uses."""
    types = s.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        ok = {"object": isinstance(v, dict), "array": isinstance(v, list),
              "string": isinstance(v, str), "boolean": isinstance(v, bool),
              "null": v is None,
              "integer": isinstance(v, int) and not isinstance(v, bool),
              "number": isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert any(ok[t] for t in types), f"{where}: {v!r} is not {types}"
        if v is None:
            return
    if "$ref" in s:
        name = s["$ref"].split("/")[-1]
        validate(v, root["definitions"][name], root, where)
    if "enum" in s:
        assert v in s["enum"], f"{where}: {v!r} not in {s['enum']}"
    if "minimum" in s:
        assert v >= s["minimum"], f"{where}: {v} < {s['minimum']}"
    if isinstance(v, dict):
        for k in s.get("required", []):
            assert k in v, f"{where}: missing {k}"
        props = s.get("properties", {})
        if s.get("additionalProperties") is False:
            assert set(v) <= set(props), f"{where}: extra keys {set(v) - set(props)}"
        for k, sub in props.items():
            if k in v:
                validate(v[k], sub, root, f"{where}.{k}")
    if isinstance(v, list) and "items" in s:
        for i, x in enumerate(v):
            validate(x, s["items"], root, f"{where}[{i}]")


def test_json_matches_the_documented_shape(tdir):
    schema = doc_schema()
    layers = every_form_stack(tdir / "a")
    validate(audit_json(*layers), schema, schema)
    layers = secret_stack(tdir / "b")
    validate(audit_json("--all", *layers, rc=3), schema, schema)
    with pytest.raises(AssertionError):               # the validator does reject things
        validate({"version": 1}, schema, schema)


def test_errors_name_the_culprit(tdir):
    l0 = Layer(tdir / "l0").file("a")
    p = audit(l0.root, tdir / "missing", rc=1)
    assert "missing" in p.stderr
    bad = tdir / "bad.sqfs"
    bad.write_bytes(b"hsqs" + os.urandom(200))
    p = audit(l0.root, bad, rc=1)
    assert "bad.sqfs" in p.stderr
    audit("--fail-on", "sometimes", l0.root, rc=2)
    audit(rc=2)


def test_fifty_thousand_files(tdir):
    lower = tdir / "lower"
    for d in range(100):
        dd = lower / f"d{d:03}"
        dd.mkdir(parents=True)
        for f in range(500):
            (dd / f"f{f:03}").write_bytes(b"z" * (f % 7))
    upper = Layer(tdir / "upper")
    for d in range(0, 100, 2):
        upper.wh(f"d{d:03}")                      # half the directories deleted
    for d in range(1, 100, 2):
        upper.file(f"d{d:03}/f000", "replaced")   # and one file of each other one replaced
    j = audit_json("--rows", "5", upper.root, lower)
    per_dir = sum(f % 7 for f in range(500))
    assert j["totals"]["hidden_dirs"] == 50
    assert j["totals"]["hidden_files"] == 50 * 500 + 50
    assert j["totals"]["dead_bytes"] == 50 * per_dir      # f000 is empty
    assert len(j["hidden"]) == 50 * 501 + 50
    p = audit("--rows", "5", upper.root, lower)
    assert "... and" in p.stdout and len(p.stdout.splitlines()) < 20


def strata(root, *args, rc=0):
    p = run([STRATA, "--root", root, *args], check=False)
    assert p.returncode == rc, (args, p.returncode, p.stdout, p.stderr)
    return p


def test_strata_audit_of_a_snapshot_chain(tdir):
    root = tdir / "store"
    strata(root, "prepare", "s1")
    p1 = Path(json.loads(strata(root, "--json", "stat", "s1").stdout)["path"])
    Layer(p1).file("etc/app.conf", "x").file("root/.ssh/id_ed25519", PEM)
    Layer(p1).file("cache/blob", os.urandom(3000))
    strata(root, "commit", "base", "s1")
    strata(root, "prepare", "s2", "base")
    p2 = Path(json.loads(strata(root, "--json", "stat", "s2").stdout)["path"])
    Layer(p2).wh("root/.ssh/id_ed25519").whf("cache")
    strata(root, "commit", "top", "s2")
    strata(root, "prepare", "work", "top")
    j = json.loads(strata(root, "--json", "audit", "work", rc=3).stdout)
    schema = doc_schema()
    validate(j, schema, schema)
    assert hidden_set(j) == {(2, "root/.ssh/id_ed25519"), (2, "cache"), (2, "cache/blob")}
    assert j["totals"]["dead_bytes"] == 3000 + len(PEM)
    assert [s["path"] for s in j["secrets"]] == ["root/.ssh/id_ed25519"]
    p = strata(root, "audit", "work", rc=3)
    assert "`strata squash` would drop all of them" in p.stdout and KEY_BODY not in p.stdout
    strata(root, "audit", "base", rc=0)
    strata(root, "audit", "work", "--fail-on", "never", rc=0)
    p = strata(root, "--json", "audit", "nosuch", rc=1)
    assert "error" in json.loads(p.stdout)
    # the cure: the squashed chain is one image layer that hides nothing
    strata(root, "squash", "top", "flat", "--comp", "none")
    j = json.loads(strata(root, "--json", "audit", "flat").stdout)
    assert len(j["layers"]) == 1 and j["hidden"] == [] and j["secrets"] == []
    assert KEY_BODY.encode() not in Path(j["layers"][0]["path"]).read_bytes()


def test_corrupt_images_never_crash(tdir):
    """Flipped bytes in an image layer: the audit reports or fails cleanly, never crashes."""
    import random
    l1 = Layer(tdir / "l1")
    for i in range(200):
        l1.file(f"a/b/f{i}", f"file {i}\n" * (i % 13))
    l1.file("a/key", PEM)
    l0 = Layer(tdir / "l0").wh("a")
    data = mksquashfs(l1.root, tdir / "l1.sqfs").read_bytes()
    rng = random.Random(int(os.environ.get("AUDIT_SEED", "99")))
    img = tdir / "c.sqfs"
    for k in range(60):
        d = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            d[rng.randrange(96, len(d))] = rng.randrange(256)
        img.write_bytes(bytes(d))
        p = run([MKIMAGE, "audit", l0.root, img], check=False)
        assert p.returncode in (0, 1, 3), (k, p.returncode, p.stderr[-2000:])
        if p.returncode == 1:
            assert "c.sqfs" in p.stderr, p.stderr
