"""`ganflow serve`: a local web page (and JSON/PNG API) to explore a snapshot; the app is tasks.serving.app."""
from __future__ import annotations

import argparse
import sys

from flows.cli.options import add_params_option, add_setting_options
from flows.cli.validate import MAX_PORT, existing_folder, integer, torch_device
from tasks.common.settings import EvaluateSettings

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
    p.add_argument("--port", type=integer(1, MAX_PORT), default=8000, help=f"port, 1 to {MAX_PORT} (default 8000)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; by default only the --host "
                        "address, or for 0.0.0.0 this machine's names; '*' turns the DNS-rebinding check off)")
    p.add_argument("--queue", type=integer(0, 1000), metavar="N",
                   help="heavy requests that may wait for the generator; more get 429 (default 8)")
    p.add_argument("--max-wait", type=integer(1, 3600), metavar="S",
                   help="seconds a request may wait for the generator before a 503 (default 30)")
    p.add_argument("--device", default="cpu", type=torch_device, help="torch device (default cpu)")
    p.add_argument("--data", metavar="DIR", type=existing_folder,
                   help="the curated dataset the run trained on: the page then shows the 3 training images nearest "
                        "each generated one (in DINOv2 features when evaluate.metrics has fd_dinov2, else Inception's)")
    add_params_option(p, " (evaluate section)")
    # From EvaluateSettings, as `ganflow evaluate`'s (a given one comes before $GANFLOW_INCEPTION_WEIGHTS /
    # $GANFLOW_DINOV2_WEIGHTS); the group says which of the two --data uses.
    weights = p.add_argument_group("the feature extractor for --data's neighbours",
                                   "Inception's weights, or DINOv2's when evaluate.metrics has fd_dinov2")
    add_setting_options(weights, EvaluateSettings, ["inception_weights", "dinov2_weights"],
                        metavars={"inception_weights": "W", "dinov2_weights": "W"})
    p.set_defaults(func=_run_serve)


def _neighbours(args: argparse.Namespace):
    """tasks.evaluation.nearest.TrainingNeighbours over --data, with the extractor and settings `ganflow evaluate` uses."""
    from pathlib import Path

    from tasks.evaluation import dinov2
    from tasks.evaluation import metrics
    from tasks.common.settings import EvaluateSettings, load
    from tasks.evaluation.nearest import NeighbourSettings, TrainingNeighbours

    p = load(EvaluateSettings, args.params)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a folder (a curated dataset or a folder of images)")
    if "fd_dinov2" in p.metrics:
        metric, weights, sha = "fd_dinov2", dinov2.resolve_weights(args.dinov2_weights, p.dinov2_weights), p.dinov2_sha256
    else:
        metric, weights, sha = "fid", metrics.resolve_weights(args.inception_weights, p.inception_weights), p.inception_sha256
    return TrainingNeighbours(NeighbourSettings(Path(args.data), metric, weights, sha or None, p.cache_dir or None,
                                                p.n_real or None, p.memorized_quantile, p.batch, args.device))


def _run_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    from tasks.serving.app import Explorer, InputError, Limits, allowed_hosts, create_app

    limits = Limits()
    limits = dataclasses.replace(limits, max_queue=limits.max_queue if args.queue is None else args.queue,
                                 max_wait_s=limits.max_wait_s if args.max_wait is None else float(args.max_wait))
    neighbours = _neighbours(args) if args.data else None
    from tasks.storage.mirror import open_run, open_snapshot

    # A URL is read through the local cache: the snapshot fetched, or the run's published checkpoints pulled.
    snapshot = open_snapshot(args.snapshot) if args.snapshot else None
    run_dir = open_run(args.run_dir, checkpoints="all") if args.run_dir else None
    explorer = Explorer(snapshot=snapshot, run_dir=run_dir, device=args.device, limits=limits,
                        training=neighbours)
    name, arch = _first_loadable(explorer, InputError)  # load now: what does not load is said here, not in the page
    if args.host not in LOOPBACK:
        print(f"ganflow serve: note: listening on {args.host}: anyone who can reach this machine can use the page "
              f"(there is no login)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ganflow serve: {name} ({arch['name']}, {arch['net']['resolution']}²) at http://{host}:{args.port}/ "
          f"(API: /docs); Ctrl-C stops", file=sys.stderr)
    hosts = allowed_hosts(args.host, args.allow_host)
    if args.host not in LOOPBACK and "*" not in hosts:
        print(f"ganflow serve: note: requests must name one of {sorted(hosts)} as their Host; --allow-host NAME "
              f"adds another (the name or address clients use)", file=sys.stderr)
    if "*" in hosts:
        print("ganflow serve: note: --allow-host '*': any Host header is answered (no DNS-rebinding check)",
              file=sys.stderr)
    app = create_app(explorer, hosts, port=args.port, proxied=frozenset(args.allow_host) - {"*"})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _first_loadable(explorer, input_error) -> tuple[str, dict]:
    """The default snapshot (best.pt, else the newest), or when it does not load the newest one that does; each
    one that does not load is named on stderr. None loading is an error."""
    snaps = [s["name"] for s in explorer.list_snapshots()]
    first = explorer.default_snapshot()
    failed = []
    for candidate in [first] + [n for n in reversed(snaps) if n != first]:
        try:
            name, _G, arch = explorer.generator(candidate)
        except input_error as e:
            failed.append(str(e))
            continue
        for why in failed:
            print(f"ganflow serve: warning: {why}", file=sys.stderr)
        return name, arch
    raise ValueError(failed[0] if len(failed) == 1 else f"no snapshot loads: {'; '.join(failed)}")


def add_serve_commands(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
