"""Shared fixtures for strata's tests (owned by the tests helper).

Every test that mounts something gets a fresh directory from `tdir`; whatever is still
mounted under it when the test ends (even on failure) is unmounted -- fusermount3 -u, then
umount, then umount -l -- and its daemons are ended by pid before the directory is removed.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import union  # noqa: E402

# Under /tmp (not pytest's 0700 tmp_path) so unprivileged uids can reach test mounts.
TMP_ROOT = Path(os.environ.get("STRATA_TEST_TMP", "/tmp"))


def pytest_report_header(config):
    return [f"strata: implementation under test: {union.impl_bin()}",
            f"strata: build dir: {union.build_dir()}"]


@pytest.fixture(scope="session", autouse=True)
def _session_tmp():
    d = Path(tempfile.mkdtemp(prefix="strata-tests-", dir=TMP_ROOT))
    os.chmod(d, 0o755)
    os.environ["STRATA_TEST_SESSION_TMP"] = str(d)
    yield d
    union.cleanup_tree(d)
    if not any(m == str(d) or m.startswith(str(d) + "/") for m in union.mountpoints()):
        shutil.rmtree(d, ignore_errors=True)


# A hung FUSE daemon leaves the test in an uninterruptible wait that pytest-timeout's signal
# cannot break; after this many seconds the FUSE mounts under the test's directory are
# aborted (umount -f aborts the connection), so the test fails and cleans up instead.
WATCHDOG = float(os.environ.get("STRATA_TEST_WATCHDOG", "240"))


def _abort_fuse_mounts(d, name):
    for m in union.mountpoints():
        if (m == d or m.startswith(d + "/")) and (union.mount_fstype(m) or "").startswith("fuse"):
            sys.stderr.write(f"\nwatchdog: {name} still running after {WATCHDOG:.0f} s; "
                             f"aborting the FUSE connection of {m}\n")
            subprocess.run(["umount", "-f", m], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)


@pytest.fixture
def tdir(_session_tmp, request):
    """A fresh world-traversable directory; all mounts below it are removed afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    d = Path(tempfile.mkdtemp(prefix=name + "-", dir=_session_tmp))
    os.chmod(d, 0o755)
    timer = threading.Timer(WATCHDOG, _abort_fuse_mounts, (str(d), request.node.name))
    timer.daemon = True
    timer.start()
    yield d
    timer.cancel()
    union.cleanup_tree(d)
    if any(m == str(d) or m.startswith(str(d) + "/") for m in union.mountpoints()):
        pytest.fail(f"could not unmount everything under {d}")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def impl():
    """Path of the implementation under test ($STRATAFS or $STRATA_BUILD/stratafs)."""
    return union.require_impl()

