"""Issue 15, point 4: every archive member and folder entry gets a record; bombs are never written out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.ingestion.ingest import raw_name
from tasks.ingestion.sources.local import MemberLimits, SourceError, _folder_entries, _store, check_input, ingest_path
from tasks.ingestion.sources.raw import FILES, PROVENANCE, read_provenance
from tests.hostile import build

LIMITS = MemberLimits(max_bytes=256 << 20, max_ratio=200.0)  # params.yaml's caps


def _by_name(items) -> dict:
    return {i.source_name: i for i in items}


def _stored_ids(raw: Path) -> set[str]:
    return {p.name.split(".")[0] for p in (raw / FILES).iterdir()} if (raw / FILES).exists() else set()


def test_zip_every_failing_member_is_a_record_and_the_good_one_is_stored(tmp_path):
    expect = build.hostile_zip(tmp_path / "hostile.zip")
    raw = tmp_path / "raw"
    items = ingest_path(tmp_path / "hostile.zip", raw, LIMITS)
    got = _by_name(items)
    assert {n: i.reason for n, i in got.items()} == expect  # "plain dir/" is a container: no record
    assert _stored_ids(raw) == {got["good.jpg"].id}  # nothing refused reached the store, not even the bomb
    assert not list((raw / FILES).glob(".incoming-*"))
    prov = read_provenance(raw)
    assert {i.source_name: i.reason for i in prov} == expect  # provenance holds the refusals too
    for item in prov:
        assert (item.file == "") == (item.reason is not None)
        assert len(item.id) == 64 and (item.reason is None or item.detail)


def test_member_above_max_member_bytes_is_a_bomb_and_never_written(tmp_path):
    build.big_member_zip(tmp_path / "big.zip", 2 << 20)
    raw = tmp_path / "raw"
    items = ingest_path(tmp_path / "big.zip", raw, MemberLimits(max_bytes=1 << 20, max_ratio=200.0))
    assert [(i.source_name, i.reason) for i in items] == [("huge.png", "bomb")]
    assert "curate.max_member_bytes" in items[0].detail
    assert _stored_ids(raw) == set()


def test_ratio_bomb_is_caught_while_streaming_not_from_the_header(tmp_path):
    """The ratio bomb's headers are honest about its 20 MiB; the cap counts the bytes as they come out."""
    build.hostile_zip(tmp_path / "hostile.zip")
    items = _by_name(ingest_path(tmp_path / "hostile.zip", tmp_path / "raw", LIMITS))
    assert items["ratio-bomb.png"].reason == "bomb" and "max_compression_ratio" in items["ratio-bomb.png"].detail


def test_member_whose_header_lies_about_its_size_is_refused(tmp_path):
    build.lying_zip(tmp_path / "liar.zip")
    raw = tmp_path / "raw"
    items = ingest_path(tmp_path / "liar.zip", raw, LIMITS)
    assert [(i.source_name, i.reason) for i in items] == [("liar.png", "bad_crc")]
    assert _stored_ids(raw) == set()


def test_truncated_tar_keeps_the_readable_members(tmp_path):
    expect = build.truncated_tar(tmp_path / "cut.tar")
    raw = tmp_path / "raw"
    got = _by_name(ingest_path(tmp_path / "cut.tar", raw, LIMITS))
    assert got["a.jpg"].reason is None and got["b.jpg"].reason is None
    assert got["c.jpg"].reason == "truncated"
    assert _stored_ids(raw) == {got["a.jpg"].id, got["b.jpg"].id}
    tail = [i for n, i in got.items() if n not in expect]
    assert all(i.reason == "truncated" for i in tail)  # the unreadable rest, if any, is said too


def test_truncated_tar_gz_keeps_the_readable_members(tmp_path):
    build.truncated_targz(tmp_path / "cut.tar.gz")
    got = _by_name(ingest_path(tmp_path / "cut.tar.gz", tmp_path / "raw", LIMITS))
    assert got["a.jpg"].reason is None
    assert got["b.jpg"].reason == "truncated"


def test_tar_special_members_and_image_named_directories(tmp_path):
    expect = build.special_tar(tmp_path / "special.tar")
    got = _by_name(ingest_path(tmp_path / "special.tar", tmp_path / "raw", LIMITS))
    assert {n: i.reason for n, i in got.items()} == expect


def test_folder_links_fifos_and_image_named_directories_are_records(tmp_path):
    build.hostile_folder(tmp_path / "in", tmp_path / "outside")
    raw = tmp_path / "raw"
    got = _by_name(ingest_path(tmp_path / "in", raw, LIMITS))  # a FIFO opened would block here forever
    assert got["link.jpg"].reason == "link" and got["pipe.jpg"].reason == "special_file"
    assert got["album.jpg"].reason == "directory"
    assert got["album.jpg/inside.png"].reason is None  # its contents are still inputs
    secret = build.photo_jpeg("chelsea")
    import hashlib

    assert hashlib.sha256(secret).hexdigest() not in _stored_ids(raw)  # the link was never followed


def test_file_that_vanishes_or_cannot_be_read_is_unreadable(tmp_path):
    """A file listed, then gone (or denied) when opened: its own record, the run goes on."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(build.photo_jpeg())
    (src / "b.jpg").write_bytes(build.photo_jpeg("chelsea"))
    entries = list(_folder_entries(src))
    (src / "a.jpg").unlink()
    items = [_store(tmp_path / "raw", e, "folder", LIMITS) for e in entries]
    assert [(i.source_name, i.reason) for i in items] == [("a.jpg", "unreadable"), ("b.jpg", None)]


def test_folder_file_above_the_cap_is_a_bomb_without_being_read(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "big.png").write_bytes(bytes(3000))
    items = ingest_path(src, tmp_path / "raw", MemberLimits(max_bytes=2000, max_ratio=200.0))
    assert [(i.source_name, i.reason) for i in items] == [("big.png", "bomb")]


def test_rerun_of_a_refused_member_has_the_same_id(tmp_path):
    build.hostile_zip(tmp_path / "hostile.zip")
    first = _by_name(ingest_path(tmp_path / "hostile.zip", tmp_path / "raw", LIMITS))
    again = _by_name(ingest_path(tmp_path / "hostile.zip", tmp_path / "raw", LIMITS))
    assert {n: i.id for n, i in first.items()} == {n: i.id for n, i in again.items()}
    assert len({i.id for i in first.values()}) == len(first)  # refused entries never share an id


@pytest.mark.parametrize("make", ["folder", "nested-empty-folders", "zip", "tar"])
def test_empty_input_is_refused(tmp_path, make):
    import tarfile
    import zipfile

    path = tmp_path / {"folder": "empty", "nested-empty-folders": "nested", "zip": "e.zip", "tar": "e.tar"}[make]
    if make == "folder":
        path.mkdir()
    elif make == "nested-empty-folders":
        (path / "a" / "b").mkdir(parents=True)
    elif make == "zip":
        zipfile.ZipFile(path, "w").close()
    else:
        tarfile.open(path, "w").close()
    with pytest.raises(SourceError, match="holds no files"):
        check_input(path)
    with pytest.raises(SourceError, match="holds no files"):
        ingest_path(path, tmp_path / "raw", LIMITS)
    assert not (tmp_path / "raw" / PROVENANCE).exists()


def test_truncated_zip_keeps_the_members_before_the_cut(tmp_path):
    """A zip cut short has no central directory: its local headers are walked instead."""
    expect = build.hostile_zip(tmp_path / "h.zip")
    data = (tmp_path / "h.zip").read_bytes()
    cut = data.index(b"ratio-bomb.png") + 2000  # inside the 5th member's data
    (tmp_path / "cut.zip").write_bytes(data[:cut])
    assert check_input(tmp_path / "cut.zip") == "zip"
    raw = tmp_path / "raw"
    got = {n: i.reason for n, i in _by_name(ingest_path(tmp_path / "cut.zip", raw, LIMITS)).items()}
    before = ("good.jpg", "encrypted.jpg", "bad-crc.jpg", "deflate64.jpg")  # in the order they were written
    assert {n: got[n] for n in before} == {n: expect[n] for n in before}
    assert got["ratio-bomb.png"] == "truncated"
    assert got["cut.zip (after 5 members)"] == "truncated"
    assert len(got) == 6 and len(_stored_ids(raw)) == 1


def test_folder_and_archives_of_one_name_get_distinct_raw_stores(tmp_path):
    (tmp_path / "X").mkdir()
    (tmp_path / "X.zip").write_bytes(b"")
    (tmp_path / "X.tar").write_bytes(b"")
    (tmp_path / "Y.zip").mkdir()  # a folder named like an archive
    names = [raw_name("path", str(tmp_path / n)) for n in ("X", "X.zip", "X.tar", "Y.zip")]
    assert names == ["X", "X.zip", "X.tar", "Y.zip-folder"]
    assert raw_name("path", str(tmp_path / "Y.zip")) != raw_name("path", str(tmp_path / "Y.zip.zip"))


def test_provenance_of_stores_without_refusals_keeps_its_exact_bytes(tmp_path):
    """Stores written before refusals existed read back the same and are rewritten byte for byte."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(build.photo_jpeg())
    ingest_path(src, tmp_path / "raw", LIMITS)
    row = json.loads((tmp_path / "raw" / PROVENANCE).read_text())
    assert set(row) == {"id", "source", "source_name", "file", "size", "extra"}
