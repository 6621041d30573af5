"""The curate flow end to end under the real Prefect API, on real photos and planted bad files."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from flows.curate import curate
from tasks.curation.publish import read_manifest
from tasks.curation.result import CurationResult
from tests.conftest import ROOT
from tests.golden import check_golden, sha256_files


def _jpeg(arr: np.ndarray, path: Path, quality: int = 92) -> None:
    Image.fromarray(arr).save(path, "JPEG", quality=quality)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Real photos and bad files, with the reason each one must get."""
    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    expect = {}
    for name, reason in [("rocket", None), ("retina", None), ("immunohistochemistry", None),
                         ("stereo_motorcycle", None), ("astronaut", "face"), ("camera", "grayscale"),
                         ("coffee", "too_small")]:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        _jpeg(img, d / f"{name}.jpg")
        expect[f"{name}.jpg"] = reason
    (d / "sub" / "rocket copy.jpg").write_bytes((d / "rocket.jpg").read_bytes())
    expect["sub/rocket copy.jpg"] = "duplicate"
    retina = skimage.data.retina()
    _jpeg(cv2.resize(retina, (1100, 1100), interpolation=cv2.INTER_AREA), d / "sub" / "retina_small.jpg", 80)
    expect["sub/retina_small.jpg"] = "duplicate"
    moto = skimage.data.stereo_motorcycle()[0]
    _jpeg(cv2.GaussianBlur(moto, (0, 0), 6), d / "blurred.jpg")
    expect["blurred.jpg"] = "blurry"
    (d / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "empty"
    (d / "notes.jpg").write_text("not an image")
    expect["notes.jpg"] = "not_image"
    (d / "cut.jpg").write_bytes((d / "rocket.jpg").read_bytes()[:20000])
    expect["cut.jpg"] = "truncated"
    return d, expect


def _run(folder: Path, tmp: Path, params: Path, out: str = "out") -> dict:
    return curate(source="path", input_path=str(folder), out=str(tmp / out), raw_root=str(tmp / "raw"),
                  cache_dir=str(tmp / "cache"), params_path=str(params))


def test_every_input_gets_its_reason(prefect_api, photo_folder, tmp_path, params_file):
    folder, expect = photo_folder
    result = _run(folder, tmp_path, params_file())
    records = {r.source_name: r for r in read_manifest(tmp_path / "out")}
    assert set(records) == set(expect)  # every input accounted for, nothing extra
    assert {n: r.reason for n, r in records.items()} == expect
    assert all((r.status == "accepted") == (r.reason is None) for r in records.values())
    assert result["count"] == sum(1 for v in expect.values() if v is None)
    assert result["inputs"] == len(expect)
    dup = records["sub/retina_small.jpg"].scores
    assert dup["duplicate_of"] == records["retina.jpg"].id  # the larger one is kept

    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    # The flow's result: a CurationResult as a plain dict at the flow's edge, dataset.json's fields inside it.
    curated = CurationResult.from_dict(result)
    assert curated.to_dict() == result and curated.dataset == dataset and curated.version is None
    assert curated.out == str((tmp_path / "out").resolve()) and Path(curated.raw_dir).parent == tmp_path / "raw"
    assert (curated.count, curated.inputs, curated.content_hash) == (dataset["count"], len(expect),
                                                                     dataset["content_hash"])
    names = []
    for shard in dataset["shards"]:
        with tarfile.open(tmp_path / "out" / shard["file"]) as tf:
            for m in tf.getmembers():
                names.append(m.name)
                img = Image.open(io.BytesIO(tf.extractfile(m).read()))
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (512, 512)
    accepted_ids = sorted(r.id for r in records.values() if r.status == "accepted")
    assert names == [f"{i}.png" for i in accepted_ids]
    assert dataset["count"] == len(accepted_ids)

    # Raw data is stored read-only and untouched; the source folder is not modified either.
    raw_files = list((tmp_path / "raw").rglob("files/*"))
    assert raw_files and all(not (p.stat().st_mode & 0o222) for p in raw_files)


def test_rerun_does_no_work_and_is_byte_identical(prefect_api, photo_folder, tmp_path, params_file,
                                                  monkeypatch):
    folder, _ = photo_folder
    params = params_file(workers=1, batch_size=4)  # inline workers: the patch below reaches them
    _run(folder, tmp_path, params)
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    def no_work(*args, **kwargs):
        raise AssertionError("a rerun decoded an image again")

    import tasks.curation.per_image

    monkeypatch.setattr(tasks.curation.per_image, "decode", no_work)
    _run(folder, tmp_path, params)
    after = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert after == files
    for p in files:
        assert p.read_bytes() == before[p][0]
        assert p.stat().st_mtime_ns == before[p][1], f"{p.name} was rewritten"


def test_threshold_change_recomputes_only_what_depends_on_it(prefect_api, photo_folder, tmp_path,
                                                             params_file):
    folder, _ = photo_folder
    _run(folder, tmp_path, params_file())
    strict = params_file(blur_min_var=1e9)  # everything is blurry now
    result = _run(folder, tmp_path, strict, out="strict")
    assert result["count"] == 0
    reasons = {r.reason for r in read_manifest(tmp_path / "strict")}
    assert "blurry" in reasons and None not in reasons


def test_flow_records_artifacts(prefect_api, photo_folder, tmp_path, params_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    folder, expect = photo_folder
    _run(folder, tmp_path, params_file())
    with get_client(sync_client=True) as client:
        table = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curation-reasons"])))
        sheet = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curation-contact-sheet"])))
    rows = table[0].data if isinstance(table[0].data, list) else json.loads(table[0].data)
    counts = {row["reason"]: row["count"] for row in rows}
    assert counts["accepted"] == sum(1 for v in expect.values() if v is None)
    assert sum(counts.values()) == len(expect)
    assert "## face" in sheet[0].data and "data:image/jpeg;base64," in sheet[0].data


def test_face_crop_mode_keeps_faces_and_drops_the_rest(prefect_api, tmp_path, params_file):
    src = tmp_path / "faces"
    src.mkdir()
    _jpeg(skimage.data.astronaut(), src / "astronaut.jpg")
    _jpeg(skimage.data.rocket(), src / "rocket.jpg")
    result = _run(src, tmp_path, params_file(face_mode="crop", matte="none"))
    records = {r.source_name: r for r in read_manifest(tmp_path / "out")}
    assert records["astronaut.jpg"].status == "accepted" and records["astronaut.jpg"].scores["faces"] == 1
    assert records["rocket.jpg"].reason == "no_face"
    assert result["count"] == 1


def test_demo_end_to_end_shows_every_reason(prefect_api, tmp_path):
    """`make demo`'s job: the flow on the embedded demo data gives each planted file its outcome."""
    from tasks.ingestion.sources.demo import DEMO_REASONS, write_demo

    expect = write_demo(tmp_path / "expected")
    result = curate(source="demo", out=str(tmp_path / "out"), raw_root=str(tmp_path / "raw"),
                    cache_dir=str(tmp_path / "cache"), params_path=str(ROOT / "params.yaml"))
    records = read_manifest(tmp_path / "out")
    got = {r.source_name: r.reason or "accepted" for r in records}
    assert got == expect
    assert DEMO_REASONS <= set(got.values())
    assert all(r.source == "demo" for r in records)
    assert result["count"] == sum(v == "accepted" for v in expect.values())
    # `make demo`'s curated dataset, byte for byte (issue 16: a refactor leaves it unchanged).
    check_golden("demo_curated", sha256_files(tmp_path / "out", ["manifest.jsonl", "dataset.json", "shards"]))


def test_scrape_setup_error_is_not_retried(prefect_api, tmp_path, params_file, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tasks.ingestion.sources.instagram import InstagramSetupError

    monkeypatch.delenv("GANFLOW_IG_SESSIONFILE", raising=False)
    monkeypatch.delenv("GANFLOW_IG_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    state = curate(source="hashtag", hashtag="sneakers", out=str(tmp_path / "out"),
                   raw_root=str(tmp_path / "raw"), params_path=str(params_file()), return_state=True)
    assert state.is_failed()
    with pytest.raises(InstagramSetupError):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    scrape = [r for r in runs if r.task_key.startswith("scrape") or r.name.startswith("scrape-hashtag")]
    assert len(scrape) == 1 and scrape[0].run_count == 1  # retries would have run it 4 times


def test_hashtag_takes_params_max_posts_unless_the_run_names_one(prefect_api, tmp_path, monkeypatch):
    """params.yaml's ingest.max_posts bounds a hashtag's scrape when neither --max-posts nor the flow's
    ingest_settings names one; naming one takes that many. Instagram is tests/test_instagram.py's FakeInstagram:
    instaloader's own code runs, only its HTTP requests are answered offline."""
    import instaloader
    import yaml

    from flows.cli import main
    from tests.test_instagram import TAG, FakeInstagram, image, write_session

    monkeypatch.delenv("GANFLOW_IG_SESSIONFILE", raising=False)
    monkeypatch.delenv("GANFLOW_IG_USER", raising=False)
    fake = FakeInstagram([image(f"post{n}", n) for n in range(8)], page_size=4)
    fake.install(monkeypatch.setattr)
    # instaloader pauses at random (1.7 s on average) before each request: no pause against the fake.
    monkeypatch.setattr(instaloader.InstaloaderContext, "do_sleep", lambda self: None)
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ingest"]["max_posts"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    session = str(write_session(tmp_path / "session-tester"))
    where = dict(raw_root=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"))

    assert main(["curate", "--hashtag", TAG, "--out", str(tmp_path / "params-value"), "--params", str(params),
                 "--session-file", session, "--raw-root", where["raw_root"], "--cache-dir", where["cache_dir"]]) == 0
    assert sum(fake.downloads.values()) == 2  # one image per post
    assert json.loads((tmp_path / "params-value" / "dataset.json").read_text())["inputs"] == 2

    result = curate(source="hashtag", hashtag=TAG, out=str(tmp_path / "named"), params_path=str(params),
                    ingest_settings={"max_posts": 5}, session_file=session, **where)
    assert result["inputs"] == 5 and result["source"] == "instagram"
    assert sum(fake.downloads.values()) == 5 and max(fake.downloads.values()) == 1  # the first two were stored

    del data["ingest"]  # a curate-only params file, as before max_posts was read from it: the defaults serve
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["curate", "--hashtag", TAG, "--max-posts", "3", "--out", str(tmp_path / "no-ingest"), "--params",
                 str(params), "--session-file", session, "--raw-root", str(tmp_path / "raw-2"), "--cache-dir",
                 where["cache_dir"]]) == 0
    assert json.loads((tmp_path / "no-ingest" / "dataset.json").read_text())["inputs"] == 3
