"""`ganflow train`: plain, it trains in one go with a progress bar; with --flow it runs the train flow (stages,
retries, progress in the Prefect UI) in this process.

With --flow the same command runs flows/train.py's flow, which is how
the training manager launches its attempts (`--request-id ID` tags the flow run `request:ID`, which the manager
follows through the API). The training settings given go to the flow's `settings` parameter (one
TrainOverrides, as the UI form fills it), the other options to its parameters of the same name.
"""
from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys

from tqdm import tqdm

from flows.cli.options import add_params_option, add_setting_options, given_settings
from flows.cli.validate import check_device_available, run_folder
from tasks.common.settings import TRAIN_FLOW_ONLY, TrainSettings

# The train parser's own bookkeeping, never a flow parameter.
_NOT_SETTINGS = {"command", "debug", "func", "flow", "request_id"}
TRAIN_METAVARS = {"resolution": "N", "kimg": "K", "snapshot_kimg": "S", "r1_gamma": "G", "resume_from": "FILE",
                  "freeze_d": "N", "net": "YAML", "cycle_kimg": "K", "cycles": "N", "fade_kimg": "K",
                  "stabilize_kimg": "K", "batch": "N", "batch_gpu": "N", "channel_base": "N", "channel_max": "N", "ada_target": "T"}


def add_train_setting_options(p: argparse.ArgumentParser, required: tuple[str, ...] = ()) -> None:
    """One option per setting of params.yaml's `train` section (tasks.common.settings.TrainSettings), as `ganflow train`
    and `ganflow train submit` both take them; --gamma is the reference's name for --r1-gamma."""
    add_setting_options(p, TrainSettings, aliases={"r1_gamma": ["--gamma"]}, metavars=TRAIN_METAVARS,
                        required=required)


def add_flow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", action="store_true",
                   help="run as the Prefect `train` flow: in stages (StyleGAN cycles of train.cycle_kimg, PGGAN "
                        "resolutions), each a retried task resuming from the newest checkpoint, with a progress "
                        "artifact and stage reports in the UI (how `ganflow manager` runs its requests)")
    p.add_argument("--request-id", metavar="ID",
                   help="tag the flow run `request:ID` (the training manager's launches; implies --flow)")


def flow_parameters(args: argparse.Namespace, accepted: set[str]) -> dict:
    """The given options as train flow parameters: the training settings as one `settings` (TrainOverrides), the
    others by name; an option the flow has no parameter for is an error."""
    from tasks.common.settings import TrainOverrides

    settings = given_settings(args, TrainSettings)
    rest = {k: v for k, v in vars(args).items()
            if k not in _NOT_SETTINGS and k not in TrainSettings.model_fields and v is not None and v is not False}
    refused = sorted(set(rest) - (accepted - {"settings"}))
    if refused:
        names = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise ValueError(f"{names}: the train flow takes no such option (it reads the rest from params.yaml's "
                         "`train` section); leave it out, or train without --flow")
    return {**rest, "settings": TrainOverrides(**settings)}


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run_train_flow(args: argparse.Namespace) -> int:
    from prefect import tags

    from flows.train import train_flow
    from tasks.storage.mirror import checkpoints_where

    parameters = flow_parameters(args, set(inspect.signature(train_flow.fn).parameters))
    # Once Prefect has reported a SIGTERM (the stage has checkpointed), it re-sends the signal to the handler
    # it found: exit through SystemExit then, so cleanup runs (a temporary Prefect server is stopped, not leaked).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # ganflow's tags from the run's creation (the manager finds a request's run by its request tag at once).
    run_tags = ["ganflow", "train", *([f"request:{args.request_id}"] if args.request_id else [])]
    with tags(*run_tags):  # the tag is on the flow run from its creation: the manager finds it at once
        result = train_flow(**parameters)
    for s in result["stages"]:
        resumed = f"resumed from {s['resumed_from']}; " if s["resumed_from"] else ""
        resumed += f"started from the networks of {s['transferred_from']}; " if s["transferred_from"] else ""
        print(f"{s['stage']}: {resumed}trained to {s['kimg']:g} kimg")
    print(f"trained to {result['kimg']:g} of {result['total_kimg']:g} kimg; "
          f"checkpoints in {checkpoints_where(args.run_dir)}")
    samples = [s["samples"] for s in result["stages"] if s["samples"]]
    if samples:
        print(f"latest sample grid: {samples[-1]}")
    return 0


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GAN (StyleGAN2-ADA or PGGAN) on a curated dataset; "
                                     "`train submit` / `train status`: queue runs for `ganflow manager`",
                       epilog="ganflow train submit ... queues a request for `ganflow manager` instead; "
                              "ganflow train status shows the queue (see `ganflow train submit --help`).",
                       description="Train on DIR's shards until --kimg thousand images, writing "
                                   "RUN/checkpoints/ckpt-<kimg>.pt every --snapshot-kimg. Running the same "
                                   "command again continues from the newest checkpoint that loads. Options "
                                   "not given come from params.yaml's `train` section.")
    p.add_argument("--data", required=True, metavar="DIR", help="curated dataset (dataset.json + shards/)")
    p.add_argument("--run-dir", required=True, metavar="R", type=run_folder,
                   help="run folder (checkpoints/ goes here): a path, or an object-store URL (s3://bucket/runs/x, "
                        "gs://..., az://...) trained in a local cache and published there at every snapshot")
    add_params_option(p, ": every option not given comes from its `train` section")
    p.add_argument("--restart-on-change", action="store_true",
                   help="when R's checkpoints were trained with other settings or data, move them to R/superseded/ "
                        "and start afresh (default: refuse)")
    # One option per setting of params.yaml's `train` section, from tasks.common.settings.TrainSettings. The retry
    # settings are the train flow's stage tasks' (TRAIN_FLOW_ONLY): they need --flow.
    add_train_setting_options(p)
    add_flow_options(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from tasks.training.run import check_run_dir_outside_data

    check_run_dir_outside_data(args.data, args.run_dir)  # before Prefect starts or a network file is read
    if args.flow or args.request_id:
        return run_train_flow(args)
    flow_only = ["--" + n.replace("_", "-") for n in TRAIN_FLOW_ONLY if getattr(args, n, None) is not None]
    if flow_only:
        raise ValueError(f"{', '.join(flow_only)}: the train flow's stage retries; add --flow (plain `ganflow train` "
                         "trains in one go, without stage tasks)")
    from models.run_dir import RunDir
    from tasks.storage.mirror import checkpoints_where, open_run
    from tasks.training.plan import plan_training
    from tasks.training.run import run_training

    # The train flow's plan for the same settings: params.yaml's `train` section with the options given on top.
    plan = plan_training(args.params, given_settings(args, TrainSettings), check_device=lambda device:
                         check_device_available(device, "--device" if args.device else "train.device"),
                         data=args.data, run_dir=args.run_dir)  # a dataset this machine lacks: fetched with DVC
    console = _TrainConsole(plan.total_kimg, plan.notes)  # total: train.kimg, or the stage plan's length
    result = run_training(plan.config, args.data, args.run_dir, plan.total_kimg, resume_from=plan.resume_from,
                          allow_nonfinite=plan.settings.allow_nonfinite, device=plan.device, progress_fn=console.progress, summary_fn=console.summary,
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
    run = RunDir(open_run(args.run_dir))  # a URL's cache (open already)
    print(f"trained to {result.stats.get('kimg', plan.total_kimg):g} kimg; checkpoints in "
          f"{checkpoints_where(args.run_dir)}")
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
        from models.arch import resolved_text

        frozen = f", D's first {info['freeze_d']} layers frozen" if info["freeze_d"] else ""
        share = info["batch"] // info["processes"]
        rounds = f" in rounds of {info['batch_gpu']}" if info.get("batch_gpu", share) < share else ""
        tqdm.write(f"{info['arch']} {info['resolution']}²: G {info['G_params']:,} parameters, "
                   f"D {info['D_params']:,}; batch {info['batch']} over {info['processes']} process(es)"
                   f"{rounds}, "
                   f"lr {info['lr']:g}, {info['loss']} loss, R1 gamma {info['r1_gamma']:g}, "
                   f"EMA {info['ema_kimg']:g} kimg, ADA target {info['ada_target']:g}, "
                   f"{'bf16' if info['amp'] else 'fp32'} on {info['device']}{frozen}"
                   f"{resolved_text(info.get('family_defaults', {}))}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
