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
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tasks.serve import Explorer, create_app

    explorer = Explorer(snapshot=args.snapshot, run_dir=args.run_dir, device=args.device)
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
