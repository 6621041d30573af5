"""Instagram hashtag source: images of a hashtag's recent posts, through a logged-in instaloader session.

Since instaloader 4.14.1 Instagram serves hashtags only to a logged-in session, and it answers bursts with
429 or 401 "Please wait a few minutes". So this source:
- loads a session file written by `instaloader --login USER` (never a password);
- walks the hashtag with instaloader's resumable NodeIterator, its state saved in <raw_dir>/resume/ after
  every post and on any error, so a killed or failed scrape continues where it stopped;
- skips images that provenance already records, so a rerun never downloads twice;
- backs off exponentially (capped) while Instagram throttles;
- bounds every request (REQUEST_TIMEOUT_S to connect and between bytes, CONNECTION_ATTEMPTS tries, DOWNLOAD_S for a
  whole image): a server that accepts and never answers is one line (InstagramUnreachable), never a hang.
Provenance keeps shortcode, UTC date, post URL and carousel index: no owner, no caption.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import time
from dataclasses import dataclass
from datetime import timezone
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, cast

import instaloader
import requests
import urllib3
from instaloader import (BadResponseException, ConnectionException, FrozenNodeIterator,
                         InvalidArgumentException, PostChangedException, QueryReturnedForbiddenException,
                         QueryReturnedNotFoundException, TooManyRequestsException)
from instaloader.instaloader import get_default_session_filename

from tasks.common.settings import HASHTAG_NAME
from tasks.ingestion.sources.raw import RawItem, read_provenance, store_stream, write_provenance

log = logging.getLogger(__name__)

SOURCE = "instagram"
SESSION_ENV = "GANFLOW_IG_SESSIONFILE"
USER_ENV = "GANFLOW_IG_USER"
RESUME = "resume"
THROTTLE_RETRIES = 3  # our own waits once instaloader's retries give up; then the caller's retry takes over
# instaloader waits 300 s per request by default: a stalled connection held a scrape 15 minutes a query (3 tries).
REQUEST_TIMEOUT_S = 30.0   # to connect, and between two reads of an answer
CONNECTION_ATTEMPTS = 3    # tries of one query before instaloader gives up (its default; a 429 has its own backoff)
DOWNLOAD_S = 120.0         # a whole image: a server that trickles a byte a minute is stopped too

# ASCII, like the raw dir name tasks.ingestion.ingest.raw_name derives; the rule is the ingest settings' own
_TAG = HASHTAG_NAME
_SHORTCODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HOWTO = (f"Instagram serves hashtags only to a logged-in session. Create one with `instaloader --login USER` "
          f"(it asks for the password once and writes a session file, by default "
          f"~/.config/instaloader/session-USER), then pass session_file/username "
          f"(CLI: --session-file PATH --ig-user USER) or set {SESSION_ENV}=PATH and {USER_ENV}=USER.")
# Node fields a resumed iteration needs; captions, owners and counts stay out of the data dir.
_NODE_KEYS = {"__typename", "id", "shortcode", "is_video", "display_url", "video_url", "taken_at_timestamp",
              "date", "edge_sidecar_to_children"}


class InstagramSetupError(ValueError):
    """No usable Instagram session; the message says how to make one."""


class InstagramUnreachable(ConnectionError):
    """Instagram (or the network to it) did not answer within the bounds; one line. A rerun resumes the walk."""


@dataclass
class ScrapeStats:
    posts: int = 0    # posts looked at (at most max_posts)
    images: int = 0   # images downloaded and stored by this call
    known: int = 0    # posts skipped because provenance already has them
    videos: int = 0   # videos skipped: whole posts and carousel items
    failed: int = 0   # posts or images Instagram would not serve (deleted, expired link)


class ScrapeResult(list):
    """All RawItems of the raw dir (what provenance.jsonl now holds), with `stats` about this call."""

    def __init__(self, items: list[RawItem], stats: ScrapeStats):
        super().__init__(items)
        self.stats = stats


class BackoffRateController(instaloader.RateController):
    """instaloader's request pacing, plus exponential backoff (capped) while Instagram throttles.

    On a 429 instaloader waits until its 11-minute request window clears, the same wait each time; when
    Instagram stays unhappy that earns more 429s. Here each throttle doubles the wait, up to `cap`, and a
    finished post resets it. Every wait goes through `sleep`, so tests need not wait.
    """

    def __init__(self, context: instaloader.InstaloaderContext, sleep: Callable[[float], None] = time.sleep,
                 base: float = 60.0, cap: float = 30 * 60.0):
        super().__init__(context)
        self._sleep, self.base, self.cap = sleep, base, cap
        self.failures = 0

    def sleep(self, secs: float) -> None:
        self._sleep(secs)

    def backoff(self) -> float:
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        log.warning("Instagram is throttling; waiting %.0f s", delay)
        self.sleep(delay)
        return delay

    def handle_429(self, query_type: str) -> None:  # called by get_json before it retries a 429
        self.backoff()

    def reset(self) -> None:
        self.failures = 0


def validate_tag(tag: str) -> str:
    """The hashtag without its leading '#', lowercased; ValueError unless letters, digits and '_' only."""
    name = tag[1:] if tag.startswith("#") else tag
    if not _TAG.fullmatch(tag):
        raise ValueError(f"not a hashtag: {tag[:60]!r} (1-100 ASCII letters, digits or '_', optional leading '#')")
    return name.lower()


def make_loader(sleep: Callable[[float], None] = time.sleep) -> instaloader.Instaloader:
    """An Instaloader (not logged in yet) set up for this source."""
    loader = instaloader.Instaloader(
        quiet=True,            # progress is reported through the `progress` callback
        request_timeout=REQUEST_TIMEOUT_S, max_connection_attempts=CONNECTION_ATTEMPTS,
        iphone_support=False,  # display_url (1080 px) is plenty for 512² training; the iPhone API would
                               # cost one more rate-limited query per post
        rate_controller=lambda ctx: BackoffRateController(ctx, sleep),
    )
    # instaloader prints its notes ("... [retrying; skip with ^C]") to stderr even when quiet; a failure that
    # ends the scrape is said once, by the caller: the notes go to the log.
    loader.context.error = lambda msg, repeat_at_end=True: log.info("instaloader: %s", msg)  # type: ignore[method-assign]
    return loader


def open_session(session_file: str | None = None, username: str | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> instaloader.Instaloader:
    """A loader logged in from a session file (argument, $GANFLOW_IG_SESSIONFILE, or instaloader's default
    file for the user). The file is a pickle of cookies: only load one you made yourself."""
    session_file = session_file or os.environ.get(SESSION_ENV) or None
    username = username or os.environ.get(USER_ENV) or None
    if not session_file and username and os.path.isfile(get_default_session_filename(username)):
        session_file = get_default_session_filename(username)
    if not session_file:
        raise InstagramSetupError("No Instagram session file given. " + _HOWTO)
    path = Path(session_file).expanduser()
    if not path.is_file():
        raise InstagramSetupError(f"Instagram session file not found: {path}. " + _HOWTO)
    if not username:  # `instaloader --login USER` names the file session-USER
        match = re.fullmatch(r"session-([A-Za-z0-9._]{1,30})", path.name)
        if not match:
            raise InstagramSetupError(f"Which Instagram user is {path} for? Pass username or set {USER_ENV}.")
        username = match.group(1)
    loader = make_loader(sleep)
    try:
        loader.load_session(username, read_session_file(path))
    except Exception as err:  # name the problem, never echo the file's contents
        raise InstagramSetupError(f"Cannot read Instagram session file {path} ({type(err).__name__}). "
                                  + _HOWTO) from None
    return loader


class _CookiesOnly(pickle.Unpickler):
    """instaloader's session file is a pickle of a {cookie name: value} dict: plain opcodes, no globals. Any
    global (a class, a function: how a planted pickle runs code) is refused, as torch's weights_only does."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"a session file holds only cookies, not {module}.{name}")


def read_session_file(path: Path) -> dict[str, str]:
    """The cookies of a session file, read once and unpickled without running anything (instaloader's own
    load_session_from_file is a full pickle.load)."""
    with open(path, "rb") as f:
        data = _CookiesOnly(io.BytesIO(f.read())).load()
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise pickle.UnpicklingError("not a {cookie name: value} dict")
    return data


def ingest_hashtag(tag: str, raw_dir: Path, *, max_posts: int, session_file: str | None = None,
                   username: str | None = None, loader: instaloader.Instaloader | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   progress: Callable[[int], None] | None = None) -> ScrapeResult:
    """Store the images of the first `max_posts` recent posts of #tag in `raw_dir`; return all its items.

    `loader`: a ready, logged-in Instaloader (tests pass one whose HTTP is faked); otherwise one is opened
    from the session file, with `sleep` for its waits. `progress(n)` is called as images are stored.
    """
    tag = validate_tag(tag)
    raw_dir = Path(raw_dir)
    if loader is None:
        loader = open_session(session_file, username, sleep=sleep)
    rc = _controller(loader, sleep)
    try:
        return _walk(tag, raw_dir, max_posts, loader, rc, progress)
    except ConnectionException as err:
        if _throttled(err) or not _timed_out(err):
            raise  # throttling and refusals keep instaloader's words (and the flow task's retries)
        raise InstagramUnreachable(f"Instagram did not answer #{tag} within {REQUEST_TIMEOUT_S:g} s "
                                   f"({CONNECTION_ATTEMPTS} tries): {_short(err)}; what was stored is kept and "
                                   "a rerun resumes the walk") from err


def _walk(tag: str, raw_dir: Path, max_posts: int, loader: instaloader.Instaloader, rc: "BackoffRateController",
          progress: Callable[[int], None] | None) -> ScrapeResult:
    items = read_provenance(raw_dir)
    have = {(i.extra.get("shortcode"), i.extra.get("index")) for i in items if i.source == SOURCE}
    done = {shortcode for shortcode, _ in have}
    stats = ScrapeStats()

    hashtag = _patiently(lambda: instaloader.Hashtag.from_name(loader.context, tag), rc)
    # Building the iterator queries page 1, even when a thaw then replaces it: a resume costs that query.
    posts = _patiently(hashtag.get_posts_resumable, rc)
    resume_file = str(raw_dir / RESUME / f"{tag}-{posts.magic}.json")
    try:
        with instaloader.resumable_iteration(context=loader.context, iterator=posts, load=_load_frozen,
                                             save=_save_frozen, format_path=lambda _magic: resume_file
                                             ) as (resuming, start):
            # islice stops before asking for a post (maybe a page query) beyond max_posts.
            for number, post in enumerate(islice(_patient_iter(posts, rc), max(max_posts - start, 0)),
                                          start=start + 1):
                stats.posts += 1
                # After a thaw instaloader yields again the post it was on when stopped: it may be half
                # done, so that one is checked image by image.
                if post.shortcode in done and not (resuming and number == start + 1):
                    stats.known += 1
                elif _take_post(post, loader, rc, raw_dir, items, have, stats, progress):
                    write_provenance(raw_dir, items)  # a kill keeps what was downloaded
                _save_frozen(posts.freeze(), resume_file)  # ... and where the walk was
                rc.reset()
        Path(resume_file).unlink(missing_ok=True)  # walked to the end or to max_posts: next run starts afresh
    finally:
        write_provenance(raw_dir, items)
    log.info("#%s: %s", tag, stats)
    return ScrapeResult(items, stats)


def _take_post(post: instaloader.Post, loader, rc, raw_dir: Path, items: list[RawItem], have: set,
               stats: ScrapeStats, progress) -> bool:
    """Store the post's images not yet in `have`; True if any was stored."""
    shortcode = post.shortcode
    if not _SHORTCODE.fullmatch(shortcode):  # it becomes part of a name and a URL
        stats.failed += 1
        return False
    try:
        media = _patiently(lambda: _media(post), rc)
    except (QueryReturnedNotFoundException, QueryReturnedForbiddenException, BadResponseException,
            PostChangedException) as err:
        log.warning("post %s skipped: %s", shortcode, err)
        stats.failed += 1
        return False
    date = post.date_utc.replace(tzinfo=timezone.utc).isoformat()
    stored = False
    for index, is_video, url in media:
        if is_video:
            stats.videos += 1
            continue
        if (shortcode, index) in have:
            continue
        extra = {"shortcode": shortcode, "date": date, "url": f"https://www.instagram.com/p/{shortcode}/",
                 "index": index}
        try:
            item = _patiently(lambda: _download(loader, url, raw_dir, f"{shortcode}_{index}.jpg", extra), rc)  # noqa: B023 (called now)
        except (QueryReturnedNotFoundException, QueryReturnedForbiddenException) as err:
            log.warning("image %s_%d skipped: %s", shortcode, index, err)  # deleted post or expired link
            stats.failed += 1
            continue
        items.append(item)
        have.add((shortcode, index))
        stats.images += 1
        stored = True
        if progress:
            progress(1)
    return stored


def _media(post: instaloader.Post) -> list[tuple[int, bool, str]]:
    """(index, is_video, url) of each item of the post; a sidecar (carousel) has several."""
    if post.typename == "GraphSidecar":  # may cost one metadata query when the node lacks the children
        return [(i, node.is_video, node.display_url) for i, node in enumerate(post.get_sidecar_nodes())]
    return [(0, post.is_video, post.url)]


def _download(loader: instaloader.Instaloader, url: str, raw_dir: Path, name: str, extra: dict) -> RawItem:
    try:
        resp = loader.context.get_raw(url)  # anonymous CDN request, as instaloader's own download_pic does
        with resp:
            return store_stream(raw_dir, cast(BinaryIO, _Deadline(resp.raw, time.monotonic() + DOWNLOAD_S)), SOURCE,
                                name, extra)
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, _TooSlow) as err:
        # get_raw (and the body's reads) leave these as they are: a ConnectionException, as get_json's are
        raise ConnectionException(f"Download of {url.split('?')[0]}: {err}") from err


class _TooSlow(Exception):
    pass


class _Deadline:
    """A response body read to a deadline: each read is bounded by the request timeout, the whole by DOWNLOAD_S."""

    def __init__(self, raw, deadline: float):
        self._raw, self._deadline = raw, deadline

    def read(self, n: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise _TooSlow(f"read timed out: not whole after {DOWNLOAD_S:g} s")
        return self._raw.read(n)


def _controller(loader: instaloader.Instaloader, sleep) -> BackoffRateController:
    # instaloader has no public getter for the controller; without ours, back off with a separate one.
    rc = getattr(loader.context, "_rate_controller", None)
    return rc if isinstance(rc, BackoffRateController) else BackoffRateController(loader.context, sleep)


def _timed_out(err: BaseException) -> bool:
    """Whether instaloader gave up on a request that timed out or lost its connection (not an HTTP answer)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (requests.exceptions.Timeout, requests.exceptions.ConnectionError, _TooSlow,
                             urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError)):
            return True
        seen = seen.__cause__
    return False


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + " ..."


def _throttled(err: Exception) -> bool:
    text = str(err).lower()  # get_json gives up with a plain ConnectionException naming the status
    return isinstance(err, TooManyRequestsException) or any(
        s in text for s in ("429 too many requests", "401 unauthorized", "please wait a few minutes"))


def _patiently(call, rc: BackoffRateController):
    """call(), backing off and retrying while Instagram throttles (instaloader's own retries gave up)."""
    for attempt in range(THROTTLE_RETRIES + 1):
        try:
            return call()
        except ConnectionException as err:
            if attempt == THROTTLE_RETRIES or not _throttled(err):
                raise
            rc.backoff()


def _patient_iter(posts: Iterator, rc: BackoffRateController) -> Iterator[instaloader.Post]:
    # A failed page query leaves the NodeIterator as it was, so asking again is safe.
    while True:
        try:
            yield _patiently(lambda: next(posts), rc)
        except StopIteration:
            return


def _lean(node: dict | None) -> dict | None:
    if node is None:
        return None
    lean = {k: v for k, v in node.items() if k in _NODE_KEYS}
    if "edge_sidecar_to_children" in lean:
        lean["edge_sidecar_to_children"] = {
            "edges": [{"node": _lean(e["node"])} for e in lean["edge_sidecar_to_children"].get("edges", [])]}
    return lean


def _save_frozen(frozen: FrozenNodeIterator, path: str) -> None:
    """Write resume state atomically in instaloader's JSON format, without captions, owners or our user
    name (the file name's magic already ties it to the user)."""
    data = frozen.remaining_data
    if data is not None:
        data = {**data, "edges": [{"node": _lean(e["node"])} for e in data.get("edges", [])]}
    frozen = frozen._replace(context_username=None, first_node=_lean(frozen.first_node), remaining_data=data)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    instaloader.save_structure_to_file(frozen, path + ".tmp")
    os.replace(path + ".tmp", path)


def _load_frozen(context: instaloader.InstaloaderContext, path: str) -> FrozenNodeIterator:
    try:
        frozen = instaloader.load_structure_from_file(context, path)
    except (OSError, ValueError, TypeError, KeyError) as err:  # resumable_iteration then starts afresh
        raise InvalidArgumentException(f"unreadable resume file: {err}") from err
    if not isinstance(frozen, FrozenNodeIterator):
        raise InvalidArgumentException("not a resume file")
    return frozen._replace(context_username=context.username)
