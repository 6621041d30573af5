"""The Instagram hashtag source, offline: instaloader's real code runs against a fake Instagram.

`FakeInstagram` stands in for requests.Session.get/post, so instaloader's own request, retry, 429,
pagination, freeze/thaw and session code all run; it answers from graphql-like node dicts, serves small
real JPEGs made with Pillow, and counts every page query and download. Sockets are blocked as well.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image

from tasks.ingestion.sources import instagram as ig
from tasks.ingestion.sources.raw import read_provenance

ROOT = Path(__file__).resolve().parents[1]
TAG = "cats"
TS = 1700000000  # 2023-11-14T22:13:20Z
CDN = "https://scontent.cdninstagram.test/v/"
SECRET = {"owner": {"id": "98765432101", "username": "someone_private"},
          "edge_media_to_caption": {"edges": [{"node": {"text": "my cat at home #cats"}}]}}


# --- node dicts, shaped like instaloader's hashtag GraphQL nodes -----------------------------------

def image(sc: str, n: int = 0) -> dict:
    return {"__typename": "GraphImage", "id": str(1000 + n), "shortcode": sc, "is_video": False,
            "display_url": f"{CDN}{sc}_0.jpg?oh=sig&oe=1", "taken_at_timestamp": TS + n, **SECRET}


def video(sc: str, n: int = 0) -> dict:
    return {"__typename": "GraphVideo", "id": str(1000 + n), "shortcode": sc, "is_video": True,
            "display_url": f"{CDN}{sc}_thumb.jpg", "video_url": f"{CDN}{sc}.mp4", "taken_at_timestamp": TS + n,
            **SECRET}


def sidecar(sc: str, kinds: str, n: int = 0) -> dict:
    """A carousel whose children ('i' image, 'v' video) are in the node, as in a full post node."""
    children = [{"node": {"__typename": "GraphVideo" if k == "v" else "GraphImage", "is_video": k == "v",
                          "display_url": f"{CDN}{sc}_{i}.jpg", **({"video_url": f"{CDN}{sc}_{i}.mp4"} if k == "v"
                                                                 else {})}}
                for i, k in enumerate(kinds)]
    return {"__typename": "GraphSidecar", "id": str(1000 + n), "shortcode": sc, "is_video": False,
            "display_url": f"{CDN}{sc}_0.jpg", "taken_at_timestamp": TS + n,
            "edge_sidecar_to_children": {"edges": children}, **SECRET}


def bare_sidecar(sc: str, kinds: str, n: int = 0) -> dict:
    """A carousel as hashtag pages usually list it: no children, so instaloader asks for the post."""
    node = sidecar(sc, kinds, n)
    del node["edge_sidecar_to_children"]
    return node


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), ((seed * 53) % 256, (seed * 91) % 256, (seed * 29) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def response(url: str, status: int = 200, body: bytes | dict = b"", ctype: str = "application/json"):
    resp = requests.Response()
    resp.status_code, resp.url = status, url
    resp.reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}[status]
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    resp._content = content
    resp.raw = io.BytesIO(content)
    resp.headers["Content-Type"] = ctype
    return resp


WAIT = {"message": "Please wait a few minutes before you try again.", "status": "fail"}


class FakeInstagram:
    """Answers the requests instaloader makes for a hashtag scrape; raises on anything else."""

    def __init__(self, nodes: list[dict], page_size: int = 3):
        self.nodes, self.page_size = nodes, page_size
        self.images: dict[str, bytes] = {}
        for node in nodes:
            for child in [node, *(e["node"] for e in node.get("edge_sidecar_to_children", {}).get("edges", []))]:
                self._serve(child)
        self.full = {}  # shortcode -> carousel children for bare sidecars, served by the post query
        self.downloads: Counter = Counter()
        self.pages: list[str | None] = []   # `after` cursor of each page query that was answered
        self.page_errors: dict = {}          # cursor -> statuses to answer its next queries with, in order
        self.post_queries: list[str] = []
        self.on_download = None              # hook(url) run before an image is served

    def add_bare_sidecar(self, node: dict, kinds: str) -> dict:
        full = sidecar(node["shortcode"], kinds)
        self.full[node["shortcode"]] = full
        for e in full["edge_sidecar_to_children"]["edges"]:
            self._serve(e["node"])
        return node

    def _serve(self, node: dict) -> None:
        if not node["is_video"]:  # video thumbnails are not served: fetching one fails the test
            self.images.setdefault(node["display_url"], jpeg(len(self.images)))

    def get(self, session, url, params=None, **kwargs):
        if url == "https://i.instagram.com/api/v1/tags/web_info/":  # Hashtag.from_name
            return response(url, body={"data": {"name": params["tag_name"], "id": "17841", "media_count": 99},
                                       "status": "ok"})
        if url == "https://www.instagram.com/graphql/query":  # the hashtag's NodeIterator pages
            return self._page(url, json.loads(params["variables"]))
        if url in self.images:  # context.get_raw
            self.downloads[url] += 1
            if self.on_download:
                self.on_download(url)
            return response(url, body=self.images[url], ctype="image/jpeg")
        raise AssertionError(f"unexpected GET {url}")

    def post(self, session, url, data=None, **kwargs):  # Post metadata (doc_id query) for bare sidecars
        shortcode = json.loads(data["variables"])["shortcode"]
        self.post_queries.append(shortcode)
        full = self.full[shortcode]
        carousel = [{"media_type": 2 if c["node"]["is_video"] else 1,
                     "image_versions2": {"candidates": [{"url": c["node"]["display_url"]}]},
                     **({"video_versions": [{"url": c["node"]["video_url"]}]} if c["node"]["is_video"] else {})}
                    for c in full["edge_sidecar_to_children"]["edges"]]
        media = {"code": shortcode, "pk": full["id"], "media_type": 8, "taken_at": full["taken_at_timestamp"],
                 "user": {"pk": "98765432101", "username": "someone_private"},
                 "image_versions2": {"candidates": [{"url": full["display_url"]}]}, "carousel_media": carousel}
        return response(url, body={"data": {"xdt_api__v1__media__shortcode__web_info": {"items": [media]}},
                                   "status": "ok"})

    def _page(self, url, variables):
        assert variables["tag_name"] == TAG
        after = variables.get("after")
        if self.page_errors.get(after):
            return response(url, self.page_errors[after].pop(0), WAIT)
        self.pages.append(after)
        start = int(after or 0)
        end = start + self.page_size
        media = {"count": len(self.nodes), "edges": [{"node": n} for n in self.nodes[start:end]],
                 "page_info": {"has_next_page": end < len(self.nodes), "end_cursor": str(end)}}
        return response(url, body={"data": {"hashtag": {"name": TAG, "edge_hashtag_to_media": media}},
                                   "status": "ok"})

    def install(self, setattr_):
        setattr_(requests.Session, "get", lambda s, url, **kw: self.get(s, url, **kw))
        setattr_(requests.Session, "post", lambda s, url, **kw: self.post(s, url, **kw))


def _no_network(*args, **kwargs):
    raise AssertionError("a test tried to open a network connection")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.delenv(ig.SESSION_ENV, raising=False)
    monkeypatch.delenv(ig.USER_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no real ~/.config/instaloader


def write_session(path: Path) -> Path:
    """A session file as `instaloader --login` writes it: a pickled dict of cookies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump({"csrftoken": "tok", "sessionid": "sid-secret", "ds_user_id": "7", "mid": "m"}, f)
    return path


def logged_in_loader(tmp_path: Path, sleeps: list):
    loader = ig.open_session(str(write_session(tmp_path / "session-tester")), sleep=sleeps.append)
    loader.context.sleep = False  # instaloader's random pause before each request calls time.sleep directly
    return loader


def scrape(tmp_path, fake, monkeypatch, max_posts=50, sleeps=None, progress=None):
    fake.install(monkeypatch.setattr)
    sleeps = [] if sleeps is None else sleeps
    return ig.ingest_hashtag(f"#{TAG}", tmp_path / "raw", max_posts=max_posts,
                             loader=logged_in_loader(tmp_path, sleeps), progress=progress)


# --- (1) images stored with provenance; videos skipped; carousels expanded; max_posts ----------------

def test_images_stored_with_provenance_videos_skipped_sidecars_expanded(tmp_path, monkeypatch):
    nodes = [image("A1", 0), video("B2", 1), sidecar("C3", "ivi", 2), image("D4", 3),
             bare_sidecar("E5", "ii", 4), image("F6", 5), image("G7", 6)]
    fake = FakeInstagram(nodes)
    fake.add_bare_sidecar(nodes[4], "ii")
    ticks = []
    items = scrape(tmp_path, fake, monkeypatch, max_posts=6, progress=ticks.append)

    stored = {(i.extra["shortcode"], i.extra["index"]) for i in items}
    assert stored == {("A1", 0), ("C3", 0), ("C3", 2), ("D4", 0), ("E5", 0), ("E5", 1), ("F6", 0)}
    assert items.stats == ig.ScrapeStats(posts=6, images=7, known=0, videos=2, failed=0)
    assert sum(ticks) == 7
    assert fake.post_queries == ["E5"]  # the bare carousel's children were asked for
    # Each image once; no video, no thumbnail, nothing of the post beyond max_posts (G7).
    assert fake.downloads == Counter([f"{CDN}A1_0.jpg?oh=sig&oe=1", f"{CDN}C3_0.jpg", f"{CDN}C3_2.jpg",
                                      f"{CDN}D4_0.jpg?oh=sig&oe=1", f"{CDN}E5_0.jpg", f"{CDN}E5_1.jpg",
                                      f"{CDN}F6_0.jpg?oh=sig&oe=1"])

    raw = tmp_path / "raw"
    on_disk = read_provenance(raw)
    assert sorted(on_disk, key=lambda i: i.source_name) == sorted(items, key=lambda i: i.source_name)
    c3 = next(i for i in on_disk if i.source_name == "C3_2.jpg")
    assert c3.source == "instagram"
    assert c3.extra == {"shortcode": "C3", "index": 2, "date": "2023-11-14T22:13:22+00:00",
                        "url": "https://www.instagram.com/p/C3/"}
    for item in on_disk:
        with Image.open(raw / item.file) as im:
            assert im.format == "JPEG"
    assert_no_personal_data((raw / "provenance.jsonl").read_text())
    assert not list((raw / "resume").glob("*.json"))  # max_posts reached: the walk is complete


def assert_no_personal_data(text: str) -> None:
    for secret in ("someone_private", "98765432101", "my cat", "tester", "sid-secret"):
        assert secret not in text


def test_rerun_downloads_nothing_and_more_posts_continue(tmp_path, monkeypatch):
    fake = FakeInstagram([image(f"P{n}", n) for n in range(8)])
    first = scrape(tmp_path, fake, monkeypatch, max_posts=4)
    assert first.stats.images == 4
    again = scrape(tmp_path, fake, monkeypatch, max_posts=4)
    assert again.stats == ig.ScrapeStats(posts=4, images=0, known=4)
    more = scrape(tmp_path, fake, monkeypatch, max_posts=8)
    assert (more.stats.known, more.stats.images) == (4, 4)
    assert len(more) == 8 and set(fake.downloads.values()) == {1}


# --- (2) resume after an interruption --------------------------------------------------------------

def resume_nodes():
    # pages of 3: [P0 P1 P2] [P3 S4 P5] [P6]; S4 is a carousel of three images
    return [image("P0", 0), image("P1", 1), image("P2", 2), image("P3", 3), sidecar("S4", "iii", 4),
            image("P5", 5), image("P6", 6)]


def test_interrupted_scrape_resumes_from_frozen_iterator_without_downloading_twice(tmp_path, monkeypatch):
    fake = FakeInstagram(resume_nodes())

    def crash_once(url):
        if url == f"{CDN}S4_1.jpg" and fake.downloads[url] == 1:
            raise RuntimeError("killed")  # mid-carousel: S4_0 is stored, S4_1 is not
    fake.on_download = crash_once
    with pytest.raises(RuntimeError, match="killed"):
        scrape(tmp_path, fake, monkeypatch)

    raw = tmp_path / "raw"
    kept = {i.source_name for i in read_provenance(raw)}
    assert kept == {"P0_0.jpg", "P1_0.jpg", "P2_0.jpg", "P3_0.jpg", "S4_0.jpg"}
    [resume_file] = (raw / "resume").glob(f"{TAG}-*.json")
    assert_no_personal_data(resume_file.read_text())  # no captions, owners or our user name in it
    assert fake.pages == [None, "3"]

    fake.pages.clear()
    items = scrape(tmp_path, fake, monkeypatch)
    # Thawed on page 2, which is not asked for again. (instaloader asks for page 1 when it builds the
    # iterator, before the thaw replaces it.)
    assert fake.pages == [None, "6"]
    assert items.stats.images == 4  # S4_1 S4_2 P5 P6
    assert {i.source_name for i in items} == kept | {"S4_1.jpg", "S4_2.jpg", "P5_0.jpg", "P6_0.jpg"}
    # Nothing downloaded twice except S4_1, whose download was the one interrupted.
    assert [u for u, n in fake.downloads.items() if n > 1] == [f"{CDN}S4_1.jpg"]
    assert fake.downloads[f"{CDN}S4_1.jpg"] == 2
    assert not list((raw / "resume").glob("*.json"))


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import pytest
    sys.path.insert(0, {tests!r})
    import test_instagram as t
    tmp = Path(sys.argv[1])
    fake = t.FakeInstagram(t.resume_nodes())
    log = open(tmp / "downloads.log", "a")
    def kill_at_p5(url):
        log.write(url + "\\n"); log.flush()
        if "P5" in url:
            os.kill(os.getpid(), signal.SIGKILL)  # no exception handler, no finally: a real kill
    fake.on_download = kill_at_p5
    with pytest.MonkeyPatch.context() as mp:
        t.scrape(tmp, fake, mp)
""")


def test_killed_scrape_resumes_from_per_post_checkpoint(tmp_path, monkeypatch):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(ROOT / "tests")), str(tmp_path)],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    raw = tmp_path / "raw"
    assert {i.source_name for i in read_provenance(raw)} == {
        "P0_0.jpg", "P1_0.jpg", "P2_0.jpg", "P3_0.jpg", "S4_0.jpg", "S4_1.jpg", "S4_2.jpg"}

    fake = FakeInstagram(resume_nodes())
    items = scrape(tmp_path, fake, monkeypatch)
    assert fake.pages == [None, "6"]  # continued from the checkpoint written after S4, on page 2
    assert fake.downloads == Counter([image("P5")["display_url"], image("P6")["display_url"]])
    assert len(items) == 9 and items.stats.images == 2
    before = (tmp_path / "downloads.log").read_text().split()
    assert len(before) == len(set(before)) == 8  # the child's downloads: 7 stored + P5 in flight


# --- (3) backoff while throttled ------------------------------------------------------------------

def test_backoff_grows_on_429_and_401_and_scrape_completes(tmp_path, monkeypatch):
    fake = FakeInstagram([image(f"P{n}", n) for n in range(5)])
    # Page 2: three 429s (instaloader's get_json retries twice, through our handle_429, then gives up;
    # we wait and ask again), then a 401 "Please wait a few minutes" (get_json retries it), then the page.
    fake.page_errors = {"3": [429, 429, 429, 401]}
    sleeps = []
    items = scrape(tmp_path, fake, monkeypatch, sleeps=sleeps)
    assert sleeps == [60.0, 120.0, 240.0]
    assert items.stats.images == 5 and fake.pages == [None, "3"]


def test_backoff_is_capped_and_reset():
    rc = ig.BackoffRateController(ig.make_loader().context, sleep=(waits := []).append, base=1.0, cap=4.0)
    for _ in range(5):
        rc.backoff()
    rc.reset()
    rc.backoff()
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0, 1.0]


def test_throttled_for_good_gives_up_with_resume_state_and_next_attempt_completes(tmp_path, monkeypatch):
    fake = FakeInstagram([image(f"P{n}", n) for n in range(5)])
    fake.page_errors = {"3": [429] * 100}
    sleeps = []
    with pytest.raises(ig.ConnectionException, match="429"):
        scrape(tmp_path, fake, monkeypatch, sleeps=sleeps)
    assert sleeps[:4] == [60.0, 120.0, 240.0, 480.0] and max(sleeps) == 1800.0  # capped at 30 min
    assert len(read_provenance(tmp_path / "raw")) == 3
    assert list((tmp_path / "raw" / "resume").glob("*.json"))

    fake.page_errors.clear()  # Instagram calms down; the caller (Prefect) retries
    fake.pages.clear()
    items = scrape(tmp_path, fake, monkeypatch)
    assert len(items) == 5 and fake.pages == [None, "3"] and set(fake.downloads.values()) == {1}


# --- (4) session setup ----------------------------------------------------------------------------

def test_missing_session_file_is_a_setup_error_that_says_what_to_do(tmp_path):
    with pytest.raises(ig.InstagramSetupError) as err:
        ig.ingest_hashtag(TAG, tmp_path / "raw", max_posts=5)
    assert isinstance(err.value, ValueError)
    for hint in ("instaloader --login", "GANFLOW_IG_SESSIONFILE", "GANFLOW_IG_USER"):
        assert hint in str(err.value)
    assert not (tmp_path / "raw").exists()

    with pytest.raises(ig.InstagramSetupError, match="not found"):
        ig.ingest_hashtag(TAG, tmp_path / "raw", max_posts=5, session_file=str(tmp_path / "nope"),
                          username="tester")


def test_session_from_env_or_default_location(tmp_path, monkeypatch):
    session = write_session(tmp_path / "sess.pickle")
    monkeypatch.setenv(ig.SESSION_ENV, str(session))
    with pytest.raises(ig.InstagramSetupError, match="Which Instagram user"):
        ig.open_session()
    monkeypatch.setenv(ig.USER_ENV, "tester")
    assert ig.open_session().context.username == "tester"

    monkeypatch.delenv(ig.SESSION_ENV)  # `instaloader --login tester` writes here by default
    write_session(tmp_path / "config" / "instaloader" / "session-tester")
    loader = ig.open_session()
    assert loader.context.is_logged_in
    assert isinstance(loader.context._rate_controller, ig.BackoffRateController)


def test_unreadable_session_file_is_reported_without_its_contents(tmp_path):
    bad = tmp_path / "session-tester"
    bad.write_text("sessionid=very-secret-cookie")
    with pytest.raises(ig.InstagramSetupError) as err:
        ig.open_session(str(bad))
    assert "very-secret-cookie" not in str(err.value) and "instaloader --login" in str(err.value)


# --- (5) hashtag validation -----------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["", "#", "##cats", "cats dogs", "cat/../x", "ca#t", "café", "cats\n",
                                 "x" * 101, "${HOME}"])
def test_bad_hashtag_rejected(tag, tmp_path):
    with pytest.raises(ValueError, match="not a hashtag") as err:
        ig.ingest_hashtag(tag, tmp_path / "raw", max_posts=5)
    assert not isinstance(err.value, ig.InstagramSetupError)  # checked before any session is needed


def test_good_hashtag_normalized():
    assert ig.validate_tag("#Cats_2024") == "cats_2024"
    assert ig.validate_tag("x" * 100) == "x" * 100
