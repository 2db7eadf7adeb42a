# SPDX-License-Identifier: GPL-2.0-or-later
"""The bench/ C tools behave: latfs forwards faithfully and counts operations, walk and
mdtest report what they did.  Behaviour only, never timing."""
import os
import shutil
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("STRATA_BUILD", os.path.join(REPO, "build"))
TOOLS = os.path.join(BUILD, "bench")


def kv(text):
    return dict(tok.split("=", 1) for tok in text.split() if "=" in tok)


@pytest.fixture(scope="module")
def tools():
    subprocess.run(["make", "-s", "-C", os.path.join(REPO, "bench"), "OUT=" + TOOLS],
                   check=True)
    return TOOLS


def _mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def latfs(tools, tmp_path):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([os.path.join(tools, "latfs"), "-f", str(src), str(mnt),
                             "-o", "delay_us=10"])
    try:
        for _ in range(200):
            if _mounted(str(mnt)):
                break
            time.sleep(0.02)
        else:
            pytest.fail("latfs did not mount")
        yield src, mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        if _mounted(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(10)


def stats(mnt):
    with open(os.path.join(mnt, ".latfs-stats")) as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


def test_latfs_forwards(latfs):
    src, mnt = latfs
    os.makedirs(mnt / "d" / "e")
    (mnt / "d" / "f").write_bytes(b"hello")
    os.symlink("f", mnt / "d" / "l")
    os.link(mnt / "d" / "f", mnt / "d" / "h")
    os.rename(mnt / "d" / "h", mnt / "d" / "h2")
    os.chmod(mnt / "d" / "f", 0o600)
    assert (src / "d" / "f").read_bytes() == b"hello"
    assert os.readlink(src / "d" / "l") == "f"
    assert os.stat(src / "d" / "h2").st_ino == os.stat(src / "d" / "f").st_ino
    assert os.stat(src / "d" / "f").st_mode & 0o777 == 0o600
    assert sorted(os.listdir(mnt / "d")) == ["e", "f", "h2", "l"]
    assert os.stat(mnt / "d" / "f").st_ino == os.stat(src / "d" / "f").st_ino
    os.unlink(mnt / "d" / "h2")
    os.rmdir(mnt / "d" / "e")
    assert sorted(os.listdir(src / "d")) == ["f", "l"]
    assert ".latfs-stats" not in os.listdir(mnt)


def test_latfs_counts_and_resets(latfs):
    src, mnt = latfs
    (src / "a").write_bytes(b"x" * 10000)
    with open(mnt / ".latfs-stats", "w") as f:
        f.write("reset\n")
    assert stats(mnt)["meta"] == 0
    with open(mnt / "a", "rb") as f:
        assert f.read() == b"x" * 10000
    s = stats(mnt)
    assert s["open"] == 1 and s["release"] == 1
    assert s["read"] >= 1 and s["data_bytes"] == 10000
    assert s["meta"] >= 2
    os.listdir(mnt)
    assert stats(mnt)["readdir"] >= 1


def test_walk_counts(tools, tmp_path):
    for i in range(5):
        (tmp_path / ("f%d" % i)).write_bytes(b"ab" * i)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g").write_bytes(b"xyz")
    out = subprocess.run([os.path.join(tools, "walk"), "read", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    r = kv(out)
    assert r["entries"] == "7" and r["bytes"] == str(2 * 10 + 3) and r["errors"] == "0"
    out = subprocess.run([os.path.join(tools, "walk"), "readdir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert kv(out)["entries"] == "6"
    lst = tmp_path / "list"
    lst.write_text("f1\nsub/g\n")
    out = subprocess.run([os.path.join(tools, "walk"), "stat", str(lst), "3"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert kv(out)["entries"] == "6"
    p = subprocess.run([os.path.join(tools, "walk"), "tree", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "missing" in p.stderr


def test_mdtest_and_randread(tools, tmp_path):
    out = subprocess.run([os.path.join(tools, "mdtest"), "-d", str(tmp_path), "-p", "3",
                          "-n", "50"], capture_output=True, text=True, check=True).stdout
    phases = [kv(line)["phase"] for line in out.splitlines()]
    assert phases == ["create", "stat", "open", "unlink", "total"]
    assert all(kv(line)["files"] == "150" for line in out.splitlines())
    assert os.listdir(tmp_path) == []            # unlink phase removed everything
    big = tmp_path / "big"
    big.write_bytes(os.urandom(1 << 20))
    out = subprocess.run([os.path.join(tools, "randread"), str(big), "100"],
                         capture_output=True, text=True, check=True).stdout
    assert kv(out)["reads"] == "100" and kv(out)["bytes"] == str(100 * 4096)
    assert subprocess.run([os.path.join(tools, "randread"), str(tmp_path / "nope"), "1"],
                          capture_output=True).returncode == 1


@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="no fusermount3")
def test_latfs_bad_source(tools, tmp_path):
    p = subprocess.run([os.path.join(tools, "latfs"), str(tmp_path / "nope"), str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "nope" in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the suite mounts (root)")
def test_suite_reports_missing_binaries_as_na(tmp_path):
    """bench/run never crashes on a missing strata binary: the system is n/a, with why."""
    env = dict(os.environ, STRATA_BUILD=str(tmp_path / "nobuild"))
    out = tmp_path / "res"
    p = subprocess.run([os.path.join(REPO, "bench", "run"), "--quick", "--only", "squash,import",
                        "--root", str(tmp_path / "work"), "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "build/mkimage not built" in report or "mkimage not built" in report
    assert "strata not built" in report
    assert (out / "squash.csv").exists() and (out / "results.json").exists()
    # mksquashfs and tar2sqfs still measured, and nothing is left behind in the work root.
    assert "| lz4 | `mksquashfs` | n/a" not in report
    assert os.listdir(tmp_path / "work") == []
