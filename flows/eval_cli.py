"""`ganflow fid`, `ganflow evaluate`, `ganflow generate` and `ganflow morph`: metrics and images from snapshots."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import nullcontext

from flows.cli.options import add_params_option, add_setting_options, given_settings
from flows.cli.validate import (MAX_SEEDS, existing_folder, integer, number, seeds, torch_device,
                                run_folder, snapshot_source, writable_file, writable_folder)
from tasks.common.settings import EvaluateSettings
from tasks.storage.mirror import open_run, open_snapshot, publish
from tasks.storage.url import is_url
from tasks.training.lease import run_dir_lease

MAX_SIDE = 4096       # largest output side generate/morph draw (resampled beyond the snapshot's own)
MAX_FRAMES = 3600     # frames in one morph (all are kept in memory to write the file)

EVALUATE_METAVARS = {"inception_weights": "W", "dinov2_weights": "W", "inception_sha256": "SHA256",
                     "dinov2_sha256": "SHA256", "n_fake": "N", "n_real": "N", "batch": "N", "kid": "BOOL",
                     "kid_subsets": "N", "kid_subset_size": "N", "cache_dir": "DIR", "diverge_fid_rises": "N",
                     "diverge_d_loss": "X", "metrics": "LIST", "memorized_quantile": "Q", "max_memorized": "X"}
# The `evaluate` settings `ganflow fid` takes (its --cache-dir is its own: no cache unless given). KID only when
# asked: a folder comparison is FID's, and `ganflow fid A B` has always printed FID alone.
FID_SETTINGS = ["inception_weights", "metrics", "dinov2_weights", "kid", "kid_subsets", "kid_subset_size"]
FID_DEFAULTS = {"kid": False}


def _settings(args: argparse.Namespace, names: list[str] | None = None) -> EvaluateSettings:
    """params.yaml's evaluate section with the settings given on the command line (those in `names`, default all;
    validated: ParamsError)."""
    from tasks.common.settings import load

    given = given_settings(args, EvaluateSettings)
    return load(EvaluateSettings, args.params, **{k: v for k, v in given.items() if names is None or k in names})


def _add_fid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fid", help="FID (and KID) between two folders of images, as JSON",
                       description="FID between DIR_A (reals: a folder of images or a curated dataset; its "
                                   "statistics are cached with --cache-dir) and DIR_B (a folder of images), with "
                                   "torch-fidelity's InceptionV3 extractor, and/or FD-DINOv2 (--metrics fd_dinov2); "
                                   "precision and recall (k=3) beside them. Prints JSON.")
    p.add_argument("dir_a", metavar="DIR_A")
    p.add_argument("dir_b", metavar="DIR_B")
    # From tasks.common.settings.EvaluateSettings, as `ganflow evaluate`'s. A given --inception-weights or
    # --dinov2-weights comes before $GANFLOW_INCEPTION_WEIGHTS / $GANFLOW_DINOV2_WEIGHTS, then params.yaml's.
    add_setting_options(p, EvaluateSettings, FID_SETTINGS, metavars=EVALUATE_METAVARS, defaults=FID_DEFAULTS,
                        switches=True)  # `fid --kid A B`: --kid takes no value here
    p.add_argument("--cache-dir", metavar="DIR", type=writable_folder,
                   help="cache DIR_A's statistics here (keyed by content and weights)")
    add_params_option(p)
    p.add_argument("--device", default="cpu", type=torch_device, help="torch device (default cpu)")
    p.set_defaults(func=_run_fid)


def _run_fid(args: argparse.Namespace) -> int:
    from tasks.evaluation.evaluate import resolve_weight_paths
    from tasks.evaluation.metrics import fid_folders

    ep = _settings(args, FID_SETTINGS)
    weights, dinov2 = resolve_weight_paths(ep, args.inception_weights, args.dinov2_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N note goes into the JSON and to stderr below
        out = fid_folders(args.dir_a, args.dir_b, weights, with_kid=ep.kid, cache_dir=args.cache_dir,
                          sha256=ep.inception_sha256 or None, batch=ep.batch, kid_subsets=ep.kid_subsets,
                          kid_subset_size=ep.kid_subset_size, device=args.device, metrics=ep.metrics,
                          dinov2_weights=dinov2, dinov2_sha256=ep.dinov2_sha256 or None)
    for note in (out.get("warning"), out.get("extractor")):
        if note:
            print(f"ganflow fid: note: {note}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="images from chosen seeds of a snapshot (PNGs + a grid)",
                       description="Write OUT/seed<NNNN>.png for every seed and OUT/grid.png, from a snapshot's "
                                   "G_ema (a checkpoint or best.pt). The same seed always gives the same file.")
    p.add_argument("--snapshot", required=True, metavar="CKPT", type=snapshot_source,
                   help="RUN/checkpoints/ckpt-<kimg>.pt or RUN/best.pt")
    p.add_argument("--seeds", required=True, metavar="SEEDS", type=seeds,
                   help=f"a range (0-63), a list (1,5,9) or both; at most {MAX_SEEDS:,} seeds")
    p.add_argument("--trunc", type=number(0, 2), default=1.0, metavar="PSI",
                   help="truncation psi (StyleGAN2), 0 to 2: 1 = none, 0.7 = closer to the average image (default 1)")
    p.add_argument("--resolution", type=integer(4, MAX_SIDE), metavar="N",
                   help=f"output side, 4 to {MAX_SIDE} (default: the snapshot's)")
    p.add_argument("--out", required=True, metavar="DIR", type=writable_folder, help="output folder")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from tasks.serving.generation import write_seed_images
    from tasks.common.outdir import check_generated_dir

    check_generated_dir(args.out, "--out")  # never overwrite someone else's grid.png
    out = write_seed_images(open_snapshot(args.snapshot), args.seeds, args.out, truncation_psi=args.trunc,
                            resolution=args.resolution)
    print(f"{len(out['images'])} images ({out['resolution']}², {out['arch']}) in {args.out}; grid: {out['grid']}")
    return 0


def _add_morph(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("morph", help="a looping morph animation between seeds (GIF or MP4)",
                       description="Interpolate seeds[0] → seeds[1] → ... → seeds[0]: linear in W for StyleGAN2, "
                                   "slerp in Z for PGGAN. .gif is written with Pillow; .mp4 needs OpenCV's encoder.")
    p.add_argument("--snapshot", required=True, metavar="CKPT", type=snapshot_source,
                   help="RUN/checkpoints/ckpt-<kimg>.pt or RUN/best.pt")
    p.add_argument("--seeds", required=True, metavar="SEEDS", type=seeds, help="at least two seeds, e.g. 1,5,9")
    p.add_argument("--frames", type=integer(2, MAX_FRAMES), default=60,
                   help=f"frames in the whole loop, 2 to {MAX_FRAMES} (default 60)")
    p.add_argument("--fps", type=number(0.5, 120), default=30.0, help="frames per second, 0.5 to 120 (default 30)")
    p.add_argument("--trunc", type=number(0, 2), default=1.0, metavar="PSI", help="truncation psi, 0 to 2 (default 1)")
    p.add_argument("--resolution", type=integer(4, MAX_SIDE), metavar="N",
                   help=f"frame side, 4 to {MAX_SIDE} (default: the snapshot's)")
    p.add_argument("--out", required=True, metavar="FILE", type=writable_file, help="morph.gif or morph.mp4")
    p.set_defaults(func=_run_morph)


def _run_morph(args: argparse.Namespace) -> int:
    from tasks.serving.generation import write_morph

    if len(args.seeds) < 2:
        raise ValueError(f"--seeds {','.join(map(str, args.seeds))}: a morph needs at least 2 seeds, e.g. 1,5,9")
    if args.frames < len(args.seeds):
        raise ValueError(f"--frames {args.frames}: a morph through {len(args.seeds)} seeds needs at least "
                         f"{len(args.seeds)} frames")
    from tasks.common.outdir import check_morph_file

    check_morph_file(args.out, "--out")  # never overwrite someone else's file
    out = write_morph(open_snapshot(args.snapshot), args.seeds, args.frames, args.out, fps=args.fps,
                      truncation_psi=args.trunc, resolution=args.resolution)
    print(f"{out['frames']} frames looping through seeds {out['seeds']} → {out['out']}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="FID/KID of every snapshot of a run not evaluated yet; best snapshot → best.pt",
                       description="Evaluate each RUN/checkpoints/ckpt-*.pt that RUN/fid.csv has no row for, against "
                                   "the real statistics of DIR (cached), then write RUN/fid.csv (kimg, fid, kid, "
                                   "fd_dinov2, precision, recall, memorized), RUN/metrics.json (latest, best, flagged, "
                                   "memorizing) and RUN/best.pt (G_ema of the lowest-FID snapshot not flagged as "
                                   "diverged or memorizing).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", metavar="R", type=run_folder,
                     help="run folder (checkpoints/ inside; fid.csv, metrics.json and best.pt are written there)")
    src.add_argument("--snapshot", metavar="FILE", type=snapshot_source,
                     help="one network file instead (a checkpoint, best.pt or a `ganflow import`ed network): its "
                          "FID/KID as JSON, no run files")
    p.add_argument("--data", required=True, metavar="DIR", type=existing_folder,
                   help="curated dataset (or a folder of real images)")
    # One option per setting of params.yaml's `evaluate` section, from tasks.common.settings.EvaluateSettings. A given
    # --inception-weights or --dinov2-weights comes before $GANFLOW_INCEPTION_WEIGHTS / $GANFLOW_DINOV2_WEIGHTS,
    # which come before params.yaml's.
    add_setting_options(p, EvaluateSettings, metavars=EVALUATE_METAVARS)
    add_params_option(p)
    p.add_argument("--device", default="cpu", type=torch_device, help="torch device (default cpu)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from tasks.evaluation.evaluate import evaluate_run, fid_table_rows, progress_line, resolve_weight_paths
    from tasks.evaluation.fid_table import read_fid_csv

    ep = _settings(args)
    weights, dinov2 = resolve_weight_paths(ep, args.inception_weights, args.dinov2_weights)

    if args.snapshot:
        from tasks.evaluation.evaluate import evaluate_snapshot

        print(json.dumps(evaluate_snapshot(open_snapshot(args.snapshot), args.data, weights, ep, device=args.device,
                                            dinov2_weights=dinov2), indent=2))
        return 0

    def progress(m: dict) -> None:
        print(progress_line(m), file=sys.stderr)

    def warn(message: str) -> None:
        print(f"ganflow evaluate: warning: {message}", file=sys.stderr)

    # A run URL: evaluated in its local cache with every published checkpoint, its results published back, under
    # the run's lease (two writers of one manifest would drop each other's files).
    with run_dir_lease(args.run_dir, command="ganflow evaluate") if is_url(args.run_dir) else nullcontext():
        run_dir = open_run(args.run_dir, checkpoints="all")
        summary = evaluate_run(run_dir, args.data, weights, ep, device=args.device, progress=progress, warn=warn,
                               dinov2_weights=dinov2)
        publish(run_dir, final=True)
    best = summary.best.kimg if summary.best else None
    table = fid_table_rows(read_fid_csv(run_dir), summary.flagged, best, summary.memorizing)
    if table:
        print(" ".join(f"{c:>10}" for c in table[0]), file=sys.stderr)
        for r in table:
            print(" ".join(f"{v:>10}" for v in r.values()).rstrip(), file=sys.stderr)
    for note in (summary.warning, summary.extractor):
        if note:
            print(f"ganflow evaluate: note: {note}", file=sys.stderr)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    _add_fid(sub)
    _add_evaluate(sub)
    _add_generate(sub)
    _add_morph(sub)
