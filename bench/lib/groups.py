# SPDX-License-Identifier: GPL-2.0-or-later
"""The groups besides the fs workloads: squash, import, and the network / parallel-FS
stand-ins (latfs: metadata latency + op counting; sshfs: a real network file system over a
veth pair into a network namespace the bench creates and removes)."""
import json
import os
import shutil
import subprocess
import time

from common import NA, drop_caches, fresh_dir, human_bytes, log, rmtree, sh, timed
from systems import Mount, Source, fuse_mount
from workloads import runs_after

SQUASH_COMPS_FULL = ["lz4", "lz4hc", "zstd", "gzip"]
NET_HOST, NET_NS = "198.18.213.1", "198.18.213.2"     # RFC 2544 benchmark range, /30


def _count_tree(root):
    files = dirs = size = 0
    for dp, dn, fn in os.walk(root):
        dirs += len(dn)
        files += len(fn)
        for f in fn:
            try:
                size += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return files, dirs, size


def fs_intro(ctx, src):
    files, dirs, size = _count_tree(src.native)
    return ("The stack: 3 directory layers (top first `L2:L1:L0`) with the Python 3.11 stdlib "
            "spread over all three, %d small files in %d dirs (rewritten and whited-out "
            "entries in L1: %d char-0/0 whiteouts; an opaque dir in L2), a %d-entry directory "
            "split over the 3 layers, and a %d MiB file in L0. Merged view: %d files, %d "
            "dirs, %s. Image systems mount one SquashFS image of the merged view "
            "(`mksquashfs -comp lz4`, %s). Write workloads start from an empty upper dir."
            % (ctx.p["small_dirs"] * ctx.p["small_per_dir"], ctx.p["small_dirs"],
               ctx.whiteouts, ctx.p["bigdir"], ctx.p["big_mib"], files, dirs,
               human_bytes(size), human_bytes(os.path.getsize(src.image))))


def count_steps(ctx, groups):
    n = 0
    comps = ["lz4"] if ctx.quick else SQUASH_COMPS_FULL
    n += 3 * len(comps) if "squash" in groups else 0
    n += 3 if "import" in groups else 0
    n += len(netfs_systems(ctx)) * (("latfs" in groups) + ("sshfs" in groups))
    return n


# ---------------------------------------------------------------------------------------------
# squash

def _squash_cmd(ctx, tool, comp, src, tar, out):
    base, hc = ("lz4", True) if comp == "lz4hc" else (comp, False)
    if tool == "mkimage":
        return [ctx.bin("mkimage"), "squash", "--comp", comp, "--threads", "2",
                "-o", out, src], None
    if tool == "mksquashfs":
        return ["mksquashfs", src, out, "-comp", base, "-processors", "2", "-noappend",
                "-quiet", "-no-progress"] + (["-Xhc"] if hc else []), None
    return ["tar2sqfs", "-c", base, "-j", "2", "-q", "-f", out] + \
        (["-X", "hc"] if hc else []), tar


def _run_stdin(cmd, stdin_path, timeout):
    t0 = time.perf_counter()
    with open(stdin_path, "rb") as f:
        try:
            p = subprocess.run(cmd, stdin=f, capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise NA("%s missing" % cmd[0])
        except subprocess.TimeoutExpired:
            raise NA("%s timed out" % cmd[0])
    if p.returncode:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise NA("%s exited %d: %s" % (cmd[0], p.returncode, err[-1][:200] if err else ""))
    return time.perf_counter() - t0


def run_squash(ctx, add):
    ctx.squash_comps = ["lz4"] if ctx.quick else SQUASH_COMPS_FULL
    src = os.path.join(ctx.root, "sqsrc")
    ctx.progress.update("squash: preparing the input tree")
    # Hard links into the native tree: no copy; each file still appears once in the input.
    sh(["cp", "-al", ctx.data + "/native", src])
    # The big random file measures no codec; tar2sqfs is quadratic in a directory's size
    # (minutes for bigdir/), which would eat the time budget of the whole suite.
    rmtree(os.path.join(src, "data"))
    rmtree(os.path.join(src, "bigdir"))
    files, dirs, size = _count_tree(src)
    ctx.squash_input = ("the merged view without the big file and bigdir/ (stdlib + small "
                        "files) — %d files, %d dirs, %s" % (files, dirs, human_bytes(size)))
    tar = os.path.join(ctx.root, "sqsrc.tar")
    sh(["tar", "-cf", tar, "-C", src, "."])
    sh(["cat", tar], timeout=300)               # warm-up: the input in page cache for all
    out = os.path.join(ctx.root, "out.sqfs")
    runs = ctx.runs_arg or (1 if ctx.quick else 3)
    for comp in ctx.squash_comps:
        for tool in ("mkimage", "mksquashfs", "tar2sqfs"):
            ctx.progress.step += 1
            ctx.progress.update("squash · %s · %s" % (comp, tool))
            samples, extra = [], {}
            try:
                if tool == "mkimage" and not os.access(ctx.bin("mkimage"),
                                                       os.X_OK):
                    raise NA("build/mkimage not built")
                n, i = runs, 0
                while i < n:
                    ctx.progress.update("squash · %s · %s · run %d/%d" % (comp, tool, i + 1,
                                                                         n), True)
                    if os.path.exists(out):
                        os.unlink(out)
                    os.sync()
                    cmd, stdin = _squash_cmd(ctx, tool, comp, src, tar, out)
                    if stdin:
                        samples.append(_run_stdin(cmd, stdin, ctx.timeout))
                    else:
                        samples.append(timed(cmd, timeout=ctx.timeout)[0])
                    if i == 0:
                        n = runs_after(samples[0], n)
                    i += 1
                extra["bytes"] = os.path.getsize(out)
                note = None
                if sh(["unsquashfs", "-s", out], check=False).returncode:
                    note = "unsquashfs -s rejects the image"
                add(ctx, "squash", comp, tool, samples, extra=extra, note=note,
                    strata=(tool == "mkimage"))
            except NA as e:
                add(ctx, "squash", comp, tool, reason=str(e), strata=(tool == "mkimage"))
            except OSError as e:
                add(ctx, "squash", comp, tool, reason="failed: %s" % e,
                    strata=(tool == "mkimage"))
    for p in (out, tar):
        if os.path.exists(p):
            os.unlink(p)
    rmtree(src)


# ---------------------------------------------------------------------------------------------
# import

def _oci_layer(ctx):
    """An OCI image (umoci) whose one layer is the stdlib + small files; its blob path."""
    tar = os.path.join(ctx.root, "layer.tar")
    parts = ["small"] if ctx.quick else ["usr", "small"]
    sh(["tar", "-cf", tar, "-C", os.path.join(ctx.data, "native")] + parts)
    ctx.import_bytes = os.path.getsize(tar)
    oci = os.path.join(ctx.root, "oci")
    sh(["umoci", "init", "--layout", oci])
    sh(["umoci", "new", "--image", oci + ":bench"])
    sh(["umoci", "raw", "add-layer", "--image", oci + ":bench", tar])
    os.unlink(tar)
    with open(os.path.join(oci, "index.json")) as f:
        mdig = json.load(f)["manifests"][0]["digest"]
    with open(os.path.join(oci, "blobs", *mdig.split(":"))) as f:
        ldig = json.load(f)["layers"][-1]["digest"]
    blob = os.path.join(oci, "blobs", *ldig.split(":"))
    ctx.import_input = "%s, %s uncompressed, %s gzip blob made by umoci" % (
        " + ".join(parts), human_bytes(ctx.import_bytes), human_bytes(os.path.getsize(blob)))
    return oci, blob, ldig


def run_import(ctx, add):
    ctx.progress.update("import: building the OCI layer")
    try:
        oci, blob, digest = _oci_layer(ctx)
    except NA as e:
        ctx.import_input, ctx.import_bytes = "n/a", 0
        add(ctx, "import", "import", "tar -x", reason="no OCI layer: %s" % e)
        return
    dst = os.path.join(ctx.root, "import-dst")
    sh(["cat", blob])                                   # warm-up
    strata = ctx.bin("strata")
    tools = [("tar -x", lambda: ["tar", "-xzf", blob, "-C", fresh_dir(dst)]),
             ("umoci unpack", lambda: rmtree(dst) or
              ["umoci", "unpack", "--image", oci + ":bench", dst]),
             ("strata import", lambda: rmtree(dst) or
              [strata, "--root", dst, "import", "bench", blob])]
    runs = ctx.runs_arg or (1 if ctx.quick else 3)
    for name, mk in tools:
        ctx.progress.step += 1
        ctx.progress.update("import · %s" % name)
        samples = []
        try:
            if name == "strata import" and not os.access(strata, os.X_OK):
                raise NA("build/strata not built")
            for i in range(runs):
                ctx.progress.update("import · %s · run %d/%d" % (name, i + 1, runs),
                                    True)
                cmd = mk()
                os.sync()
                samples.append(timed(cmd, timeout=ctx.timeout)[0])
            add(ctx, "import", "import", name, samples, strata=name.startswith("strata"))
        except (NA, OSError) as e:
            add(ctx, "import", "import", name, reason=str(e), strata=name.startswith("strata"))
        rmtree(dst)


# ---------------------------------------------------------------------------------------------
# network / parallel-FS stand-ins

def netfs_systems(ctx):
    """The systems the network/latency groups mount (not the fs-group-only variants)."""
    return [s for s in ctx.systems if not getattr(s, "fs_only", False)]


def _kind(system):
    return "flat dir" if system.key == "native" else (
        "image" if system.kind == "image" else "dirs")


def _container_start(ctx, system, src, base):
    """Mount the system on the remote storage and import the modules: (seconds, import s)."""
    t0 = time.perf_counter()
    m = system.mount(ctx, src, fresh_dir(base))
    try:
        env = dict(os.environ, PYTHONHOME=os.path.join(m.path, "usr"))
        env.pop("PYTHONPATH", None)
        t_imp, _ = timed(["/usr/bin/python3", "-S", "-B", "-s", "-c",
                          "import " + ", ".join(ctx.modules)], env=env, timeout=ctx.timeout)
        return time.perf_counter() - t0, t_imp, m
    except BaseException:
        m.close()
        raise


def _remote_source(mnt, where):
    return Source([os.path.join(mnt, "layers", n) for n in ("L2", "L1", "L0")],
                  os.path.join(mnt, "image.sqfs"), os.path.join(mnt, "native"), where)


def _read_stats(mnt):
    out = {}
    with open(os.path.join(mnt, ".latfs-stats")) as f:
        for line in f:
            k, v = line.split()
            out[k] = int(v)
    return out


def _reset_stats(mnt):
    with open(os.path.join(mnt, ".latfs-stats"), "w") as f:
        f.write("0\n")


def _netfs_runs(ctx, add, backend, mount_storage, counts):
    """Per system and run: fresh storage mount, cold caches, container start, op counts."""
    runs = ctx.runs_arg or (1 if ctx.quick else 3)
    ctx.netfs_backends.append(backend)
    smnt = os.path.join(ctx.root, backend + "-mnt")
    for s in netfs_systems(ctx):
        ctx.progress.step += 1
        ctx.progress.update("%s · %s" % (backend, s.key))
        samples, imports, extra = [], [], {}
        try:
            s.check(ctx)
            for i in range(runs):
                ctx.progress.update("%s · %s · run %d/%d" % (backend, s.key, i + 1, runs),
                                    True)
                storage = mount_storage(fresh_dir(smnt))
                try:
                    drop_caches(ctx)
                    if counts:
                        _reset_stats(smnt)
                    secs, t_imp, m = _container_start(
                        ctx, s, _remote_source(smnt, backend),
                        os.path.join(ctx.root, "mnt", s.key))
                    if counts:
                        st = _read_stats(smnt)
                        extra = {"meta_ops": st["meta"], "data_ops": st["data"],
                                 "data_bytes": st["data_bytes"]}
                        extra.update({"op_" + k: v for k, v in st.items()
                                      if k not in ("meta", "data", "data_bytes") and v})
                    m.close()
                finally:
                    storage.close()
                samples.append(secs)
                imports.append(t_imp)
            extra["import_s"] = sorted(imports)[len(imports) // 2]
            add(ctx, "netfs", backend, s, samples, extra=extra, kind=_kind(s))
        except NA as e:
            add(ctx, "netfs", backend, s, reason=str(e), kind=_kind(s))
        except (OSError, ValueError, KeyError) as e:
            add(ctx, "netfs", backend, s, reason="failed: %s: %s" % (type(e).__name__, e),
                kind=_kind(s))
        rmtree(os.path.join(ctx.root, "mnt", s.key))


def run_latfs(ctx, add, src):
    latfs = os.path.join(ctx.tools, "latfs")

    def mount_storage(mnt):
        m = Mount(ctx, mnt)
        fuse_mount(ctx, m, [latfs, "-f", ctx.data, mnt, "-o",
                            "delay_us=%d,attr_timeout=1,entry_timeout=1,negative_timeout=1"
                            % ctx.lat_us], mnt, mnt + ".log")
        return m

    ctx.netfs_intro += (
        "**latfs** (bench/latfs.c) forwards to the local layer directory and sleeps %d µs on "
        "every metadata operation (lookup/getattr, open, readdir, xattr, …: a parallel FS "
        "metadata-server round trip), counting each; data reads are not delayed. Every run "
        "mounts latfs anew, drops caches, mounts the system on it (upper dir on local disk) "
        "and imports %d stdlib modules with `python3 -S` and `PYTHONHOME` inside the mount: "
        "*container start* = mount + import. Counts are the storage-side operations of "
        "that start.\n\n" % (ctx.lat_us, len(ctx.modules)))
    _netfs_runs(ctx, add, "latfs", mount_storage, True)


def _ensure_ssh(ctx):
    if shutil.which("sshfs") and os.path.exists("/usr/sbin/sshd"):
        return
    if ctx.quick or os.geteuid() != 0:
        raise NA("sshfs or openssh-server not installed")
    log("sshfs: installing openssh-server sshfs (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server",
        "sshfs"], env=env, timeout=600)


def _kill_proc(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _del_link(name):
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def _start_sshd(ctx, d):
    """A network namespace (held by a sleeping process) joined to ours by a veth pair, and
    an sshd in it on a private key pair.  Everything is undone by the run's cleanup."""
    for name in ("host", "client"):
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, name)])
    shutil.copy(os.path.join(d, "client.pub"), os.path.join(d, "authorized_keys"))
    if not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)
        ctx.cleanup.push("rmdir /run/sshd", os.rmdir, "/run/sshd")
    cfg = os.path.join(d, "sshd_config")
    with open(cfg, "w") as f:
        f.write("ListenAddress %s\nPort 22\nHostKey %s/host\nAuthorizedKeysFile %s/"
                "authorized_keys\nPermitRootLogin prohibit-password\nStrictModes no\n"
                "UsePAM no\nPasswordAuthentication no\nPidFile %s/sshd.pid\n"
                "Subsystem sftp internal-sftp\n" % (NET_NS, d, d, d))
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"],
                              start_new_session=True)
    ctx.cleanup.push("remove network namespace", _kill_proc, holder)
    time.sleep(0.2)
    pid = str(holder.pid)
    host_if, ns_if = "stb%d" % (os.getpid() % 10000), "stn%d" % (os.getpid() % 10000)
    sh(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
    ctx.cleanup.push("remove veth " + host_if, _del_link, host_if)
    sh(["ip", "link", "set", ns_if, "netns", pid])
    sh(["ip", "addr", "add", NET_HOST + "/30", "dev", host_if])
    sh(["ip", "link", "set", host_if, "up"])
    ns = ["nsenter", "-t", pid, "-n"]
    sh(ns + ["ip", "addr", "add", NET_NS + "/30", "dev", ns_if])
    sh(ns + ["ip", "link", "set", ns_if, "up"])
    sh(ns + ["ip", "link", "set", "lo", "up"])
    sshd = subprocess.Popen(ns + ["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "sshd.log"),
                                                                   "w"),
                            start_new_session=True)
    ctx.cleanup.push("stop sshd", _kill_proc, sshd)
    ssh_opts = ["-o", "IdentityFile=%s/client" % d, "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR"]
    for _ in range(50):
        if subprocess.run(["ssh"] + ssh_opts + ["root@" + NET_NS, "true"],
                          capture_output=True, timeout=10).returncode == 0:
            return ssh_opts
        time.sleep(0.1)
    raise NA("sshd in the namespace did not answer")


def run_sshfs(ctx, add, src):
    try:
        _ensure_ssh(ctx)
        d = fresh_dir(os.path.join(ctx.root, "ssh"))
        ssh_opts = _start_sshd(ctx, d)
    except NA as e:
        ctx.netfs_backends.append("sshfs")
        for s in netfs_systems(ctx):
            add(ctx, "netfs", "sshfs", s, reason=str(e), kind=_kind(s))
        return
    opts = ",".join(o for o in ssh_opts if o != "-o")

    def mount_storage(mnt):
        m = Mount(ctx, mnt)
        fuse_mount(ctx, m, ["sshfs", "-f", "-o", opts, "root@%s:%s" % (NET_NS, ctx.data),
                            mnt], mnt, mnt + ".log")
        return m

    ctx.netfs_intro += (
        "**sshfs** mounts the same layer directory from an sshd in a network namespace the "
        "bench creates, over a veth pair (%s ↔ %s); each run is a fresh sshfs mount with "
        "dropped caches. No op counts (the server side is sshd's sftp).\n\n" % (NET_HOST,
                                                                                NET_NS))
    _netfs_runs(ctx, add, "sshfs", mount_storage, False)
