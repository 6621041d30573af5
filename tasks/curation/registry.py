"""The per-image filters, each registered once with what it rejects, where it runs and the settings it reads.

A filter is a function decorated with `@register(...)` next to the scores it judges (tasks/curation/filters.py:
the cheap checks, tasks/curation/detectors.py: the content checks). Screening runs the registered filters of a
stage in their order. The cheap stage caches only its scores and judges them anew on every read; the content stage's
cache key is a digest of the settings its filters read, so a new filter's settings are in the key as soon as it is
registered. Either way a changed threshold can never serve a stale cached verdict.

Adding a filter: its threshold in params.yaml's `curate` section and in CurateSettings, and one decorated function
in a module that tasks/curation/per_image.py imports (the pool's worker processes import only that module, so a
filter registered elsewhere would change the cache key but never run there).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STAGES = ("cheap", "content")
# Settings a stage's results depend on whatever filters it runs: every cheap score (and the perceptual hash
# that dedup uses) is measured on the blur_size thumbnail.
STAGE_KEYS = {"cheap": ("blur_size",), "content": ()}


class FilterError(ValueError):
    """A filter registered twice, in an unknown stage, or with no reason word."""


@dataclass(frozen=True)
class Filter:
    name: str                  # its registry name (the function's)
    reasons: tuple[str, ...]   # the manifest reason words it can give
    stage: str                 # cheap: judges the header or the fixed-size thumbnail's scores; content: the pixels
    keys: tuple[str, ...]      # params.yaml `curate` keys it reads, directly or through a score it judges
    order: int                 # within the stage, lower runs first: the first failing filter gives the reason
    check: Callable[..., str | None]
    header: bool = False       # cheap only: needs width/height alone, so it runs before any pixel is decoded


_FILTERS: dict[str, Filter] = {}


def register(*reasons: str, stage: str, keys: tuple[str, ...], order: int, header: bool = False):
    """Decorator: register `check` as a filter.

    Cheap checks are called as check(scores, params) with the thumbnail's scores (or, for header checks, a
    dict holding at least width and height); content checks as check(image, params) with a ContentImage.
    Either returns one of `reasons`, or None when the image passes.
    """
    if stage not in STAGES:
        raise FilterError(f"filter stage must be one of {STAGES}, not {stage!r}")
    if not reasons:
        raise FilterError("a filter needs at least one reason word")
    if header and stage != "cheap":
        raise FilterError("only cheap filters can run on the header alone")

    def decorate(check: Callable[..., str | None]) -> Callable[..., str | None]:
        name = check.__name__
        old = _FILTERS.get(name)
        if old is not None and (old.check.__module__, old.check.__qualname__) != (check.__module__, check.__qualname__):
            raise FilterError(f"a filter named {name!r} is already registered")
        taken = {r: f.name for f in _FILTERS.values() if f.name != name for r in f.reasons}
        clash = sorted(set(reasons) & set(taken))
        if clash:
            raise FilterError(f"reason {clash[0]!r} is already given by filter {taken[clash[0]]!r}")
        _FILTERS[name] = Filter(name, tuple(reasons), stage, tuple(keys), order, check, header)
        return check

    return decorate


def unregister(name: str) -> None:
    """Remove a filter (for tests and plug-ins that register temporarily)."""
    _FILTERS.pop(name, None)


def _load_builtin() -> None:
    # The built-in filters register when their modules are imported; imported here (not at the top) because
    # those modules import this one for the decorator.
    from tasks.curation import detectors, filters  # noqa: F401


def registered(stage: str, header: bool | None = None) -> list[Filter]:
    """The stage's filters in run order (header=True: only the header checks; False: only the others).

    Header checks come first whatever their order: screening runs them before decoding, so they must win.
    """
    _load_builtin()
    picked = [f for f in _FILTERS.values() if f.stage == stage and (header is None or f.header == header)]
    return sorted(picked, key=lambda f: (not f.header, f.order, f.name))


def stage_keys(stage: str) -> tuple[str, ...]:
    """Every curate setting the stage's results depend on (its filters' keys and STAGE_KEYS), sorted."""
    return tuple(sorted({*STAGE_KEYS[stage], *(k for f in registered(stage) for k in f.keys)}))


def filter_keys(name: str) -> tuple[str, ...]:
    """The curate settings the filter `name` reads (as registered)."""
    _load_builtin()
    if name not in _FILTERS:
        raise FilterError(f"no filter named {name!r} is registered: one of {sorted(_FILTERS)}")
    return _FILTERS[name].keys


def first_reason(filters: list[Filter], subject: Any, params) -> str | None:
    """Run `filters` in order on `subject`; the first failing one's reason, or None."""
    for f in filters:
        reason = f.check(subject, params)
        if reason:
            return reason
    return None
