"""Issue 28, points 1 and 4: a full disk is one line naming the path and the bytes needed, once, and the same
command succeeds once there is room, leaving no temporary file.

The disk is real: a tmpfs of 64 KiB mounted, without root, in a user and mount namespace of its own
(`unshare --user --map-root-user --mount`), so the write fails with the kernel's own ENOSPC where it happens (no
function of ganflow is replaced). Where the kernel refuses unprivileged user namespaces this test cannot build its
disk and says so; test_bounds.py's fault injection still covers the publish path there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import skimage.data
from PIL import Image

from tests.conftest import PARAMS, ROOT

# Inside the namespace: mount the small disk, curate onto it, make room, curate again; list what is left.
_DRIVER = """
set -u
mount -t tmpfs -o size=64k tmpfs "$DISK" || exit 99
"$@" > "$LOGS/1.txt" 2>&1; echo $? > "$LOGS/rc1"
mount -o remount,size=16m "$DISK"
"$@" > "$LOGS/2.txt" 2>&1; echo $? > "$LOGS/rc2"
find "$DISK" -mindepth 1 > "$LOGS/files"
"""


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="no unprivileged user namespaces here: no small real disk to fill")
def test_curate_on_a_full_disk_is_one_line_then_the_rerun_succeeds_and_leaves_nothing(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    src, disk, logs = tmp_path / "in", tmp_path / "disk", tmp_path / "logs"
    for folder in (src, disk, logs):
        folder.mkdir()
    Image.fromarray(skimage.data.rocket()).save(src / "rocket.jpg", quality=92)
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.jpg", quality=92)
    out = disk / "ds"
    curate = [sys.executable, "-m", "flows.cli", "curate", "--input", str(src), "--out", str(out), "--matte", "none",
              "--resolution", "256", "--params", str(PARAMS), "--raw-root", str(tmp_path / "raw"),
              "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISK": str(disk), "LOGS": str(logs),
           "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's test server: no server start per run
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _DRIVER, "driver",
                           *curate], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    first = (logs / "1.txt").read_text()
    said = [line for line in first.splitlines() if "disk is full" in line]
    assert (logs / "rc1").read_text().strip() == "2" and "Traceback" not in first, first
    assert len(said) == 1 and "No space left" not in first, first  # once, and in ganflow's words
    assert said[0].startswith(f"ganflow curate: error: [Errno 28] {out}: the disk is full (about "), said
    assert " KB needed, " in said[0] and " free); free space and run the same command again" in said[0], said

    second = (logs / "2.txt").read_text()
    assert (logs / "rc2").read_text().strip() == "0", second
    left = sorted(p[len(str(disk)) + 1:] for p in (logs / "files").read_text().split())
    assert "ds/dataset.json" in left and not [p for p in left if "tmp" in p.split("/")[-1] or "ganflow-new" in p], left
