"""`ganflow serve`: a local web page (and JSON/PNG API) to explore a snapshot; the app is tasks.serve."""
from __future__ import annotations

import argparse
import sys

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page to explore a trained model (seeds, truncation, morph, FID)",
                       description="Serve one page at http://HOST:PORT/: a seed and a random button, a truncation "
                                   "slider, a resolution choice (a PGGAN's grown stages or resampled StyleGAN2 sizes), "
                                   "a grid of neighbouring latents, a morph between two seeds, a PNG download and the "
                                   "run's FID table (RUN/fid.csv from `ganflow evaluate`). The JSON/PNG API it uses is "
                                   "documented at /docs. Snapshots load with weights_only=True; with --run-dir only "
                                   "RUN/best.pt and RUN/checkpoints/ckpt-*.pt can be chosen.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--snapshot", metavar="CKPT", help="one snapshot: RUN/best.pt or RUN/checkpoints/ckpt-<kimg>.pt")
    src.add_argument("--run-dir", metavar="R", help="a run folder: its best.pt and checkpoints, chosen in the page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--data", metavar="DIR", help="the curated dataset the run trained on: the page then shows the "
                                                 "3 training images nearest each generated one (in DINOv2 features "
                                                 "when evaluate.metrics has fd_dinov2, else Inception's)")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (evaluate section)")
    p.add_argument("--inception-weights", metavar="W", help="for --data without fd_dinov2 (default: as `ganflow evaluate`)")
    p.add_argument("--dinov2-weights", metavar="W", help="for --data with fd_dinov2 (default: as `ganflow evaluate`)")
    p.set_defaults(func=_run_serve)


def _neighbours(args: argparse.Namespace):
    """tasks.nearest.TrainingNeighbours over --data, with the extractor and settings `ganflow evaluate` uses."""
    from pathlib import Path

    from tasks import dinov2, metrics
    from tasks.evaluate import evaluate_params
    from tasks.nearest import NeighbourSettings, TrainingNeighbours

    p = evaluate_params(args.params)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a folder (a curated dataset or a folder of images)")
    if "fd_dinov2" in p.metrics:
        metric, weights, sha = "fd_dinov2", dinov2.resolve_weights(args.dinov2_weights, p.dinov2_weights), p.dinov2_sha256
    else:
        metric, weights, sha = "fid", metrics.resolve_weights(args.inception_weights, p.inception_weights), p.inception_sha256
    return TrainingNeighbours(NeighbourSettings(Path(args.data), metric, weights, sha or None, p.cache_dir or None,
                                                p.n_real or None, p.memorized_quantile, p.batch, args.device))


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tasks.serve import Explorer, create_app

    neighbours = _neighbours(args) if args.data else None
    explorer = Explorer(snapshot=args.snapshot, run_dir=args.run_dir, device=args.device, training=neighbours)
    name, _G, arch = explorer.generator(None)  # load now: a snapshot that does not load fails here, not in the page
    if args.host not in LOOPBACK:
        print(f"ganflow serve: note: listening on {args.host}: anyone who can reach this machine can use the page "
              f"(there is no login)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ganflow serve: {name} ({arch['name']}, {arch['net']['resolution']}²) at http://{host}:{args.port}/ "
          f"(API: /docs); Ctrl-C stops", file=sys.stderr)
    uvicorn.run(create_app(explorer), host=args.host, port=args.port, log_level="warning")
    return 0


def add_serve_commands(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
