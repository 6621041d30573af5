"""The hostile corpus through the real curate flow: one manifest record per entry, each with its reason."""
from __future__ import annotations

import hashlib

import pytest

from flows.curate import curate
from tasks.common.outdir import PathError
from tasks.curation.publish import read_manifest
from tasks.ingestion.sources.raw import FILES
from tests.hostile import build


def _run(tmp_path, src, params, out="out"):
    return curate(source="path", input_path=str(src), out=str(tmp_path / out), raw_root=str(tmp_path / "raw"),
                  cache_dir=str(tmp_path / "cache"), params_path=str(params))


def test_hostile_folder_every_entry_has_its_record(prefect_api, tmp_path, params_file):
    expect = build.hostile_folder(tmp_path / "in", tmp_path / "outside")
    result = _run(tmp_path, tmp_path / "in", params_file(matte="none"))
    records = {r.source_name: r for r in read_manifest(tmp_path / "out")}
    assert {n: r.reason for n, r in records.items()} == expect
    assert result["inputs"] == len(expect) and result["count"] == 1
    kept = records["rocket.jpg"].id
    # The same kind of value for an exact copy and a near-duplicate: the kept image's id (and its name).
    for name in ("rocket2.jpg", "rocket-smaller.jpg"):
        assert records[name].scores["duplicate_of"] == kept
        assert records[name].scores["duplicate_of_name"] == "rocket.jpg"
    assert records["link.jpg"].status == "rejected" and "not followed" in records["link.jpg"].scores["error"]
    secret = hashlib.sha256(build.photo_jpeg("chelsea")).hexdigest()
    assert not any(p.name.startswith(secret) for p in (tmp_path / "raw").rglob(f"{FILES}/*"))


def test_hostile_zip_every_member_has_its_record(prefect_api, tmp_path, params_file):
    expect = build.hostile_zip(tmp_path / "hostile.zip")
    result = _run(tmp_path, tmp_path / "hostile.zip", params_file(matte="none"))
    records = {r.source_name: r for r in read_manifest(tmp_path / "out")}
    assert {n: r.reason for n, r in records.items()} == expect
    assert result["count"] == 1 and result["raw_dir"].endswith("hostile.zip")  # its own raw store
    assert all(r.source == "zip" for r in records.values())


def test_flow_refuses_an_output_folder_it_did_not_write(prefect_api, tmp_path, params_file):
    """The Prefect UI path (no CLI in front): the flow itself refuses before any work."""
    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "mine.tar").write_bytes(b"precious")
    with pytest.raises(PathError, match="not empty and not a dataset ganflow curate wrote"):
        curate(source="demo", out=str(foreign), raw_root=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"),
               params_path=str(params_file()))
    assert (foreign / "shards" / "mine.tar").read_bytes() == b"precious"
    assert not (tmp_path / "raw").exists()
