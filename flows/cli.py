"""The `ganflow` command line: one subcommand per flow, each with its own --help."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from flows.options import add_setting_options, given_settings
from flows.train_cli import add_flow_options, add_train_setting_options, run_train_flow
from flows.validate import OneLineParser, writable_folder
from tasks.settings import TRAIN_FLOW_ONLY, CurateSettings, IngestSettings, IngestSource, TrainSettings


class _Bars:
    """A tqdm bar per pipeline stage, fed by tasks.progress from the flow's tasks."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def begin(self, stage: str, total: int) -> None:
        self.bars[stage] = tqdm(total=total or None, desc=f"{stage:>7}", unit="img", leave=True,
                                dynamic_ncols=True, file=sys.stderr)

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self.bars:
            self.bars[stage].update(n)

    def end(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()


CURATE_METAVARS = {"resolution": "N", "batch_size": "N", "workers": "N", "dask_address": "ADDRESS",
                   "dask_batch_size": "N", "rembg_model": "NAME", "shard_size": "N", "max_member_bytes": "BYTES"}


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="build a clean square dataset from a folder, an archive, a hashtag or the demo",
                       description="Ingest images, filter them (corrupt, too small, blurry, grayscale, text, faces, "
                                   "duplicates), crop to square, matte onto white, and write DIR/manifest.jsonl, "
                                   "DIR/shards/*.tar and DIR/dataset.json.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="PATH", help="a folder (recursive), a .zip or a .tar of images")
    src.add_argument("--hashtag", metavar="TAG", help="an Instagram hashtag (needs a session file; see --session-file)")
    src.add_argument("--demo", action="store_true", help="the embedded demo data (built offline at run time)")
    src.add_argument("--raw", metavar="DIR", help="a raw store `ganflow ingest` filled (skips ingest)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the curated dataset")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")
    p.add_argument("--raw-root", default="data/raw", metavar="DIR", help="raw store root (default: data/raw)")
    p.add_argument("--cache-dir", default="data/cache", metavar="DIR", help="per-image result cache (default: data/cache)")
    add_setting_options(p, IngestSettings, ["max_posts"], metavars={"max_posts": "N"})  # --max-posts
    p.add_argument("--dvc", action="store_true", help="version the result with DVC: dvc add (or commit), dvc push, "
                                                      "and a git commit of its .dvc file (see `ganflow datasets`)")
    p.add_argument("--session-file", metavar="FILE",
                   help="Instagram session file from `instaloader --login USER` (or $GANFLOW_IG_SESSIONFILE)")
    p.add_argument("--ig-user", metavar="USER", help="Instagram user of that session (or $GANFLOW_IG_USER)")
    # One option per setting of params.yaml's `curate` section, from tasks.settings.CurateSettings; --dask is
    # the name users know for --dask-address. The raw store and the cache must be at the same path on every worker.
    add_setting_options(p, CurateSettings, aliases={"dask_address": ["--dask"]}, metavars=CURATE_METAVARS)
    p.set_defaults(func=_run_curate)


def _check_curate_args(args: argparse.Namespace) -> None:
    """Every curate option checked before Prefect starts: a bad one is one line naming it (exit 2)."""
    from tasks.ingestion.ingest import hashtag_settings
    from tasks.outdir import check_dataset_dir, check_store_root, is_raw_store
    from tasks.settings import load
    from tasks.ingestion.sources.local import check_input

    load(CurateSettings, args.params, **given_settings(args, CurateSettings))
    if args.hashtag is not None:  # a scrape reads params.yaml's ingest.max_posts unless --max-posts names one
        hashtag_settings(args.params, args.hashtag, {"max_posts": args.max_posts})
    check_dataset_dir(args.out, "--out")
    check_store_root(args.cache_dir, "--cache-dir")
    if args.raw is None:
        check_store_root(args.raw_root, "--raw-root")
    elif not (Path(args.raw) / "provenance.jsonl").is_file() or not is_raw_store(Path(args.raw)):
        raise ValueError(f"--raw {args.raw!r} is not a raw store (no provenance.jsonl): run `ganflow ingest` first")
    if args.input is not None:
        check_input(args.input)


def _run_curate(args: argparse.Namespace) -> int:
    from flows.curate import curate
    from tasks import progress
    from tasks.curation.report import summary_text
    from tasks.curation.publish import read_manifest
    from tasks.curation.result import CurationResult

    _check_curate_args(args)
    source: IngestSource = "hashtag" if args.hashtag else "path" if args.input else "demo"
    progress.install(_Bars())
    try:
        result = CurationResult.from_dict(curate(
            source=source, input_path=args.input, hashtag=args.hashtag, out=args.out, raw_root=args.raw_root,
            cache_dir=args.cache_dir, params_path=args.params, settings=given_settings(args, CurateSettings),
            ingest_settings={"max_posts": args.max_posts}, session_file=args.session_file, ig_user=args.ig_user,
            raw_dir=args.raw, version=args.dvc))
    finally:
        progress.install(None)
    print()
    print(result.matte_note)
    print(summary_text(read_manifest(args.out)))
    print(f"\n{result.count} of {result.inputs} images accepted at {result.resolution}² "
          f"(content hash {result.content_hash[:12]}).")
    print(f"Results in {result.out}/: manifest.jsonl, dataset.json, shards/ ({len(result.shards)} tar)")
    if result.version is not None:
        v = result.version
        print(f"Versioned with DVC: {v['md5']} (git {str(v.get('git_rev') or '-')[:10]}, "
              f"{'pushed' if v.get('pushed') else 'not pushed'})")
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="copy a source's images into a raw store (the DVC pipeline's first stage)",
                       description="Copy a folder, an archive, a hashtag's posts or the demo into DIR (files by "
                                   "content hash + provenance.jsonl). With no source option, params.yaml's "
                                   "`ingest` section names the source. `ganflow curate --raw DIR` curates it.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="PATH", help="a folder (recursive), a .zip or a .tar of images")
    src.add_argument("--hashtag", metavar="TAG", help="an Instagram hashtag (needs a session file)")
    src.add_argument("--demo", action="store_true", help="the embedded demo data")
    p.add_argument("--raw-dir", required=True, metavar="DIR", help="the raw store to fill")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")
    add_setting_options(p, IngestSettings, ["max_posts"], metavars={"max_posts": "N"})  # --max-posts
    p.add_argument("--session-file", metavar="FILE", help="Instagram session file (or $GANFLOW_IG_SESSIONFILE)")
    p.add_argument("--ig-user", metavar="USER", help="Instagram user of that session (or $GANFLOW_IG_USER)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from tasks import progress
    from tasks.ingestion.ingest import ingest_source
    from tasks.outdir import check_raw_dir
    from tasks.settings import CurateSettings, IngestSettings, load
    from tasks.ingestion.sources.local import MemberLimits, check_input
    from tasks.ingestion.sources.raw import read_provenance

    named = {}  # a source option given here replaces the params' source
    if args.demo or args.input or args.hashtag:
        named = {"source": "hashtag" if args.hashtag else "path" if args.input else "demo",
                 "input": args.input or "", "hashtag": args.hashtag or ""}
    p = load(IngestSettings, args.params, **named, max_posts=args.max_posts)
    limits = MemberLimits.from_params(load(CurateSettings, args.params))  # the member caps live with the filters
    raw_dir = check_raw_dir(args.raw_dir, "--raw-dir")
    if p.source == "path":
        check_input(p.input)
    progress.install(_Bars())
    progress.begin("ingest", 0)
    try:
        raw = ingest_source(p.source, raw_dir, limits, p.input, p.hashtag, p.max_posts, args.session_file,
                            args.ig_user)
    finally:
        progress.end("ingest")
        progress.install(None)
    items = read_provenance(raw)
    print(f"{len(items)} inputs ({len({i.id for i in items})} distinct files) from {p.source} in {raw}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GAN (StyleGAN2-ADA or PGGAN) on a curated dataset; "
                                     "`train submit` / `train status`: queue runs for `ganflow manager`",
                       epilog="ganflow train submit ... queues a request for `ganflow manager` instead; "
                              "ganflow train status shows the queue (see `ganflow train submit --help`).",
                       description="Train on DIR's shards until --kimg thousand images, writing "
                                   "RUN/checkpoints/ckpt-<kimg>.pt every --snapshot-kimg. Running the same "
                                   "command again continues from the newest checkpoint that loads. Options "
                                   "not given come from params.yaml's `train` section.")
    p.add_argument("--data", required=True, metavar="DIR", help="curated dataset (dataset.json + shards/)")
    p.add_argument("--run-dir", required=True, metavar="R", type=writable_folder,
                   help="run folder (checkpoints/ goes here)")
    p.add_argument("--params", default="params.yaml", metavar="FILE",
                   help="settings file: every option not given comes from its `train` section (default: params.yaml)")
    p.add_argument("--restart-on-change", action="store_true",
                   help="when R's checkpoints were trained with other settings or data, move them to R/superseded/ "
                        "and start afresh (default: refuse)")
    # One option per setting of params.yaml's `train` section, from tasks.settings.TrainSettings. The retry
    # settings are the train flow's stage tasks' (TRAIN_FLOW_ONLY): they need --flow.
    add_train_setting_options(p)
    add_flow_options(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.flow or args.request_id:
        return run_train_flow(args)
    flow_only = ["--" + n.replace("_", "-") for n in TRAIN_FLOW_ONLY if getattr(args, n, None) is not None]
    if flow_only:
        raise ValueError(f"{', '.join(flow_only)}: the train flow's stage retries; add --flow (plain `ganflow train` "
                         "trains in one go, without stage tasks)")
    from models.run_dir import RunDir
    from tasks.training.plan import plan_training
    from tasks.training.run import run_training

    # The train flow's plan for the same settings: params.yaml's `train` section with the options given on top.
    plan = plan_training(args.params, given_settings(args, TrainSettings), check_device=lambda device:
                         check_device_available(device, "--device" if args.device else "train.device"))
    console = _TrainConsole(plan.total_kimg, plan.notes)  # total: train.kimg, or the stage plan's length
    result = run_training(plan.config, args.data, args.run_dir, plan.total_kimg, resume_from=plan.resume_from,
                          device=plan.device, progress_fn=console.progress, summary_fn=console.summary,
                          restart_on_change=args.restart_on_change)
    console.close()
    if not console.lead:
        return 0
    if result.set_aside:
        print(f"checkpoints of other settings or data moved to {result.set_aside}; trained afresh")
    if result.resumed_from:
        print(f"resumed from {result.resumed_from}")
    if result.transferred_from:
        print(f"started from the networks of {result.transferred_from}")
    run = RunDir(args.run_dir)
    print(f"trained to {result.stats.get('kimg', plan.total_kimg):g} kimg; checkpoints in {run.checkpoints}")
    samples = run.newest_sample_grid()
    if samples:
        print(f"latest sample grid: {samples}")
    return 0


class _TrainConsole:
    """What plain `ganflow train` shows while it trains: a progress bar, made when training starts (a refused run
    prints its error line alone), and what the run trains. Under torchrun only the first process shows anything
    (the others train the same steps in lockstep)."""

    def __init__(self, total_kimg: float, notes: tuple[str, ...]) -> None:
        self.total_kimg, self.notes = total_kimg, notes
        self.lead = os.environ.get("RANK", "0") == "0"
        self.bar: tqdm | None = None

    def progress(self, stats: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(total=round(self.total_kimg * 1000), unit="img", desc="train", dynamic_ncols=True,
                            file=sys.stderr, disable=not self.lead)
        self.bar.n = round(stats["kimg"] * 1000)
        grown = {"res": f"{stats['stage_resolution']}/{stats['alpha']:.2f}"} if "stage" in stats else {}
        self.bar.set_postfix(D=f"{stats['loss_D']:.3f}", G=f"{stats['loss_G']:.3f}", p=f"{stats['augment_p']:.3f}",
                             **grown, refresh=False)
        self.bar.refresh()

    def summary(self, info: dict) -> None:
        if not self.lead:
            return
        if info["transferred_from"]:
            for note in [*self.notes, *info["transfer_notes"]]:
                tqdm.write(note, file=sys.stderr)
        frozen = f", D's first {info['freeze_d']} layers frozen" if info["freeze_d"] else ""
        tqdm.write(f"{info['arch']} {info['resolution']}²: G {info['G_params']:,} parameters, "
                   f"D {info['D_params']:,}; batch {info['batch']} over {info['processes']} process(es), "
                   f"lr {info['lr']:g}, {info['loss']} loss, R1 gamma {info['r1_gamma']:g}, "
                   f"EMA {info['ema_kimg']:g} kimg, ADA target {info['ada_target']:g}, "
                   f"{'bf16' if info['amp'] else 'fp32'} on {info['device']}{frozen}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert an NVIDIA network pickle (StyleGAN2-ADA, StyleGAN3) into a ganflow network file",
                       description="Read a network pickle written by NVlabs/stylegan2-ada-pytorch or NVlabs/stylegan3 "
                                   "(network-snapshot-*.pkl or a published pretrained file) without running anything "
                                   "from it, and write G, D and G_ema as ganflow networks with the architecture the "
                                   "pickle records. `generate`, `morph`, `serve` and `train --resume-from` take FILE.")
    p.add_argument("network", metavar="NETWORK.pkl", help="the pickle (a .pkl, or gzipped)")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the ganflow network file")
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from models.network_pickle import import_network_pickle, save_imported

    state = import_network_pickle(args.network)
    out = save_imported(state, args.out)
    arch, net = state["arch"], state["arch"]["net"]
    n = state["source"]["num_params"]
    print(f"{arch['name']} {net['resolution']}x{net['resolution']}, z_dim {net['z_dim']}, w_dim {net['w_dim']}: "
          f"G {n['G']:,} parameters, D {n['D']:,} (from {state['source']['file']})")
    print(f"wrote {out}")
    return 0


def check_device_available(name: str, option: str) -> None:
    """Refuse a device this machine does not have, before any work (torch's own error comes mid-run)."""
    from tasks.settings import DEVICE

    if not DEVICE.check(name):  # the settings' one rule, before cuda:N is read as a number
        raise ValueError(f"{option} {name!r} is not {DEVICE.text}")
    import torch

    if name.startswith("cuda"):
        index = int(name.split(":")[1]) if ":" in name else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(f"{option} {name}: this machine has {have} CUDA device(s); use cpu or auto")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} mps: this machine has no MPS device; use cpu or auto")


# Each command's parser, in `ganflow --help`'s order, by the function that adds it: a function of this module, or
# "module:function" for commands whose code lives in their own module. That module is imported only when its
# command runs (or for `ganflow --help`), so a DVC stage's command imports its own code, not every other
# command's, and dvc.yaml's deps can say exactly what a stage runs.
_COMMANDS: list[tuple[tuple[str, ...], Callable[[argparse._SubParsersAction], None] | str]] = [
    (("ingest",), _add_ingest),
    (("curate",), _add_curate),
    (("train",), _add_train),
    (("train-submit", "train-status", "manager"), "flows.queue_cli:add_queue_commands"),
    (("fid", "evaluate", "generate", "morph"), "flows.eval_cli:add_eval_commands"),
    (("datasets",), "flows.datasets_cli:add_datasets_commands"),
    (("serve",), "flows.serve_cli:add_serve_commands"),
    (("import",), _add_import),
]
TRAIN_VERBS = {"submit": "train-submit", "status": "train-status"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`command`) only the parser of that command: what `main` runs."""
    parser = OneLineParser(
        prog="ganflow", description="Turn a hashtag or a folder of photos into a clean dataset and a trained GAN.")
    parser.add_argument("--debug", action="store_true", help="on an error, show Python's traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    known = {name for names, _ in _COMMANDS for name in names}
    for names, add in _COMMANDS:
        if command in names or command not in known:  # an unknown command: all of them, for the error's choices
            if isinstance(add, str):
                module, function = add.split(":")
                add = getattr(importlib.import_module(module), function)
            add(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command word of argv: the first word after the global options (--debug, --help)."""
    return next((word for word in argv if not word.startswith("-")), None)


def route_train_verbs(argv: list[str] | None) -> list[str]:
    """`ganflow train --data ...` trains in the foreground and must keep working, so `train submit ...` and
    `train status` are routed before argparse sees them, to the hidden commands `train-submit` / `train-status`
    (an option value never comes right after `train`, so the second word is unambiguous)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(argv) and argv[i] == "--debug":  # global options come before the command
        i += 1
    if len(argv) >= i + 2 and argv[i] == "train" and argv[i + 1] in TRAIN_VERBS:
        return [*argv[:i], TRAIN_VERBS[argv[i + 1]], *argv[i + 2:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = route_train_verbs(argv)  # `train submit|status` → their own parsers
    args = build_parser(_command(argv)).parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a Prefect server configured, a flow starts a temporary one; Prefect gives it 20 s, which a busy
    # laptop (or a `dvc repro` next to other work) can exceed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # A library warning (a skipped checkpoint, a recomputed cache) is one line naming the command, as errors are.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"ganflow {args.command}: warning: {message}\n"
    try:
        return args.func(args)
    # ParamsError, SourceError, DatasetError, CheckpointError, QueueError and VersioningError are ValueErrors: a
    # user's mistake, said in one line; so is an OSError (a file that cannot be read or written, which it names).
    # (Catching the base class spares every command importing torch just to name DatasetError.)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"ganflow {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # never a multi-line message
    return text if len(text) <= 600 else text[:600] + " ..."


if __name__ == "__main__":
    sys.exit(main())
