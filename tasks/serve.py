"""`ganflow serve`: one local web page, and the JSON/PNG API under it, to explore a trained generator.

Two layers. Explorer is plain Python (testable without HTTP): which snapshots may be chosen (only files under the
run folder, found by listing it), which resolutions a snapshot offers (a PGGAN's grown stages, resampled sizes for
StyleGAN2), the checks on every input, and the images (seeds, neighbour grids, morphs) through models.generate.
create_app() puts FastAPI over it: every bad input is a 422 with a sentence saying what to change, and the caps in
Limits bound the work any one request can ask for. No Prefect here: serving is a view on a run, not a pipeline step.
"""
from __future__ import annotations

import io
import json
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.checkpoint import CKPT_DIR, list_checkpoints
from models.generate import (grid, images_from_seeds, images_from_z, interpolation_frames, load_generator,
                             neighbour_latents, save_gif)
from tasks.fid_table import BEST, FID_CSV, METRICS_JSON, read_fid_csv, row_note

PAGE = Path(__file__).with_name("serve_page.html")


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
    cached_generators: int = 2             # snapshots kept loaded


class InputError(ValueError):
    """A request asked for something this snapshot or the limits do not allow (HTTP 422)."""


def offered_resolutions(arch: dict, limits: Limits = Limits()) -> list[int]:
    """The sizes a snapshot can be drawn at: each stage a PGGAN has grown (drawn by that stage's own layers,
    not resampled), or the native size of a StyleGAN2 and its powers-of-two multiples within the limits."""
    native = int(arch["net"]["resolution"])
    if arch["name"] == "pggan":
        from models.pggan import resolution_stage, stage_resolution

        stage = int(arch.get("stage", resolution_stage(native)))
        return [stage_resolution(s) for s in range(stage + 1)]
    sizes = {native} | {int(native * 2.0 ** k) for k in range(-6, 7)
                        if limits.min_resampled <= native * 2.0 ** k <= limits.max_resolution}
    return sorted(sizes)


def default_resolution(arch: dict, limits: Limits = Limits()) -> int:
    """What the snapshot draws without resampling: a PGGAN's current stage, a StyleGAN2's native size."""
    return offered_resolutions(arch, limits)[-1] if arch["name"] == "pggan" else int(arch["net"]["resolution"])


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
    so a request can reach no other file. Generation holds a lock: one generator call at a time keeps each call's
    latency bounded on a few shared cores, and a loaded network is not run by two threads at once.
    """

    def __init__(self, snapshot: str | Path | None = None, run_dir: str | Path | None = None,
                 limits: Limits = Limits(), device: str = "cpu") -> None:
        if (snapshot is None) == (run_dir is None):
            raise ValueError("give either a snapshot file or a run folder, not both (nor neither)")
        self.limits, self.device = limits, device
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[Path, float], tuple] = OrderedDict()
        if run_dir is not None:
            self.root, self.fixed = Path(run_dir).resolve(), None
            if not self.root.is_dir():
                raise FileNotFoundError(f"run folder {run_dir} does not exist")
            if not self.list_snapshots():
                raise FileNotFoundError(f"{run_dir} has no {BEST} nor {CKPT_DIR}/ckpt-*.pt: train (and evaluate) first")
        else:
            self.fixed = Path(snapshot).resolve()
            if not self.fixed.is_file():
                raise FileNotFoundError(f"snapshot {snapshot} does not exist")
            # RUN/best.pt or RUN/checkpoints/ckpt-*.pt: its run's fid.csv is the table to show
            self.root = self.fixed.parent.parent if self.fixed.parent.name == CKPT_DIR else self.fixed.parent

    # ------------------------------------------------------------------ which snapshots
    def list_snapshots(self) -> list[dict]:
        """[{name, kimg, path}], best.pt first, then checkpoints oldest first. Read afresh each time: a run still
        training or being evaluated gains snapshots while it is served. A file that resolves outside the run folder
        (a symlink) is left out."""
        if self.fixed is not None:
            return [{"name": self.fixed.name, "kimg": None, "path": self.fixed}]
        found = []
        best = self.root / BEST
        if best.is_file():
            found.append({"name": BEST, "kimg": self._best_kimg(), "path": best})
        found += [{"name": f"{CKPT_DIR}/{p.name}", "kimg": kimg, "path": p} for kimg, p in list_checkpoints(self.root)]
        return [s for s in found if s["path"].resolve().is_relative_to(self.root)]

    def _best_kimg(self) -> float | None:
        try:
            return float(json.loads((self.root / METRICS_JSON).read_text())["best"]["kimg"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def default_snapshot(self) -> str:
        names = [s["name"] for s in self.list_snapshots()]
        if not names:
            raise InputError(f"{self.root} has no snapshot any more")
        return BEST if BEST in names else names[-1]  # the best by FID, else the newest

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
        try:
            key = (path, path.stat().st_mtime)
        except OSError:  # deleted since it was listed
            raise InputError(f"snapshot {name!r} is gone: GET /api/snapshots for those there now") from None
        with self._lock:
            if key not in self._loaded:
                try:
                    G, arch = load_generator(path)
                except Exception as e:  # weights_only refuses pickled code; a torn file fails in zipfile
                    raise InputError(f"snapshot {name!r} does not load: {type(e).__name__}: {str(e)[:300]}") from None
                self._loaded[key] = (G.to(self.device), arch)
                while len(self._loaded) > self.limits.cached_generators:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            G, arch = self._loaded[key]
        return name, G, arch

    # ------------------------------------------------------------------ checks
    def check(self, name: str, arch: dict, truncation: float, resolution: int | None, images: int) -> int:
        """The resolution to draw at, after checking the request against this snapshot and the limits."""
        offered = offered_resolutions(arch, self.limits)
        resolution = resolution or default_resolution(arch, self.limits)
        if resolution not in offered:
            what = "the stages this PGGAN has grown" if arch["name"] == "pggan" else "resampled sizes"
            raise InputError(f"resolution {resolution} is not offered by {name} ({arch['name']}): choose one of "
                             f"{offered} ({what})")
        if arch["name"] == "pggan" and truncation != 1.0:
            raise InputError(f"{name} is a PGGAN, which has no truncation: leave truncation at 1 (got {truncation:g})")
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
        with self._lock:
            return images_from_seeds(G, arch, [seed], truncation, resolution, batch=1)[0]

    def neighbours(self, name: str | None, seed: int, count: int, spread: float, truncation: float = 1.0,
                   resolution: int | None = None) -> Image.Image:
        """A grid of `count` images: the seed's own first, then latents around it
        (models.generate.neighbour_latents)."""
        name, G, arch = self.generator(name)
        resolution = self.check(name, arch, truncation, resolution, count)
        z = neighbour_latents(seed, count, arch["net"]["z_dim"], spread)
        with self._lock:
            images = images_from_z(G, arch, z, truncation, resolution, batch=count)
        return grid(images)

    def morph(self, name: str | None, seeds: list[int], frames: int, truncation: float = 1.0,
              resolution: int | None = None) -> np.ndarray:
        """A loop seeds[0] → seeds[1] → ... → seeds[0] of `frames` frames (as `ganflow morph`)."""
        name, G, arch = self.generator(name)
        resolution = self.check(name, arch, truncation, resolution, frames)
        if frames < len(seeds):
            raise InputError(f"a morph through {len(seeds)} seeds needs at least {len(seeds)} frames (got {frames})")
        with self._lock:
            return interpolation_frames(G, arch, seeds, frames, truncation, resolution)

    # ------------------------------------------------------------------ what the page shows
    def info(self, name: str | None) -> dict:
        name, _G, arch = self.generator(name)
        return {"snapshot": name, "kimg": self.resolve(name)["kimg"], "arch": arch["name"],
                "native_resolution": int(arch["net"]["resolution"]),
                "resolutions": offered_resolutions(arch, self.limits),
                "default_resolution": default_resolution(arch, self.limits),
                "truncation": arch["name"] != "pggan",
                "stage": arch.get("stage"), "alpha": arch.get("alpha"),
                "limits": asdict(self.limits)}

    def fid_table(self) -> dict:
        """RUN/fid.csv (as `ganflow evaluate` writes it) with each row's snapshot name and note (best, diverged)."""
        from models.checkpoint import checkpoint_name

        path = self.root / FID_CSV
        if not path.is_file():
            return {"rows": [], "best_kimg": None,
                    "note": f"no {FID_CSV} in {self.root}: `ganflow evaluate --run-dir {self.root} --data DIR` "
                            f"writes it"}
        try:
            metrics = json.loads((self.root / METRICS_JSON).read_text())
        except (OSError, ValueError):
            metrics = {}
        best = (metrics.get("best") or {}).get("kimg")
        flagged = {float(k) for k in metrics.get("flagged") or {}}
        names = {s["name"] for s in self.list_snapshots()}
        try:
            history = read_fid_csv(self.root)
        except (OSError, ValueError, KeyError) as e:  # a hand-edited or half-written file: say so, serve the rest
            return {"rows": [], "best_kimg": None, "note": f"{path} does not read: {type(e).__name__}: {e}"}
        rows = []
        for r in history:
            snap = f"{CKPT_DIR}/{checkpoint_name(r['kimg'])}"
            rows.append({"kimg": r["kimg"], "fid": _finite(r["fid"]), "kid": _finite(r["kid"]),
                         "snapshot": snap if snap in names else None,
                         "note": row_note(r["kimg"], best, flagged)})
        return {"rows": rows, "best_kimg": best, "note": ""}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # JSON has no NaN


# ---------------------------------------------------------------------------------------------- HTTP
def create_app(explorer: Explorer):
    """The FastAPI app: GET / (the page) and GET /api/... (JSON, PNG, GIF), documented at /docs."""
    from fastapi import FastAPI, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel

    L = explorer.limits

    class Problem(BaseModel):
        detail: str                              # what was wrong and what to send instead
        errors: list[dict] | None = None         # FastAPI's per-parameter errors, when the parameters did not parse

    class Snapshot(BaseModel):
        name: str
        kimg: float | None

    class Snapshots(BaseModel):
        default: str
        snapshots: list[Snapshot]

    class Info(BaseModel):
        snapshot: str
        kimg: float | None
        arch: str
        native_resolution: int
        resolutions: list[int]
        default_resolution: int
        truncation: bool                         # whether truncation applies (StyleGAN2) or must stay 1 (PGGAN)
        stage: int | None
        alpha: float | None
        limits: dict

    class FidRow(BaseModel):
        kimg: float
        fid: float | None
        kid: float | None
        snapshot: str | None                     # its checkpoint's name, while that file exists
        note: str

    class FidTable(BaseModel):
        rows: list[FidRow]
        best_kimg: float | None
        note: str

    class PNG(Response):
        media_type = "image/png"

    class GIF(Response):
        media_type = "image/gif"

    why = "a parameter out of range or not offered by this snapshot"
    bad = {422: {"model": Problem, "description": why}}
    # Image routes: a model would be documented under the route's image type; the 422 body is JSON.
    bad_image = {422: {"description": why, "content": {"application/json": {"schema": Problem.model_json_schema()}}}}
    app = FastAPI(title="ganflow serve", version="1",
                  description="Images, neighbour grids and morphs from a trained ganflow snapshot, and its run's "
                              "FID table. Every image endpoint takes `snapshot` (a name from /api/snapshots).")

    @app.exception_handler(InputError)
    async def _input_error(_req: Request, e: InputError):
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, e: RequestValidationError):
        # One readable sentence for people (the page shows it), FastAPI's list for scripts.
        errors = jsonable_encoder(e.errors())
        parts = [f"{err['loc'][-1]}: {err['msg']}"
                 + ("" if err["type"] == "missing" else f" (got {err.get('input')!r})") for err in errors]
        return JSONResponse({"detail": "; ".join(parts), "errors": errors}, status_code=422)

    # Functions, not shared Query objects: FastAPI writes each parameter's name into its Query.
    def Snap():
        return Query(None, max_length=200,
                     description="snapshot name from /api/snapshots; default: best.pt, else the newest checkpoint")

    def Seed():
        return Query(..., ge=0, le=L.max_seed, description="latent seed")

    def Trunc():
        return Query(1.0, ge=L.min_truncation, le=L.max_truncation, allow_inf_nan=False,
                     description="truncation psi (StyleGAN2): 1 = none, 0 = the average image")

    def Res():
        return Query(None, ge=1, le=1 << 16,
                     description="output side: one of /api/info's `resolutions` (default: its `default_resolution`)")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/snapshots", response_model=Snapshots, responses=bad, summary="The snapshots that can be chosen")
    def snapshots():
        return {"default": explorer.default_snapshot(),
                "snapshots": [{"name": s["name"], "kimg": s["kimg"]} for s in explorer.list_snapshots()]}

    @app.get("/api/info", response_model=Info, responses=bad,
             summary="A snapshot's architecture, offered resolutions and the limits")
    def info(snapshot: str | None = Snap()):
        return explorer.info(snapshot)

    def attachment(kind: str, name: str) -> dict:
        return {"Content-Disposition": f'inline; filename="{name}.{kind}"'}  # a good name for "save as"

    @app.get("/api/image.png", response_class=PNG, responses=bad_image, summary="One seed's image")
    def image(seed: int = Seed(), truncation: float = Trunc(), resolution: int | None = Res(),
              snapshot: str | None = Snap()):
        img = explorer.image(snapshot, seed, truncation, resolution)
        return PNG(to_png(img), headers=attachment("png", f"seed{seed:04d}-{img.shape[0]}px"))

    @app.get("/api/neighbours.png", response_class=PNG, responses=bad_image,
             summary="A grid: the seed's image first, then latents around it")
    def neighbours(seed: int = Seed(), count: int = Query(9, ge=1, le=L.max_grid, description="images in the grid"),
                   spread: float = Query(0.3, ge=0.0, le=L.max_spread, allow_inf_nan=False,
                                         description="distance from the seed's latent (0 = the same image)"),
                   truncation: float = Trunc(), resolution: int | None = Res(), snapshot: str | None = Snap()):
        png = to_png(explorer.neighbours(snapshot, seed, count, spread, truncation, resolution))
        return PNG(png, headers=attachment("png", f"seed{seed:04d}-neighbours"))

    @app.get("/api/morph.gif", response_class=GIF, responses=bad_image,
             summary="A looping morph seed_a → seed_b → seed_a, as an animated GIF")
    def morph(seed_a: int = Seed(), seed_b: int = Seed(),
              frames: int = Query(24, ge=2, le=L.max_frames, description="frames in the whole loop"),
              fps: float = Query(12.0, ge=L.min_fps, le=L.max_fps, allow_inf_nan=False,
                               description="frames per second"),
              truncation: float = Trunc(), resolution: int | None = Res(), snapshot: str | None = Snap()):
        video = explorer.morph(snapshot, [seed_a, seed_b], frames, truncation, resolution)
        return GIF(to_gif(video, fps), headers=attachment("gif", f"morph-{seed_a}-{seed_b}"))

    @app.get("/api/fid", response_model=FidTable, summary="The run's FID table (RUN/fid.csv from `ganflow evaluate`)")
    def fid():
        return explorer.fid_table()

    return app
