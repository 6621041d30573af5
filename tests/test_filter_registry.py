"""The filter registry: filters run in their registered order, and a new filter (or a new threshold) can never be
answered by a stale cached verdict: the content stage's cache key covers every curate setting its filters read, and
the cheap stage caches only its measurements, judged anew by the registered filters on every read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import yaml
from PIL import Image

from tasks.curation import registry, screen
from tasks.curation.detectors import ContentImage, content_verdict
from tasks.curation.filters import cheap_scores, cheap_verdict, size_verdict
from tasks.common.settings import CurateSettings, load

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


class ReadsRecorded:
    """Stands in for the settings and records every setting read, through properties too (min_side reads
    resolution and min_side_fraction)."""

    def __init__(self, params):
        self._params = params
        self.read: set[str] = set()

    def __getattr__(self, name):
        prop = getattr(type(self._params), name, None)
        if isinstance(prop, property):
            return prop.fget(self)
        self.read.add(name)
        return getattr(self._params, name)


@pytest.fixture(scope="module")
def params():
    return load(CurateSettings, PARAMS_FILE, workers=1)


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": skimage.data.astronaut(), "page": np.stack([skimage.data.page()] * 3, -1),
            "rocket": skimage.data.rocket()}


@pytest.fixture()
def extra_filter():
    """A header check registered for one test that reads a setting no built-in cheap filter reads (ordered after
    blurry, a thumbnail check)."""

    @registry.register("huge", stage="cheap", keys=("max_member_bytes",), order=35, header=True)
    def huge(scores: dict, params) -> str | None:
        return "huge" if scores["width"] * scores["height"] * 3 > params.max_member_bytes else None

    yield huge
    registry.unregister("huge")


def test_builtin_filters_in_order(params):
    assert [(f.name, f.reasons) for f in registry.registered("cheap")] == [
        ("too_small", ("too_small",)), ("aspect", ("aspect",)), ("blurry", ("blurry",)), ("grayscale", ("grayscale",))]
    assert [(f.name, f.reasons) for f in registry.registered("content")] == [("face", ("face", "no_face")),
                                                                           ("text", ("text",))]
    # a 100x100 grey blurry image fails all cheap checks but too_small's reason wins (the first registered)
    assert cheap_verdict({"width": 100, "height": 100, "blur_var": 0.0, "gray_chroma": 0.0}, params) == "too_small"


def test_each_setting_a_filter_reads_is_declared_and_in_the_cache_key(params, photos):
    """Run every registered filter on real photos with settings that record what is read."""
    cached = {stage: set(registry.stage_keys(stage)) for stage in registry.STAGES}
    rocket = photos["rocket"]
    scores = cheap_scores(rocket, rocket.shape[1], rocket.shape[0], params)
    for f in registry.registered("cheap"):
        seen = ReadsRecorded(params)
        f.check(scores, seen)
        assert seen.read, f.name
        assert seen.read <= set(f.keys), (f.name, seen.read - set(f.keys))
        assert set(f.keys) <= cached["cheap"], f.name
    for f in registry.registered("content"):
        for name in ("astronaut", "page"):  # a face; a page of text (so the text rule reads its thresholds)
            seen = ReadsRecorded(params)
            f.check(ContentImage(photos[name]), seen)
            assert seen.read, f.name
            assert seen.read <= set(f.keys), (f.name, name, seen.read - set(f.keys))
        assert set(f.keys) <= cached["content"], f.name


def test_filter_keys_are_curate_settings():
    curate = yaml.safe_load(PARAMS_FILE.read_text())["curate"]
    for stage in registry.STAGES:
        assert set(registry.stage_keys(stage)) <= set(curate), stage


def test_cache_key_derives_from_the_registered_filters(params):
    """Content: the digest of exactly the registered filters' keys and the code version (for the built-in filters,
    the key of the caches written before the registry existed). Cheap: only the thumbnail's size, which is all its
    measurements depend on (its verdicts are not cached)."""
    assert screen.cache_key("cheap", params) == screen.SCREEN_VERSION + "-" + params.digest("blur_size")
    assert screen.cache_key("cheap", params.updated(blur_min_var=1.0, min_side_fraction=0.1)) == \
        screen.cache_key("cheap", params)
    content = ("face_mode", "face_min_fraction", "face_min_neighbors", "text_min_confidence", "text_min_chars",
               "text_max_area", "text_max_boxes")
    assert screen.cache_key("content", params) == screen.SCREEN_VERSION + "-" + params.digest(*content)


def test_registering_a_filter_that_reads_a_new_key_changes_the_cache_key(params):
    key = screen.cache_key("content", params)
    unrelated = params.updated(max_member_bytes=params.max_member_bytes + 1)
    assert screen.cache_key("content", unrelated) == key  # no content filter reads it yet

    @registry.register("huge", stage="content", keys=("max_member_bytes",), order=25)
    def huge(image, p):
        return None

    try:
        assert "max_member_bytes" in registry.stage_keys("content")
        assert screen.cache_key("content", params) != key
        assert screen.cache_key("content", unrelated) != screen.cache_key("content", params)  # now it matters
    finally:
        registry.unregister("huge")
    assert screen.cache_key("content", params) == key


def test_a_new_filter_is_not_answered_from_the_cache(params, extra_filter, tmp_path, monkeypatch):
    """Real files screened into a cache, then a filter is added and its threshold moved: each time the verdicts
    are the new ones, never the cached ones, judged on the cached measurements without decoding again."""
    paths = []
    for name in ("rocket", "astronaut"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append((name, str(path)))
    cache = str(tmp_path / "cache")
    registry.unregister("huge")
    assert {r["reason"] for r in screen.screen_cheap(paths, params, cache).values()} == {None}
    registry.register("huge", stage="cheap", keys=("max_member_bytes",), order=35, header=True)(extra_filter)
    import tasks.curation.per_image

    monkeypatch.setattr(tasks.curation.per_image, "decode", lambda *a, **k: pytest.fail("decoded again"))
    small = params.updated(max_member_bytes=1000)
    assert {r["reason"] for r in screen.screen_cheap(paths, small, cache).values()} == {"huge"}
    assert {r["reason"] for r in screen.screen_cheap(paths, params, cache).values()} == {None}
    assert len(list((tmp_path / "cache" / "cheap").iterdir())) == 1  # one thumbnail size: one cache folder


def test_header_checks_run_before_decoding_whatever_their_order(params, extra_filter):
    """Screening judges the header before decoding: a header check ordered after a thumbnail check still runs
    before it, in size_verdict and in cheap_verdict alike, so both give the same reason."""
    assert [f.name for f in registry.registered("cheap")] == ["too_small", "aspect", "huge", "blurry", "grayscale"]
    small = params.updated(max_member_bytes=1000)
    assert size_verdict(600, 600, small) == "huge"
    assert cheap_verdict({"width": 600, "height": 600, "blur_var": 0.0, "gray_chroma": 0.0}, small) == "huge"
    assert size_verdict(100, 100, small) == "too_small"  # order 10 beats order 35


def test_content_filters_stop_at_the_first_failure(params, photos):
    reason, scores, box = content_verdict(photos["astronaut"], params)
    assert (reason, box) == ("face", None)
    assert list(scores) == ["faces"]  # the text filter, registered after, did not run


def test_bad_registrations_are_refused():
    with pytest.raises(registry.FilterError, match="stage"):
        registry.register("x", stage="decode", keys=(), order=1)
    with pytest.raises(registry.FilterError, match="already given by filter 'blurry'"):
        registry.register("blurry", stage="cheap", keys=(), order=99)(lambda s, p: None)


def test_the_render_cache_key_covers_the_face_filter_settings_as_registered(params, tmp_path):
    """Rendering crops to the face box in face_mode=crop, so its cache key is a digest of the face filter's registered
    settings: for the built-in filter, the key of the renders cached before; a setting the face filter is registered
    to read moves it, and the other filters' settings do not."""
    from tasks.curation.render import RENDER_VERSION, render_cache

    def key(p) -> str:
        return render_cache(p, str(tmp_path), "grabcut").dir.name

    before = ("resolution", "rembg_model", "face_mode", "face_min_fraction", "face_min_neighbors")
    assert key(params) == f"{RENDER_VERSION}-{params.digest(*before)}-grabcut"
    assert key(params.updated(face_min_neighbors=params.face_min_neighbors + 1)) != key(params)
    unrelated = params.updated(text_min_chars=params.text_min_chars + 1)
    assert key(unrelated) == key(params)  # the text filter's threshold does not change a render
    builtin = registry.registered("content")
    face = next(f for f in builtin if f.name == "face")
    registry.unregister("face")
    try:
        registry.register(*face.reasons, stage=face.stage, keys=(*face.keys, "text_min_chars"),
                          order=face.order)(face.check)
        assert key(unrelated) != key(params)
    finally:
        registry.unregister("face")
        registry.register(*face.reasons, stage=face.stage, keys=face.keys, order=face.order)(face.check)
    assert registry.registered("content") == builtin and key(unrelated) == key(params)
    with pytest.raises(registry.FilterError, match="no filter named 'faces'"):
        registry.filter_keys("faces")


def test_a_threshold_change_is_redecided_from_cached_scores(params, tmp_path, monkeypatch):
    """A rerun with other thresholds gives exactly a fresh run's verdicts and scores, and decodes only the images
    whose pixels were never measured (rejected from the header before, not now)."""
    import cv2

    import tasks.curation.per_image as per_image

    rocket = skimage.data.rocket()
    files = {"rocket": rocket, "coffee": skimage.data.coffee(), "camera": skimage.data.camera(),
             "blurred": cv2.GaussianBlur(rocket, (0, 0), 6)}
    items = []
    for name, img in files.items():
        Image.fromarray(img).save(tmp_path / f"{name}.jpg", quality=92)
        items.append((name, str(tmp_path / f"{name}.jpg")))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rocket.jpg").read_bytes()[:3000])  # header read, pixels fail
    items.append(("cut", str(tmp_path / "cut.jpg")))
    cache = str(tmp_path / "cache")
    first = screen.screen_cheap(items, params, cache)
    assert {n: r["reason"] for n, r in first.items()} == {"rocket": None, "coffee": "too_small", "camera": "grayscale",
                                                         "blurred": "blurry", "cut": "truncated"}
    decoded: list[str] = []
    real_decode = per_image.decode

    def counted(path, **kwargs):
        decoded.append(Path(path).stem)
        return real_decode(path, **kwargs)

    monkeypatch.setattr(per_image, "decode", counted)
    for changed, measured in [(dict(blur_min_var=1e9), []),                     # all blurry now, no decode
                              (dict(min_side_fraction=1.5), []),                # all too small from the header
                              (dict(min_side_fraction=0.5), ["coffee"]),        # coffee's pixels are new
                              (dict(gray_max_chroma=0.0, min_side_fraction=0.5), [])]:
        decoded.clear()
        new = params.updated(**changed)
        again = screen.screen_cheap(items, new, cache)
        assert decoded == measured, changed
        assert again == screen.screen_cheap(items, new, str(tmp_path / f"fresh-{len(changed)}-{new.digest(*changed)}"))
