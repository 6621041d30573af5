"""`ganflow train --flow`: the train flow (stages, retries, progress in the Prefect UI) run in this process.

Plain `ganflow train` trains in one go; with --flow the same command runs flows/train.py's flow, which is how
the training manager launches its attempts (`--request-id ID` tags the flow run `request:ID`, which the manager
follows through the API). The training settings given go to the flow's `settings` parameter (one
TrainOverrides, as the UI form fills it), the other options to its parameters of the same name.
"""
from __future__ import annotations

import argparse
import inspect
import signal

# The train parser's own bookkeeping, never a flow parameter.
_NOT_SETTINGS = {"command", "debug", "func", "flow", "request_id"}
TRAIN_METAVARS = {"resolution": "N", "kimg": "K", "snapshot_kimg": "S", "r1_gamma": "G", "resume_from": "FILE",
                  "freeze_d": "N", "net": "YAML", "cycle_kimg": "K", "cycles": "N", "fade_kimg": "K",
                  "stabilize_kimg": "K", "batch": "N", "channel_base": "N", "channel_max": "N", "ada_target": "T"}


def add_train_setting_options(p: argparse.ArgumentParser, required: tuple[str, ...] = ()) -> None:
    """One option per setting of params.yaml's `train` section (tasks.settings.TrainSettings), as `ganflow train`
    and `ganflow train submit` both take them; --gamma is the reference's name for --r1-gamma."""
    from flows.options import add_setting_options
    from tasks.settings import TrainSettings

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
    from flows.options import given_settings
    from tasks.settings import TrainOverrides, TrainSettings

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
    from models.run_dir import RunDir

    parameters = flow_parameters(args, set(inspect.signature(train_flow.fn).parameters))
    # Once Prefect has reported a SIGTERM (the stage has checkpointed), it re-sends the signal to the handler
    # it found: exit through SystemExit then, so cleanup runs (a temporary Prefect server is stopped, not leaked).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run_tags = [f"request:{args.request_id}"] if args.request_id else []
    with tags(*run_tags):  # the tag is on the flow run from its creation: the manager finds it at once
        result = train_flow(**parameters)
    for s in result["stages"]:
        resumed = f"resumed from {s['resumed_from']}; " if s["resumed_from"] else ""
        resumed += f"started from the networks of {s['transferred_from']}; " if s["transferred_from"] else ""
        print(f"{s['stage']}: {resumed}trained to {s['kimg']:g} kimg")
    print(f"trained to {result['kimg']:g} of {result['total_kimg']:g} kimg; "
          f"checkpoints in {RunDir(args.run_dir).checkpoints}")
    samples = [s["samples"] for s in result["stages"] if s["samples"]]
    if samples:
        print(f"latest sample grid: {samples[-1]}")
    return 0
