"""`ganflow serve`: one local web page, and the JSON/PNG API under it, to explore a trained generator.

Two layers. Explorer is plain Python (testable without HTTP): which snapshots may be chosen (only files under the
run folder, found by listing it), which resolutions a snapshot offers (a PGGAN's grown stages, resampled sizes for
StyleGAN2), the checks on every input, and the images (seeds, neighbour grids, morphs) through models.generate; with
a dataset (tasks.evaluation.nearest), the training images nearest a generated one, as the memorization audit measures them.
create_app() puts FastAPI over it (module-level routes, error handlers and Host check; the JSON bodies are in
tasks.serving.schemas): every bad input is a 422 with a sentence saying what to change, and the caps in
Limits bound the work any one request can ask for. No Prefect here: serving is a view on a run, not a pipeline step.

Hostile files and requests: only regular files inside the run folder are read (links, FIFOs and folders named like
snapshots are not listed, and every open is O_NONBLOCK|O_NOFOLLOW and fstat-checked); messages name files relative
to the run folder and never quote their contents; the Host header must name the bound address (DNS rebinding);
heavy requests wait in a bounded queue (429 when it is full, 503 after Limits.max_wait_s).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from models.arch import family
from models.checkpoint import CheckpointError, list_checkpoints
from models.generate import (grid, images_from_seeds, images_from_z, interpolation_frames, load_generator,
                             neighbour_latents, save_gif)
from models.run_dir import BEST, CHECKPOINT_GLOB, CHECKPOINTS, FID_CSV, RunDir, checkpoint_name
from tasks.evaluation import registry
from tasks.evaluation.fid_table import parse_fid_csv, row_note
from tasks.serving.schemas import FidColumns, Info, Nearest, Problem, Snapshots, fid_table_model

PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class Limits:
    """Caps on one request, so a huge one is refused (422) instead of holding the generator for minutes."""

    max_seed: int = 2 ** 32 - 1            # numpy's RandomState takes seeds up to 2**32 - 1
    min_truncation: float = 0.0            # 0 = the average image
    max_truncation: float = 2.0            # 1 = no truncation; above 1 exaggerates
    min_resampled: int = 16                # smallest resampled StyleGAN2 size offered
    max_resolution: int = 1024             # largest resampled StyleGAN2 size offered (the native size always is)
    max_grid: int = 25                     # images in one neighbour grid
    max_frames: int = 120                  # frames in one morph
    min_fps: float = 0.5                   # GIF frame durations are whole 10 ms units up to 655 s
    max_fps: float = 60.0
    max_spread: float = 2.0                # neighbour distance (0 = the seed's own image everywhere)
    max_pixels: int = 16 * 1024 * 1024     # output pixels of one request: images × side² (16 images of 1024²)
    max_nearest: int = 8                   # training images per nearest-neighbour request
    cached_generators: int = 2             # snapshots kept loaded
    max_queue: int = 8                     # heavy requests waiting for the generator; more are refused (429)
    max_wait_s: float = 30.0               # longest wait in that queue before a 503
    max_table_bytes: int = 4 * 1024 * 1024 # fid.csv / metrics.json larger than this are not read


class InputError(ValueError):
    """A request asked for something this snapshot or the limits do not allow (HTTP 422)."""


class Busy(RuntimeError):
    """The generator's queue is full (429) or a request waited too long for it (503)."""

    def __init__(self, status: int, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.status, self.retry_after = status, retry_after


class Gate:
    """One heavy request at a time, at most `queue` more waiting, each for at most `wait_s` seconds.

    A request beyond the queue is refused at once (429): a burst of maximum-size requests cannot pile up behind
    the generator for minutes. One that waits too long gets a 503. Both say when to retry."""

    def __init__(self, queue: int, wait_s: float) -> None:
        self.queue, self.wait_s = queue, wait_s
        self._cv = threading.Condition()
        self.busy = False
        self.waiting = 0

    def __enter__(self) -> Gate:
        with self._cv:
            if self.busy and self.waiting >= self.queue:
                raise Busy(429, f"the generator is busy and {self.waiting} request(s) already wait: retry shortly",
                           retry_after=max(1, math.ceil(self.wait_s / 4)))
            self.waiting += 1
            try:
                deadline = time.monotonic() + self.wait_s
                while self.busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Busy(503, f"waited {self.wait_s:g} s for the generator: it is busy, retry later",
                                   retry_after=max(1, math.ceil(self.wait_s)))
                    self._cv.wait(left)
                self.busy = True
            finally:
                self.waiting -= 1
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self.busy = False
            self._cv.notify()


def read_regular(path: Path, limit: int) -> bytes | None:
    """A small file's bytes, or None unless it is a regular file (not a link, FIFO or folder) of at most `limit`
    bytes: opened without following links and without blocking, checked on the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")


def host_of(header: str) -> str:
    """'Example.com:8000' → 'example.com', '[::1]:8000' → '::1' (what a Host or Origin names, lower case)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return (header.rsplit(":", 1)[0] if header.count(":") == 1 else header).rstrip(".")


_AUTHORITY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?)(?::(\d{1,5}))?")
_ORIGIN = re.compile(r"(https?)://(.+)")
_DEFAULT_PORTS = (None, 80, 443)  # what a reverse proxy's Host and Origin name: its scheme's port


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """'Example.com:8000' → ('example.com', 8000), '[::1]' → ('::1', None); None unless the value is exactly a host
    and an optional port: a user@, a path, a space or anything after the port makes it no authority at all."""
    m = _AUTHORITY.fullmatch(value.strip().lower())
    if m is None:
        return None
    host = m.group(1).strip("[]").rstrip(".")
    return host, int(m.group(2)) if m.group(2) else None


def served_authority(host: str, port: int | None, allowed: frozenset[str], served_port: int | None,
                     proxied: frozenset[str]) -> bool:
    """Whether HOST:PORT is this server: an allowed name on the served port (when the app knows it), or a name
    added with --allow-host (what a reverse proxy passes) on its scheme's default port."""
    if host not in allowed:
        return False
    return served_port is None or port == served_port or (host in proxied and port in _DEFAULT_PORTS)


def origin_refusal(origin: str, allowed: frozenset[str], port: int | None, proxied: frozenset[str] = frozenset()) \
        -> str | None:
    """Why an Origin header is not this server's (None when it is): exactly http://HOST[:PORT] of a served authority
    (https only through a --allow-host name, a proxy's); `null` (a sandboxed frame, a file:// page) is nobody's."""
    m = _ORIGIN.fullmatch(origin.strip().lower())
    parsed = parse_authority(m.group(2)) if m else None
    if m is None or parsed is None:
        return "an Origin that is not http://host[:port]" if origin.strip().lower() != "null" else "Origin null"
    host, given = parsed
    default = 443 if m.group(1) == "https" else 80
    if m.group(1) == "https" and host not in proxied:
        return "an https origin: ganflow serve speaks http"
    if not served_authority(host, given or default, allowed, port, proxied):
        return "another site's origin"
    return None


def allowed_hosts(bind: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The names a request's Host header may carry: the bound address (loopback names for a loopback bind; this
    machine's name and addresses for 0.0.0.0 / ::) and `extra` (`ganflow serve --allow-host`; '*' allows any).
    Anything else is a DNS-rebinding page or a misdirected request."""
    names = {host_of(bind)} - {""}
    if names & set(LOOPBACK) or not names:
        names |= set(LOOPBACK)
    if bind in WILDCARD:
        names |= set(LOOPBACK)
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn().lower()}
        try:
            names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    return frozenset(names | {host_of(h) if h != "*" else "*" for h in extra})


def offered_resolutions(arch: dict, limits: Limits = Limits()) -> list[int]:
    """The sizes a snapshot can be drawn at: each stage a PGGAN has grown (drawn by that stage's own layers,
    not resampled), or the native size of a StyleGAN2 and its powers-of-two multiples within the limits."""
    native = int(arch["net"]["resolution"])
    if family(arch["name"]).progressive:
        from models.pggan import resolution_stage, stage_resolution

        stage = int(arch.get("stage", resolution_stage(native)))
        return [stage_resolution(s) for s in range(stage + 1)]
    sizes = {native} | {int(native * 2.0 ** k) for k in range(-6, 7)
                        if limits.min_resampled <= native * 2.0 ** k <= limits.max_resolution}
    return sorted(sizes)


def default_resolution(arch: dict, limits: Limits = Limits()) -> int:
    """What the snapshot draws without resampling: a PGGAN's current stage, a StyleGAN2's native size."""
    grown = family(arch["name"]).progressive
    return offered_resolutions(arch, limits)[-1] if grown else int(arch["net"]["resolution"])


def to_png(image: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "PNG")
    return buf.getvalue()


def to_gif(frames: np.ndarray, fps: float) -> bytes:
    """A GIF that loops forever (what `ganflow morph` writes), so the page plays it with a plain <img>."""
    buf = io.BytesIO()
    save_gif(frames, buf, fps)
    return buf.getvalue()


class Explorer:
    """The snapshots of one run (or one snapshot file) and the images they draw.

    Snapshots are chosen by name from list_snapshots() (`best.pt`, `checkpoints/ckpt-<kimg>.pt`), never by path,
    so a request can reach no other file. Generation and loading pass through `gate` (Gate): one generator call at
    a time keeps each call's latency bounded on a few shared cores, a loaded network is not run by two threads at
    once, and the requests waiting behind it are bounded in number and in time.
    """

    def __init__(self, snapshot: str | Path | None = None, run_dir: str | Path | None = None,
                 limits: Limits = Limits(), device: str = "cpu", training=None) -> None:
        if (snapshot is None) == (run_dir is None):
            raise ValueError("give either a snapshot file or a run folder, not both (nor neither)")
        self.limits, self.device = limits, device
        self.gate = Gate(limits.max_queue, limits.max_wait_s)  # generation and loading: one at a time, bounded
        self._cache_lock = threading.Lock()
        self.training = training  # tasks.evaluation.nearest.TrainingNeighbours, when a dataset was given
        self._loaded: OrderedDict[tuple[Path, float], tuple] = OrderedDict()
        self._broken: dict[tuple[Path, float], str] = {}  # snapshots that did not load (until their file changes)
        if run_dir is not None:
            self.root, self.fixed = Path(run_dir).resolve(), None
            self.run = RunDir(self.root)
            if not self.root.is_dir():
                raise FileNotFoundError(f"run folder {run_dir} does not exist")
            if not self.list_snapshots():
                raise FileNotFoundError(f"{run_dir} has no {BEST} nor {CHECKPOINTS}/{CHECKPOINT_GLOB}: "
                                        "train (and evaluate) first")
        else:
            self.fixed = Path(snapshot).resolve()  # type: ignore[arg-type]  # given when run_dir is not
            if not self.fixed.is_file():
                raise FileNotFoundError(f"snapshot {snapshot} does not exist")
            # RUN/best.pt or RUN/checkpoints/ckpt-*.pt: its run's fid.csv is the table to show
            self.run = RunDir.of_snapshot(self.fixed)
            self.root = self.run.path

    # ------------------------------------------------------------------ which snapshots
    def list_snapshots(self) -> list[dict]:
        """[{name, kimg, path}], best.pt first, then checkpoints oldest first. Read afresh each time: a run still
        training or being evaluated gains snapshots while it is served. Only regular files directly in the run
        folder (or in its real checkpoints/ folder) are listed: a link (in or out of the run folder, or looping
        onto itself), a FIFO or a folder named like a snapshot is left out."""
        if self.fixed is not None:
            return [{"name": self.fixed.name, "kimg": None, "path": self.fixed}]
        found = []
        best = self.run.best
        if _is_regular(best):
            found.append({"name": BEST, "kimg": self._best_kimg(), "path": best})
        try:
            real_folder = stat.S_ISDIR(os.lstat(self.run.checkpoints).st_mode)
        except OSError:
            real_folder = False
        if real_folder:
            found += [{"name": f"{CHECKPOINTS}/{p.name}", "kimg": kimg, "path": p}
                      for kimg, p in list_checkpoints(self.root) if _is_regular(p)]
        return found

    def _read_json(self, path: Path) -> dict:
        data = read_regular(path, self.limits.max_table_bytes)
        try:
            out = json.loads(data) if data is not None else {}
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    def _best_kimg(self) -> float | None:
        try:
            return float(self._read_json(self.run.metrics)["best"]["kimg"])
        except (ValueError, KeyError, TypeError):
            return None

    def _key(self, path: Path) -> tuple[Path, float] | None:
        try:
            return path, (os.stat(path) if self.fixed is not None else os.lstat(path)).st_mtime
        except OSError:
            return None

    def default_snapshot(self) -> str:
        """best.pt, else the newest checkpoint; a snapshot known not to load is passed over while others do."""
        snaps = self.list_snapshots()
        if not snaps:
            raise InputError("the run folder has no snapshot any more")
        with self._cache_lock:
            good = [s["name"] for s in snaps if self._key(s["path"]) not in self._broken] or [s["name"] for s in snaps]
        return BEST if BEST in good else good[-1]  # the best by FID, else the newest

    def resolve(self, name: str | None) -> dict:
        """The list_snapshots() entry of `name` (default_snapshot() when None)."""
        name = name or self.default_snapshot()
        for s in self.list_snapshots():
            if s["name"] == name:
                return s
        raise InputError(f"unknown snapshot {name!r}: choose one of {[s['name'] for s in self.list_snapshots()]} "
                         f"(GET /api/snapshots); only snapshots of the served run can be chosen")

    def generator(self, name: str | None) -> tuple[str, object, dict]:
        """(name, G, arch); loaded with weights_only=True (models.checkpoint), kept for the next requests, and
        loaded again when the file changed (`ganflow evaluate` rewrites best.pt)."""
        snap = self.resolve(name)
        name, path = snap["name"], snap["path"]
        key = self._key(path)
        if key is None:  # deleted since it was listed
            raise InputError(f"snapshot {name!r} is gone: GET /api/snapshots for those there now")
        with self._cache_lock:
            hit, broken = self._loaded.get(key), self._broken.get(key)
        if broken:
            raise InputError(broken)
        if hit is None:
            with self.gate:  # loading is heavy too: it waits in the generator's bounded queue
                with self._cache_lock:
                    hit = self._loaded.get(key)  # another request may have loaded it meanwhile
                if hit is None:
                    try:  # a run folder's snapshots: no link is followed, a FIFO never blocks (models.checkpoint)
                        G, arch = load_generator(path, follow_links=self.fixed is not None)
                    except CheckpointError:  # the reason names the absolute path: say only which snapshot
                        why = (f"snapshot {name!r} does not load: it is not a readable ganflow checkpoint "
                               f"(only weights_only=True loads are made); choose another from /api/snapshots")
                        with self._cache_lock:
                            self._broken[key] = why
                        raise InputError(why) from None
                    hit = (G.to(self.device), arch)
                    with self._cache_lock:
                        self._loaded[key] = hit
                        while len(self._loaded) > self.limits.cached_generators:
                            self._loaded.popitem(last=False)
        with self._cache_lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
        G, arch = hit
        return name, G, arch

    # ------------------------------------------------------------------ checks
    def check(self, name: str, arch: dict, truncation: float, resolution: int | None, images: int) -> int:
        """The resolution to draw at, after checking the request against this snapshot and the limits."""
        offered = offered_resolutions(arch, self.limits)
        resolution = resolution or default_resolution(arch, self.limits)
        traits = family(arch["name"])
        if resolution not in offered:
            what = "the stages this network has grown" if traits.progressive else "resampled sizes"
            raise InputError(f"resolution {resolution} is not offered by {name} ({arch['name']}): choose one of "
                             f"{offered} ({what})")
        if not traits.truncation and truncation != 1.0:
            raise InputError(f"{name} ({arch['name']}) has no truncation: leave truncation at 1 (got {truncation:g})")
        pixels = images * resolution * resolution
        if pixels > self.limits.max_pixels:
            raise InputError(f"{images} image(s) of {resolution}² is {pixels / 1e6:.1f} Mpx, over the cap of "
                             f"{self.limits.max_pixels / 1e6:.1f} Mpx per request: ask for fewer images or frames, "
                             f"or a smaller resolution")
        return resolution

    # ------------------------------------------------------------------ images
    def image(self, name: str | None, seed: int, truncation: float = 1.0, resolution: int | None = None) -> np.ndarray:
        """One seed's image, batch 1: the same bytes as `ganflow generate` writes for it."""
        name, G, arch = self.generator(name)
        resolution = self.check(name, arch, truncation, resolution, 1)
        with self.gate:
            return images_from_seeds(G, arch, [seed], truncation, resolution, batch=1)[0]

    def neighbours(self, name: str | None, seed: int, count: int, spread: float, truncation: float = 1.0,
                   resolution: int | None = None) -> Image.Image:
        """A grid of `count` images: the seed's own first, then latents around it
        (models.generate.neighbour_latents)."""
        name, G, arch = self.generator(name)
        resolution = self.check(name, arch, truncation, resolution, count)
        z = neighbour_latents(seed, count, arch["net"]["z_dim"], spread)
        with self.gate:
            images = images_from_z(G, arch, z, truncation, resolution, batch=count)
        return grid(images)

    def morph(self, name: str | None, seeds: list[int], frames: int, truncation: float = 1.0,
              resolution: int | None = None) -> np.ndarray:
        """A loop seeds[0] → seeds[1] → ... → seeds[0] of `frames` frames (as `ganflow morph`)."""
        name, G, arch = self.generator(name)
        resolution = self.check(name, arch, truncation, resolution, frames)
        if frames < len(seeds):
            raise InputError(f"a morph through {len(seeds)} seeds needs at least {len(seeds)} frames (got {frames})")
        with self.gate:
            return interpolation_frames(G, arch, seeds, frames, truncation, resolution)

    # ------------------------------------------------------------------ training images
    def _training(self):
        if self.training is None:
            raise InputError("nearest training images need the run's dataset: start `ganflow serve` with --data DIR "
                             "(the curated dataset the run trained on)")
        return self.training

    def nearest_training(self, name: str | None, seed: int, truncation: float = 1.0, count: int = 3) -> dict:
        """The training images nearest to a seed's image (at the snapshot's own size, as `ganflow evaluate` scores
        it), with their distances and the memorization threshold τ."""
        neighbours = self._training()
        name, _G, _arch = self.generator(name)
        image = self.image(name, seed, truncation)
        with self.gate:  # the feature extractor is as heavy as the generator: the same bounded queue
            out = neighbours.nearest(image, count)
        return {"snapshot": name, "seed": seed, **out}

    def training_image(self, image_id: str) -> np.ndarray:
        try:
            return self._training().image(image_id)
        except KeyError:
            raise InputError(f"{image_id!r} is not an image of the served dataset: use an id from "
                             f"/api/nearest") from None

    # ------------------------------------------------------------------ what the page shows
    def info(self, name: str | None) -> dict:
        name, _G, arch = self.generator(name)
        return {"snapshot": name, "kimg": self.resolve(name)["kimg"], "arch": arch["name"],
                "native_resolution": int(arch["net"]["resolution"]),
                "resolutions": offered_resolutions(arch, self.limits),
                "default_resolution": default_resolution(arch, self.limits),
                "truncation": family(arch["name"]).truncation,
                "stage": arch.get("stage"), "alpha": arch.get("alpha"),
                "limits": asdict(self.limits)}

    def fid_table(self, scores: list[str] | None = None) -> dict:
        """RUN/fid.csv (as `ganflow evaluate` writes it): kimg, the `scores` columns (default: the registered metrics'
        labelled ones), each row's snapshot name and note (best, diverged)."""
        # Read only as a regular file inside the run folder (a link out of it is not followed), and never quoted:
        # a note says what is wrong with the file, not what it holds.
        data = read_regular(self.run.fid_csv, self.limits.max_table_bytes)
        if data is None:
            return {"rows": [], "best_kimg": None,
                    "note": f"no readable {FID_CSV} in the run folder (a regular file, not a link): "
                            f"`ganflow evaluate --run-dir RUN --data DIR` writes it"}
        metrics = self._read_json(self.run.metrics)
        try:
            best = _finite(float(k)) if (k := (metrics.get("best") or {}).get("kimg")) is not None else None
            flagged = {float(k) for k in metrics.get("flagged") or {}}
            memorizing = {float(k) for k in metrics.get("memorizing") or {}}
        except (AttributeError, TypeError, ValueError):
            best, flagged, memorizing = None, set(), set()
        names = {s["name"] for s in self.list_snapshots()}
        try:
            history = parse_fid_csv(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, KeyError, csv.Error):  # hand-edited or half-written: say so
            return {"rows": [], "best_kimg": None,
                    "note": f"{FID_CSV} does not read (a cell is not a number, or it is not a CSV table)"}
        rows, left_out = [], 0
        scores = [c.name for c in registry.labelled()] if scores is None else scores
        for r in history:
            if r["kimg"] is None or not math.isfinite(r["kimg"]):
                left_out += 1  # a row without a kimg names no snapshot
                continue
            snap = f"{CHECKPOINTS}/{checkpoint_name(r['kimg'])}"
            rows.append({"kimg": r["kimg"], **{k: _finite(r.get(k)) for k in scores},
                         "snapshot": snap if snap in names else None,
                         "note": row_note(r["kimg"], best, flagged, memorizing)})
        note = f"{left_out} row(s) of {FID_CSV} without a kimg left out" if left_out else ""
        return {"rows": rows, "best_kimg": best, "note": note}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # JSON has no NaN


# ---------------------------------------------------------------------------------------------- HTTP
class PNGResponse(Response):
    media_type = "image/png"  # type: ignore[assignment]  # Starlette's way to set it


class GIFResponse(Response):
    media_type = "image/gif"  # type: ignore[assignment]  # Starlette's way to set it


WHY_422 = "a parameter out of range or not offered by this snapshot"
BAD: dict[int | str, dict[str, Any]] = {422: {"model": Problem, "description": WHY_422}}
# Image routes: a model would be documented under the route's image type; the 422 body is JSON.
BAD_IMAGE: dict[int | str, dict[str, Any]] = {
    422: {"description": WHY_422, "content": {"application/json": {"schema": Problem.model_json_schema()}}}}


async def input_error(_req: Request, e: InputError) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=422)


async def busy(_req: Request, e: Busy) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=e.status, headers={"Retry-After": str(e.retry_after)})


async def validation_error(_req: Request, e: RequestValidationError) -> JSONResponse:
    # One readable sentence for people (the page shows it), FastAPI's list for scripts.
    errors = jsonable_encoder(e.errors())
    parts = [f"{err['loc'][-1]}: {err['msg']}"
             + ("" if err["type"] == "missing" else f" (got {err.get('input')!r})") for err in errors]
    return JSONResponse({"detail": "; ".join(parts), "errors": errors}, status_code=422)


async def internal_error(_req: Request, e: Exception) -> JSONResponse:
    # A bug: the server's log has the traceback; the response says nothing about files, paths or contents.
    return JSONResponse({"detail": f"internal error ({type(e).__name__}); the server's log has the details"},
                        status_code=500)


ERROR_HANDLERS = {InputError: input_error, Busy: busy, RequestValidationError: validation_error,
                  Exception: internal_error}


async def check_host(request: Request, call_next):
    """Middleware: a Host that is not exactly an allowed name (and the served port, when the app knows it) is answered
    400 (a DNS-rebinding page); an Origin that is not exactly this server's 403 (another site's script, `null`).
    allowed_hosts None allows any. HEAD is answered as GET, without the body."""
    allowed, port, proxied = request.app.state.allowed_hosts, request.app.state.port, request.app.state.proxied
    if allowed is not None:
        raw = request.headers.get("host", "")
        parsed = parse_authority(raw)
        if parsed is None or not served_authority(parsed[0], parsed[1], allowed, port, proxied):
            shown = (parsed[0] if parsed else raw)[:100]
            return JSONResponse({"detail": f"Host {shown!r} is not served here: this server answers to "
                                           f"{sorted(allowed)}{f' on port {port}' if port else ''} "
                                           "(ganflow serve --allow-host NAME adds one)"}, status_code=400)
        origin = request.headers.get("origin")
        why = origin_refusal(origin, allowed, port, proxied) if origin is not None else None
        if why:
            return JSONResponse({"detail": f"cross-origin requests are not served ({why})"}, status_code=403)
    if request.method == "HEAD":  # FastAPI's GET routes do not answer HEAD: the GET's status and headers
        request.scope["method"] = "GET"
        response = await call_next(request)
        async for _ in response.body_iterator:
            pass
        return Response(status_code=response.status_code, headers=dict(response.headers))
    return await call_next(request)


async def served(request: Request) -> Explorer:
    """Dependency: the Explorer the request's app was created over."""
    return request.app.state.explorer


def attachment(kind: str, name: str) -> dict:
    return {"Content-Disposition": f'inline; filename="{name}.{kind}"'}  # a good name for "save as"


# Query parameters several routes take. Functions, not shared Query objects: FastAPI writes each parameter's name
# into its Query.
def snapshot_query():
    return Query(None, max_length=200,
                 description="snapshot name from /api/snapshots; default: best.pt, else the newest checkpoint")


def seed_query(limits: Limits):
    return Query(..., ge=0, le=limits.max_seed, description="latent seed")


def truncation_query(limits: Limits):
    return Query(1.0, ge=limits.min_truncation, le=limits.max_truncation, allow_inf_nan=False,
                 description="truncation psi (StyleGAN2): 1 = none, 0 = the average image")


def resolution_query():
    return Query(None, ge=1, le=1 << 16,
                 description="output side: one of /api/info's `resolutions` (default: its `default_resolution`)")


# What a run holds: the page, its snapshots, its training images (its FID table: table_routes). Parameters bounded by
# constants.
run_routes = APIRouter()


@run_routes.get("/", include_in_schema=False, response_class=HTMLResponse)
def page() -> str:
    return PAGE.read_text()


@run_routes.get("/api/snapshots", response_model=Snapshots, responses=BAD, summary="The snapshots that can be chosen")
def snapshots(explorer: Explorer = Depends(served)):
    return {"default": explorer.default_snapshot(),
            "snapshots": [{"name": s["name"], "kimg": s["kimg"]} for s in explorer.list_snapshots()]}


@run_routes.get("/api/info", response_model=Info, responses=BAD,
                summary="A snapshot's architecture, offered resolutions and the limits")
def info(snapshot: str | None = snapshot_query(), explorer: Explorer = Depends(served)):
    return explorer.info(snapshot)


@run_routes.get("/api/training-image.png", response_class=PNGResponse, responses=BAD_IMAGE,
                summary="A training image, by an id from /api/nearest")
def training_image(id: str = Query(..., max_length=500, description="an id from /api/nearest"),  # noqa: A002
                   explorer: Explorer = Depends(served)):
    return PNGResponse(to_png(explorer.training_image(id)), headers=attachment("png", Path(id).stem))


def table_routes() -> APIRouter:
    """The run's FID table and its columns: the metrics registered when the app is created (built per app, so a
    metric registered before then is in the responses and their documented schema)."""
    router = APIRouter()
    shown = registry.labelled()
    scores = [c.name for c in shown]  # the rows' keys stay those of the documented schema

    @router.get("/api/fid", response_model=fid_table_model(scores),
                summary="The run's FID table (RUN/fid.csv from `ganflow evaluate`)")
    def fid(explorer: Explorer = Depends(served)):
        return explorer.fid_table(scores)

    columns = {"columns": [{"name": c.name, "label": c.label, "fmt": c.fmt, "always": c.always} for c in shown]}

    @router.get("/api/fid/columns", response_model=FidColumns,
                summary="The FID table's score columns, in order: title, number format, shown when empty or not")
    def fid_columns():
        return columns

    return router


def generation_routes(limits: Limits) -> APIRouter:
    """What the generator draws (images, neighbour grids, morphs, and the training images nearest one): heavy
    requests, whose parameters are bounded by `limits` (an app's own, so they are built per app)."""
    router = APIRouter()

    @router.get("/api/image.png", response_class=PNGResponse, responses=BAD_IMAGE, summary="One seed's image")
    def image(seed: int = seed_query(limits), truncation: float = truncation_query(limits),
              resolution: int | None = resolution_query(), snapshot: str | None = snapshot_query(),
              explorer: Explorer = Depends(served)):
        img = explorer.image(snapshot, seed, truncation, resolution)
        return PNGResponse(to_png(img), headers=attachment("png", f"seed{seed:04d}-{img.shape[0]}px"))

    @router.get("/api/neighbours.png", response_class=PNGResponse, responses=BAD_IMAGE,
                summary="A grid: the seed's image first, then latents around it")
    def neighbours(seed: int = seed_query(limits),
                   count: int = Query(9, ge=1, le=limits.max_grid, description="images in the grid"),
                   spread: float = Query(0.3, ge=0.0, le=limits.max_spread, allow_inf_nan=False,
                                         description="distance from the seed's latent (0 = the same image)"),
                   truncation: float = truncation_query(limits), resolution: int | None = resolution_query(),
                   snapshot: str | None = snapshot_query(), explorer: Explorer = Depends(served)):
        png = to_png(explorer.neighbours(snapshot, seed, count, spread, truncation, resolution))
        return PNGResponse(png, headers=attachment("png", f"seed{seed:04d}-neighbours"))

    @router.get("/api/morph.gif", response_class=GIFResponse, responses=BAD_IMAGE,
                summary="A looping morph seed_a → seed_b → seed_a, as an animated GIF")
    def morph(seed_a: int = seed_query(limits), seed_b: int = seed_query(limits),
              frames: int = Query(24, ge=2, le=limits.max_frames, description="frames in the whole loop"),
              fps: float = Query(12.0, ge=limits.min_fps, le=limits.max_fps, allow_inf_nan=False,
                                 description="frames per second"),
              truncation: float = truncation_query(limits), resolution: int | None = resolution_query(),
              snapshot: str | None = snapshot_query(), explorer: Explorer = Depends(served)):
        video = explorer.morph(snapshot, [seed_a, seed_b], frames, truncation, resolution)
        return GIFResponse(to_gif(video, fps), headers=attachment("gif", f"morph-{seed_a}-{seed_b}"))

    @router.get("/api/nearest", response_model=Nearest, responses=BAD,
                summary="The training images nearest a seed's image, with distances (needs `ganflow serve --data`)")
    def nearest(seed: int = seed_query(limits), truncation: float = truncation_query(limits),
                count: int = Query(3, ge=1, le=limits.max_nearest, description="training images"),
                snapshot: str | None = snapshot_query(), explorer: Explorer = Depends(served)):
        return explorer.nearest_training(snapshot, seed, truncation, count)

    return router


def create_app(explorer: Explorer, hosts: frozenset[str] | set[str] | None = None, port: int | None = None,
               proxied: frozenset[str] | set[str] = frozenset()) -> FastAPI:
    """The FastAPI app: GET / (the page) and GET /api/... (JSON, PNG, GIF), documented at /docs.

    `hosts`: the names a request's Host (and Origin, when sent) may carry, from allowed_hosts(); anything else is
    answered 400 (a DNS-rebinding page) or 403 (another site's script). None checks nothing: for an app mounted
    behind a server that checks Host itself. `port`: the port they must name; `proxied`: names (--allow-host, a
    reverse proxy's) also answered on their scheme's default port and over https. `ganflow serve` passes them all."""
    app = FastAPI(title="ganflow serve", version="1",
                  description="Images, neighbour grids and morphs from a trained ganflow snapshot, and its run's "
                              "FID table. Every image endpoint takes `snapshot` (a name from /api/snapshots).")
    app.state.explorer = explorer  # for the routes (served), and whoever embeds the app: snapshots, limits, gate
    app.state.allowed_hosts = None if hosts is None or "*" in hosts else frozenset(hosts)
    app.state.port = port  # the port Host and Origin must name (None: any, for an app mounted elsewhere)
    app.state.proxied = frozenset(host_of(h) for h in proxied)
    for error, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(error, handler)  # type: ignore[arg-type]  # each takes its own exception type
    app.middleware("http")(check_host)
    app.include_router(run_routes)
    app.include_router(table_routes())
    app.include_router(generation_routes(explorer.limits))
    return app
