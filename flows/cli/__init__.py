"""The `ganflow` command line: one subcommand per flow, each with its own --help, in its own module
(flows/*_cli.py). This package holds what they share: the dispatcher here (which also turns a user's mistake into
one line), options generated from the settings (options.py) and argument checks (validate.py)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from contextlib import nullcontext

from flows.cli.validate import OneLineParser


# Each command's parser, in `ganflow --help`'s order, by the "module:function" that adds it. A command's module is
# imported only when that command runs (all of them for `ganflow --help`), so a DVC stage's command loads its own
# code and not every other command's, and dvc.yaml's deps can list exactly what a stage runs.
_COMMANDS: list[tuple[tuple[str, ...], str]] = [
    (("ingest", "curate"), "flows.curate_cli:add_curation_commands"),
    (("train",), "flows.train_cli:add_train_command"),
    (("train-submit", "train-status", "manager"), "flows.queue_cli:add_queue_commands"),
    (("fid", "evaluate", "generate", "morph"), "flows.eval_cli:add_eval_commands"),
    (("datasets",), "flows.datasets_cli:add_datasets_commands"),
    (("serve",), "flows.serve_cli:add_serve_commands"),
    (("import",), "flows.import_cli:add_import_command"),
]
TRAIN_VERBS = {"submit": "train-submit", "status": "train-status"}


def _prefect_api_use(args: argparse.Namespace) -> str | None:
    """How the command uses a configured Prefect API: "flow" (it runs a flow, so the API must answer before it
    starts), "ask" (`train status` asks it, and says so in a warning when it does not answer), or None."""
    if args.command in ("curate", "manager") or (args.command == "train" and (args.flow or args.request_id)):
        return "flow"
    return "ask" if args.command == "train status" else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`command`) only the parser of that command: what `main` runs."""
    parser = OneLineParser(
        prog="ganflow", description="Turn a hashtag or a folder of photos into a clean dataset and a trained GAN.")
    parser.add_argument("--debug", action="store_true", help="on an error, show Python's traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    known = {name for names, _ in _COMMANDS for name in names}
    for names, add in _COMMANDS:
        if command in names or command not in known:  # an unknown command: all of them, for the error's choices
            module, function = add.split(":")
            getattr(importlib.import_module(module), function)(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command word of argv: the first word after the global options; None (every command) for
    `ganflow --help COMMAND`, whose help lists them all."""
    word = next((w for w in argv if not w.startswith("-")), None)
    return None if word is None or {"-h", "--help"} & set(argv[:argv.index(word)]) else word


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
    api = _prefect_api_use(args)
    try:
        if api is None:
            return args.func(args)
        return _with_prefect_api(args, api)
    # ParamsError, SourceError, DatasetError, CheckpointError, QueueError and VersioningError are ValueErrors: a
    # user's mistake, said in one line; so is an OSError (a file that cannot be read or written, which it names; a
    # Prefect API that does not answer, tasks.common.prefect_api.ApiUnreachable).
    # (Catching the base class spares every command importing torch just to name DatasetError.)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"ganflow {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def _with_prefect_api(args: argparse.Namespace, api: str) -> int:
    """Run a command that uses a configured Prefect API with every request bounded in time and retries; a server
    that does not answer is ApiUnreachable (one line), before a flow starts or whenever it stops answering."""
    from flows.cli.console import failures_said_once
    from tasks.common.prefect_api import ApiUnreachable, api_failure, bounded_requests, probe

    # A task's bad value or full disk: our one line, not Prefect's tracebacks of it before that line.
    with bounded_requests(), (failures_said_once() if api == "flow" and not args.debug else nullcontext()):
        try:
            if api == "flow":
                probe()  # a PREFECT_API_URL that does not answer: one line now, not a flow stuck at its start
            return args.func(args)
        except (ValueError, OSError):
            raise
        except Exception as e:  # Prefect raises several kinds (httpx's, RuntimeError "Failed to reach API", ...)
            line = None if args.debug else api_failure(e)
            if line is None:
                raise
            raise ApiUnreachable(line) from e


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # never a multi-line message
    return text if len(text) <= 600 else text[:600] + " ..."
