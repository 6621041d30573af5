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

from tests.conftest import PARAMS, ROOT, write_curated

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


needs_namespaces = pytest.mark.skipif(not _namespaces_work(),
                                     reason="no unprivileged user namespaces here: no small real disk to fill")


def _on_a_full_disk(command: list[str], tmp_path, **env: str) -> tuple[list[str], str, list[str]]:
    """Run `ganflow COMMAND` (where DISK in its arguments is a 64 KiB tmpfs), then, with 16 MiB there, the same
    command again: ((rc 1, rc 2), stderr of the first, the files left on the disk)."""
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    argv = [sys.executable, "-m", "flows.cli", *(a.replace("DISK", str(disk)) for a in command)]
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _DRIVER, "driver", *argv],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "DISK": str(disk), "LOGS": str(logs),
                                         **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    second = (logs / "2.txt").read_text()
    assert (logs / "rc2").read_text().strip() == "0", second  # the same command, once there is room
    left = sorted(p[len(str(disk)) + 1:] for p in (logs / "files").read_text().split())
    return [(logs / "rc1").read_text().strip()], (logs / "1.txt").read_text(), left


def _said_once(first: str, path: str, command: str) -> str:
    said = [line for line in first.splitlines() if "disk is full" in line]
    assert "Traceback" not in first and "No space left" not in first and "inline_container" not in first, first
    assert len(said) == 1, first  # once, in ganflow's words
    assert said[0].startswith(f"ganflow {command}: error: [Errno 28] {path}: the disk is full (about "), said
    assert " needed, " in said[0] and " free); free space and run the same command again" in said[0], said
    return said[0]


def _no_temporary_files(left: list[str]) -> bool:
    return not [p for p in left if p.split("/")[-1].startswith(".") or "tmp" in p or "ganflow-new" in p]


@needs_namespaces
def test_curate_on_a_full_disk_is_one_line_then_the_rerun_succeeds_and_leaves_nothing(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.rocket()).save(src / "rocket.jpg", quality=92)
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.jpg", quality=92)
    rc, first, left = _on_a_full_disk(
        ["curate", "--input", str(src), "--out", "DISK/ds", "--matte", "none", "--resolution", "256",
         "--params", str(PARAMS), "--raw-root", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache")],
        tmp_path, PREFECT_API_URL=PREFECT_API_URL.value())  # the session's test server: no server start per run
    assert rc == ["2"]
    _said_once(first, str(tmp_path / "disk" / "ds"), "curate")
    assert "ds/dataset.json" in left and _no_temporary_files(left), left


@needs_namespaces
def test_a_checkpoint_on_a_full_disk_is_one_line_not_torchs_enforce_fail(tmp_path):
    """torch's writer said `RuntimeError: [enforce fail at inline_container.cc:...]` over the real OSError 28."""
    data = write_curated(tmp_path / "data", n=4, side=8)
    rc, first, left = _on_a_full_disk(
        ["train", "--data", str(data), "--run-dir", "DISK/run", "--arch", "stylegan2", "--resolution", "8",
         "--kimg", "0.008", "--snapshot-kimg", "0.004", "--batch", "4", "--device", "cpu", "--params", str(PARAMS),
         "--net", "{channel_base: 512, channel_max: 64, z_dim: 32, w_dim: 32, mapping_layers: 2}"], tmp_path)
    assert rc == ["2"]
    _said_once(first, str(tmp_path / "disk" / "run" / "checkpoints" / "ckpt-000000.004.pt"), "train")
    assert "run/checkpoints/ckpt-000000.008.pt" in left and _no_temporary_files(left), left
