"""`ganflow fid`, `ganflow evaluate`, `ganflow generate` and `ganflow morph`: metrics and images from snapshots."""
from __future__ import annotations

import argparse
import json
import sys
import warnings


def _weights_help() -> str:
    return ("torch-fidelity's InceptionV3 weights file (weights-inception-2015-12-05-6726825d.pth); "
            "default: $GANFLOW_INCEPTION_WEIGHTS, then params.yaml evaluate.inception_weights")


def _add_fid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fid", help="FID (and KID) between two folders of images, as JSON",
                       description="FID between DIR_A (reals: a folder of images or a curated dataset; its "
                                   "statistics are cached with --cache-dir) and DIR_B (a folder of images), with "
                                   "torch-fidelity's InceptionV3 extractor. Prints JSON.")
    p.add_argument("dir_a", metavar="DIR_A")
    p.add_argument("dir_b", metavar="DIR_B")
    p.add_argument("--inception-weights", metavar="W", help=_weights_help())
    p.add_argument("--kid", action="store_true", help="also KID (kid_mean, kid_std)")
    p.add_argument("--kid-subsets", type=int, help="KID subsets (default: params.yaml, 100)")
    p.add_argument("--kid-subset-size", type=int, help="KID subset size, capped at the image count (default 1000)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache DIR_A's statistics here (keyed by content and weights)")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_run_fid)


def _run_fid(args: argparse.Namespace) -> int:
    from tasks.evaluate import evaluate_params
    from tasks.metrics import fid_folders, resolve_weights

    ep = evaluate_params(args.params)
    weights = resolve_weights(args.inception_weights, ep.inception_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N note goes into the JSON and to stderr below
        out = fid_folders(args.dir_a, args.dir_b, weights, with_kid=args.kid, cache_dir=args.cache_dir,
                          sha256=ep.inception_sha256 or None, batch=ep.batch,
                          kid_subsets=args.kid_subsets or ep.kid_subsets,
                          kid_subset_size=args.kid_subset_size or ep.kid_subset_size, device=args.device)
    if out.get("warning"):
        print(f"ganflow fid: note: {out['warning']}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="images from chosen seeds of a snapshot (PNGs + a grid)",
                       description="Write OUT/seed<NNNN>.png for every seed and OUT/grid.png, from a snapshot's "
                                   "G_ema (a checkpoint or best.pt). The same seed always gives the same file.")
    p.add_argument("--snapshot", required=True, metavar="CKPT", help="RUN/checkpoints/ckpt-<kimg>.pt or RUN/best.pt")
    p.add_argument("--seeds", required=True, metavar="SEEDS", help="a range (0-63), a list (1,5,9) or both")
    p.add_argument("--trunc", type=float, default=1.0, metavar="PSI",
                   help="truncation psi (StyleGAN2): 1 = none, 0.7 = closer to the average image (default 1)")
    p.add_argument("--resolution", type=int, metavar="N", help="output side (default: the snapshot's)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from tasks.generation import parse_seeds, write_seed_images

    out = write_seed_images(args.snapshot, parse_seeds(args.seeds), args.out, truncation_psi=args.trunc,
                            resolution=args.resolution)
    print(f"{len(out['images'])} images ({out['resolution']}², {out['arch']}) in {args.out}; grid: {out['grid']}")
    return 0


def _add_morph(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("morph", help="a looping morph animation between seeds (GIF or MP4)",
                       description="Interpolate seeds[0] → seeds[1] → ... → seeds[0]: linear in W for StyleGAN2, "
                                   "slerp in Z for PGGAN. .gif is written with Pillow; .mp4 needs OpenCV's encoder.")
    p.add_argument("--snapshot", required=True, metavar="CKPT", help="RUN/checkpoints/ckpt-<kimg>.pt or RUN/best.pt")
    p.add_argument("--seeds", required=True, metavar="SEEDS", help="at least two seeds, e.g. 1,5,9")
    p.add_argument("--frames", type=int, default=60, help="frames in the whole loop (default 60)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    p.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi (default 1)")
    p.add_argument("--resolution", type=int, metavar="N", help="frame side (default: the snapshot's)")
    p.add_argument("--out", required=True, metavar="FILE", help="morph.gif or morph.mp4")
    p.set_defaults(func=_run_morph)


def _run_morph(args: argparse.Namespace) -> int:
    from tasks.generation import parse_seeds, write_morph

    out = write_morph(args.snapshot, parse_seeds(args.seeds), args.frames, args.out, fps=args.fps,
                      truncation_psi=args.trunc, resolution=args.resolution)
    print(f"{out['frames']} frames looping through seeds {out['seeds']} → {out['out']}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="FID/KID of every snapshot of a run not evaluated yet; best snapshot → best.pt",
                       description="Evaluate each RUN/checkpoints/ckpt-*.pt that RUN/fid.csv has no row for, against "
                                   "the real statistics of DIR (cached), then write RUN/fid.csv (kimg, fid, kid), "
                                   "RUN/metrics.json (latest, best, flagged) and RUN/best.pt (G_ema of the lowest-FID "
                                   "snapshot not flagged as diverged).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", metavar="R", help="run folder (checkpoints/ inside)")
    src.add_argument("--snapshot", metavar="FILE", help="one network file instead (a checkpoint, best.pt or a "
                                                        "`ganflow import`ed network): its FID/KID as JSON, no run files")
    p.add_argument("--data", required=True, metavar="DIR", help="curated dataset (or a folder of real images)")
    p.add_argument("--inception-weights", metavar="W", help=_weights_help())
    p.add_argument("--n-fake", type=int, help="generated images per snapshot (default: params.yaml evaluate.n_fake)")
    p.add_argument("--no-kid", action="store_true", help="FID only")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from tasks.evaluate import evaluate_params, evaluate_run
    from tasks.metrics import resolve_weights

    ep = evaluate_params(args.params)
    ep = dataclasses.replace(ep, n_fake=args.n_fake or ep.n_fake, kid=ep.kid and not args.no_kid)
    weights = resolve_weights(args.inception_weights, ep.inception_weights)

    if args.snapshot:
        from tasks.evaluate import evaluate_snapshot

        print(json.dumps(evaluate_snapshot(args.snapshot, args.data, weights, ep, device=args.device), indent=2))
        return 0

    def progress(m: dict) -> None:
        kid = f", KID {m['kid_mean']:.5f}" if "kid_mean" in m else ""
        print(f"{m['kimg']:g} kimg: FID {m['fid']:.4f}{kid}", file=sys.stderr)

    out = evaluate_run(args.run_dir, args.data, weights, ep, device=args.device, progress=progress)
    from tasks.fid_table import read_fid_csv, row_note

    flagged, best = {float(k) for k in out["flagged"]}, (out.get("best") or {}).get("kimg")
    print(f"{'kimg':>10} {'FID':>12} {'KID':>10}", file=sys.stderr)
    for r in read_fid_csv(args.run_dir):
        note = row_note(r["kimg"], best, flagged)
        note = f" {note}" if note else ""
        kid = f"{r['kid']:.5f}" if r["kid"] is not None else "–"
        print(f"{r['kimg']:>10g} {r['fid']:>12.4f} {kid:>10}{note}", file=sys.stderr)
    for note in (out.get("warning"), out.get("extractor")):
        if note:
            print(f"ganflow evaluate: note: {note}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    _add_fid(sub)
    _add_evaluate(sub)
    _add_generate(sub)
    _add_morph(sub)
