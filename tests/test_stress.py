"""Stress: several processes doing random create/write/rename/unlink on one mount for a
bounded time, then a consistency check -- no lost writes, no EIO, no torn files, the same
result after a remount and through the kernel's overlayfs over the written upper dir.

Each worker owns a directory (seeded from a lower layer, so copy-up races too) and keeps a
model of what it wrote; all workers also append records to one shared lower file and
create/rename/unlink self-checking files in one shared directory."""

import hashlib
import json
import multiprocessing
import os
import random
import time

import pytest

import union
from union import E

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

WORKERS = int(os.environ.get("STRATA_STRESS_WORKERS", "4"))
SECONDS = float(os.environ.get("STRATA_STRESS_SECONDS", "20"))


def layers():
    low = [E("shared/log", data=b"")]
    for w in range(WORKERS):
        for k in range(20):
            low.append(E(f"w{w}/lower{k}", data=f"lower {w} {k}\n".encode() * (k + 1)))
        low.append(E(f"w{w}/sub/deep", data=b"deep\n"))
    return [low, [E("shared/pool/seed", data=selfcheck(b"seed"))]]


def selfcheck(payload):
    return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def valid_selfcheck(data):
    h, _, payload = data.partition(b"\n")
    return hashlib.sha256(payload).hexdigest().encode() == h


def worker(root, w, seed, deadline, out):
    rng = random.Random(seed)
    mydir = os.path.join(root, f"w{w}")
    model = {}
    for n in os.listdir(mydir):
        if n != "sub":
            with open(os.path.join(mydir, n), "rb") as f:
                model[n] = f.read()
    errors = []
    held = []
    appends = 0
    ops = 0
    serial = 0

    def p(n):
        return os.path.join(mydir, n)

    while time.monotonic() < deadline:
        ops += 1
        op = rng.choice(["create", "write", "append", "rename", "unlink", "read", "shared",
                         "pool", "pool", "truncate", "hold"])
        try:
            if op == "create":
                serial += 1
                n = f"f{serial}"
                data = rng.randbytes(rng.choice([0, 10, 4096, 70000]))
                with open(p(n), "xb") as f:
                    f.write(data)
                model[n] = data
            elif op in ("write", "append", "truncate", "read", "rename", "unlink") and model:
                n = rng.choice(sorted(model))
                if op == "write":
                    off = rng.randrange(0, len(model[n]) + 1)
                    data = rng.randbytes(rng.choice([1, 100, 5000]))
                    fd = os.open(p(n), os.O_WRONLY)
                    try:
                        os.pwrite(fd, data, off)
                    finally:
                        os.close(fd)
                    old = model[n]
                    model[n] = old[:off] + data + old[off + len(data):]
                elif op == "append":
                    data = rng.randbytes(rng.choice([1, 300]))
                    with open(p(n), "ab") as f:
                        f.write(data)
                    model[n] += data
                elif op == "truncate":
                    size = rng.randrange(0, len(model[n]) + 100)
                    os.truncate(p(n), size)
                    model[n] = model[n][:size] + bytes(max(0, size - len(model[n])))
                elif op == "read":
                    with open(p(n), "rb") as f:
                        got = f.read()
                    if got != model[n]:
                        errors.append(f"read {n}: content differs from what was written")
                elif op == "rename":
                    serial += 1
                    dst = rng.choice([f"r{serial}", rng.choice(sorted(model))])
                    os.rename(p(n), p(dst))
                    model[dst] = model.pop(n)
                elif op == "unlink":
                    os.unlink(p(n))
                    del model[n]
            elif op == "hold" and model:
                # readers keep files open while they are written, renamed, removed
                held.append(os.open(p(rng.choice(sorted(model))), os.O_RDONLY))
                if len(held) > 3:
                    os.close(held.pop(0))
            elif op == "shared":
                with open(os.path.join(root, "shared/log"), "ab") as f:
                    f.write(f"{w}:{appends}\n".encode())
                appends += 1
            elif op == "pool":
                pool = os.path.join(root, "shared/pool")
                serial += 1
                tmp = os.path.join(pool, f".tmp-{w}-{serial}")
                with open(tmp, "wb") as f:
                    f.write(selfcheck(rng.randbytes(rng.choice([10, 9000]))))
                dst = os.path.join(pool, f"p{rng.randrange(8)}")
                os.rename(tmp, dst)                       # replaces other workers' files
                victim = os.path.join(pool, f"p{rng.randrange(8)}")
                try:
                    if rng.random() < 0.3:
                        os.unlink(victim)
                    else:
                        with open(victim, "rb") as f:
                            if not valid_selfcheck(f.read()):
                                errors.append(f"torn pool file {victim}")
                except FileNotFoundError:
                    pass                                  # another worker removed it
        except OSError as e:
            errors.append(f"{op}: {e}")
            if len(errors) > 20:
                break
    for fd in held:
        os.close(fd)
    out.put(json.dumps({"w": w, "model": {k: v.hex() for k, v in model.items()},
                        "errors": errors, "appends": appends, "ops": ops}))


def run_workers(root, seed, seconds):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    deadline = time.monotonic() + seconds
    procs = [ctx.Process(target=worker, args=(str(root), w, seed * 100 + w, deadline, q))
             for w in range(WORKERS)]
    for pr in procs:
        pr.start()
    results = [json.loads(q.get(timeout=seconds + 120)) for _ in procs]
    for pr in procs:
        pr.join(30)
    return sorted(results, key=lambda r: r["w"])


def check(root, results):
    problems = []
    for r in results:
        problems += [f"worker {r['w']}: {e}" for e in r["errors"]]
        mydir = os.path.join(root, f"w{r['w']}")
        names = set(os.listdir(mydir)) - {"sub"}
        model = {k: bytes.fromhex(v) for k, v in r["model"].items()}
        if names != set(model):
            problems.append(f"worker {r['w']}: names differ: missing "
                            f"{sorted(set(model) - names)[:10]}, extra "
                            f"{sorted(names - set(model))[:10]}")
        for n in sorted(names & set(model)):
            with open(os.path.join(mydir, n), "rb") as f:
                if f.read() != model[n]:
                    problems.append(f"worker {r['w']}: {n}: lost or wrong write")
    with open(os.path.join(root, "shared/log"), "rb") as f:
        lines = f.read().splitlines()
    want = {f"{r['w']}:{i}".encode() for r in results for i in range(r["appends"])}
    if set(lines) != want or len(lines) != len(want):
        problems.append(f"shared log: {len(lines)} records, expected {len(want)} "
                        f"(missing {len(want - set(lines))})")
    pool = os.path.join(root, "shared/pool")
    for n in os.listdir(pool):
        with open(os.path.join(pool, n), "rb") as f:
            if not n.startswith(".tmp-") and not valid_selfcheck(f.read()):
                problems.append(f"pool/{n}: torn")
    return problems


@pytest.mark.parametrize("kind", [
    pytest.param("impl", marks=union.fo_differs("unlinked lower files come back under load")),
    "kernel"])
def test_stress(tdir, kind):
    seed = int(os.environ.get("STRATA_SEED", random.SystemRandom().randrange(1 << 30)))
    seconds = SECONDS if kind == "impl" else min(SECONDS, 5)
    print(f"stress seed {seed}, {WORKERS} workers, {seconds} s")
    lowers, upper, work, mnt = union.build_stack(tdir, layers(), kernel_form=True)
    m = union.KernelMount(mnt, lowers, upper, work, ["index=off"]) if kind == "kernel" \
        else union.FuseMount(mnt, lowers, upper, work, ["allow_other"])
    with m:
        results = run_workers(mnt, seed, seconds)
        ops = sum(r["ops"] for r in results)
        print(f"{ops} operations")
        problems = check(mnt, results)
        assert not problems, f"seed {seed}:\n" + "\n".join(problems[:40])
    if kind == "kernel":
        return
    # the result survives a remount, and the kernel reads the same from the upper dir
    with union.FuseMount(mnt, lowers, upper, work, []):
        problems = check(mnt, results)
        assert not problems, "after remount:\n" + "\n".join(problems[:40])
    work2 = tdir / "work2"
    work2.mkdir()
    with union.KernelMount(mnt, lowers, upper, work2, ["index=off"]):
        problems = check(mnt, results)
        assert not problems, "kernel over the upper dir:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("delay_ms", [2, 20, 60])
def test_copy_up_crash_leaves_no_partial_file(tdir, impl, delay_ms):
    """SIGKILL the daemon in the middle of copying up a big file: the upper dir then holds
    either no copy or the complete one (copy-up goes through workdir + rename), and a new
    mount shows the whole file."""
    import hashlib
    import signal
    import threading
    chunk = bytes(range(256)) * 4096                      # 1 MiB, not all zeros
    data_hash = hashlib.sha256()
    lowers, upper, work, mnt = union.build_stack(tdir, [[E("big")]])
    with open(lowers[0] / "big", "wb") as f:
        for i in range(96):
            block = i.to_bytes(4, "little") + chunk[4:]
            f.write(block)
            data_hash.update(block)
    want = data_hash.hexdigest()
    m = union.FuseMount(mnt, lowers, upper, work, [])
    m.start()
    try:
        result = {}

        def copy_up():
            try:
                os.chmod(mnt / "big", 0o600)
                result["chmod"] = "ok"
            except OSError as e:
                result["chmod"] = e.errno
        t = threading.Thread(target=copy_up)
        t.start()
        time.sleep(delay_ms / 1000)
        for p in m.pids:
            os.kill(p, signal.SIGKILL)
        t.join(30)
        assert not t.is_alive(), "chmod still blocked after the daemon was killed"
    finally:
        m.stop()
    if (upper / "big").exists():
        h = hashlib.sha256()
        with open(upper / "big", "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        assert h.hexdigest() == want, f"partial copy-up visible in the upper dir " \
            f"(size {os.path.getsize(upper / 'big')}, chmod: {result})"
    with union.FuseMount(mnt, lowers, upper, work, []):
        h = hashlib.sha256()
        with open(mnt / "big", "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        assert h.hexdigest() == want


def _create_through_fd(fd, tag, n, q):
    """Create n files through fd, a directory opened before its parents started moving;
    report the names made and any error."""
    made, errors = [], []
    try:
        for i in range(n):
            name = f"{tag}.{i}"
            try:
                f = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640, dir_fd=fd)
                os.write(f, name.encode())
                os.close(f)
                if i % 3 == 0:
                    os.mkdir(name + ".d", dir_fd=fd)
                made.append(name)
            except OSError as e:
                errors.append(f"{name}: {e}")
    finally:
        os.close(fd)
    q.put((tag, made, errors))


def _rename_back_and_forth(a, b, seconds, q):
    n, errors, end = 0, [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.rename(a, b)
            os.rename(b, a)
            n += 1
        except OSError as e:
            errors.append(str(e))
    q.put(("rename", n, errors))


def _look_up_first(mnt, names, q):
    """First lookups of lower directories below the directory being renamed, racing the
    renames (whichever name it has at the moment)."""
    found = 0
    for n in names:
        for parent in ("top/p", "top/q"):
            try:
                os.stat(os.path.join(mnt, parent, n, "f"))
                found += 1
                break
            except FileNotFoundError:
                pass
    q.put(("look", found, []))


def _copy_up_lowers(paths, q):
    errors = []
    for p in paths:
        try:
            os.chmod(p, 0o600)
        except OSError as e:
            errors.append(f"{p}: {e}")
    q.put(("copyup", len(paths), errors))


def test_creates_while_parents_move(tdir, impl):
    """Creates in directories already in the upper run in parallel (copy_lock shared) and
    are made in place: a directory being created in must not move or be copied up under
    them.  Workers create files and directories through an fd of their directory -- one
    in the upper, one that is copied up by the first create, one in a merged directory --
    while another process renames their common parent back and forth (a redirect: it has
    lower content), another looks up lower directories below it for the first time, and
    another copies up lower files beside them.  Afterwards each file is in its directory,
    complete, with the mode asked; each directory looked up during the renames still
    shows its lower file (a lookup racing a rename once kept the lower entry under the
    merged path of the moment, and the directory listed empty); nothing was lost, nothing
    is in workdir, and the kernel's overlayfs reads the same from the upper dir."""
    lows = [E(f"top/p/w{w}/low{k}", data=b"low") for w in range(3) for k in range(40)]
    lows += [E("top/p/merged/m0", data=b"m")]
    looked = [f"d{k}" for k in range(400)]
    lows += [E(f"top/p/{d}/f", data=d.encode()) for d in looked]
    lowers, upper, work, mnt = union.build_stack(tdir, [lows],
                                                 upper_entries=[E("top/p/merged/u0")])
    with union.FuseMount(mnt, lowers, upper, work, []) as m:
        os.makedirs(m.mnt / "top/p/up")
        dirs = ["up", "w0", "merged"]
        q = multiprocessing.Queue()
        fds = [os.open(m.mnt / "top/p" / d, os.O_RDONLY | os.O_DIRECTORY) for d in dirs]
        procs = [multiprocessing.Process(target=_create_through_fd, args=(fd, d, 800, q))
                 for fd, d in zip(fds, dirs)]
        procs.append(multiprocessing.Process(target=_rename_back_and_forth,
                                             args=(m.mnt / "top/p", m.mnt / "top/q", 4, q)))
        procs.append(multiprocessing.Process(target=_look_up_first,
                                             args=(str(m.mnt), looked, q)))
        lower_files = [m.mnt / "top/p" / f"w{w}" / f"low{k}" for w in (1, 2) for k in range(40)]
        for p in procs:
            p.start()
        time.sleep(0.2)
        cp = multiprocessing.Process(target=_copy_up_lowers,
                                     args=([str(f) for f in lower_files], q))
        cp.start()
        procs.append(cp)
        results = {}
        for _ in procs:
            tag, made, errors = q.get(timeout=120)
            results[tag] = (made, errors)
        for p in procs:
            p.join(30)
        for fd in fds:
            os.close(fd)
        errors = {t: e for t, (_, e) in results.items() if e}
        # the renamer and the copy-ups use paths and may find top/p renamed away: ENOENT
        for t in ("rename", "copyup"):
            errors[t] = [e for e in errors.get(t, []) if "No such file" not in e]
            if not errors[t]:
                del errors[t]
        assert not errors, errors
        assert results["rename"][0] > 0, "the parent was never renamed"
        base = m.mnt / "top/p"
        assert base.is_dir() and not (m.mnt / "top/q").exists()

        def check(root):
            problems = []
            for d in dirs:
                made = results[d][0]
                names = set(os.listdir(root / d))
                want = set(made) | {n + ".d" for n in made if int(n.split(".")[1]) % 3 == 0}
                if not want <= names:
                    problems.append(f"{d}: missing {sorted(want - names)[:5]}")
                for n in made:
                    st = os.stat(root / d / n)
                    if (root / d / n).read_bytes() != n.encode() or st.st_mode & 0o777 != 0o640:
                        problems.append(f"{d}/{n}: {oct(st.st_mode)}")
            for d in looked:        # looked up while their parent moved
                try:
                    ok = os.listdir(root / d) == ["f"] and \
                        (root / d / "f").read_bytes() == d.encode()
                except OSError as e:
                    ok = e
                if ok is not True:
                    problems.append(f"{d}: {ok or os.listdir(root / d)}")
            return problems
        problems = check(base)
        assert not problems, problems[:10]
        assert {"m0", "u0"} <= set(os.listdir(base / "merged"))
    assert not [n for n in os.listdir(work / "work")], "left in workdir"
    work2 = tdir / "work2"
    work2.mkdir()
    with union.KernelMount(mnt, lowers, upper, work2, ["index=off", "redirect_dir=on"]):
        problems = check(mnt / "top/p")
        assert not problems, "kernel over the upper dir: " + str(problems[:10])
