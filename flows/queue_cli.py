"""`ganflow train submit`, `ganflow train status` and `ganflow manager`: the queue's command line.

`ganflow train --data ...` trains in the foreground and must keep working, so `submit` and `status`
are routed before argparse sees them: `train submit ...` becomes the hidden command `train-submit ...`
(an option value never comes right after `train`, so the second word is unambiguous).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from flows.validate import existing_file, existing_folder, integer, number, power_of_two, writable_folder
from tasks.settings import ARCHS

TRAIN_VERBS = {"submit": "train-submit", "status": "train-status"}


def route_train_verbs(argv: list[str] | None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(argv) and argv[i] == "--debug":  # global options come before the command
        i += 1
    if len(argv) >= i + 2 and argv[i] == "train" and argv[i + 1] in TRAIN_VERBS:
        return [*argv[:i], TRAIN_VERBS[argv[i + 1]], *argv[i + 2:]]
    return argv


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    # No help= on the train-* parsers: they stay out of the command list; `train`'s help names them.
    p = sub.add_parser("train-submit", prog="ganflow train submit",
                       description="Add a training request to the queue and print its id. `ganflow manager` "
                                   "starts it, watches it through the Prefect API and restarts it from its "
                                   "newest checkpoint if its process or machine is lost.")
    p.add_argument("--data", required=True, metavar="DIR", type=existing_folder,
                   help="curated dataset (dataset.json + shards/)")
    p.add_argument("--arch", choices=list(ARCHS), help="network family (not needed with --resume-from)")
    p.add_argument("--resolution", type=power_of_two(4, 1024), metavar="N",
                   help="training resolution, a power of 2 from 4 to 1024, at most the dataset's (not needed with "
                        "--resume-from)")
    p.add_argument("--kimg", type=number(0, lo_open=True), required=True, metavar="K",
                   help="train until this many thousand images in total (restarts continue toward it)")
    p.add_argument("--run-dir", required=True, metavar="R", type=writable_folder,
                   help="run folder (checkpoints/, attempt logs)")
    p.add_argument("--seed", type=integer(0, 2 ** 32 - 1), default=0,
                   help="seed for weights, data order and noise (default 0)")
    p.add_argument("--resume-from", metavar="FILE", type=existing_file,
                   help="transfer learning: start from this network file (.pt or NVIDIA .pkl), whose architecture "
                        "the run takes (--arch and --resolution, given, must agree with it)")
    p.add_argument("--freeze-d", type=integer(0, 64), metavar="N",
                   help="Freeze-D: keep the pretrained D's first N layers fixed")
    _common(p)
    p.set_defaults(func=_run_submit, command="train submit")

    p = sub.add_parser("train-status", prog="ganflow train status",
                       description="Show each training request: state, kimg done / target, attempts, "
                                   "last checkpoint, ETA. With an id, also its attempts.")
    p.add_argument("request", nargs="?", metavar="ID", help="one request (an id or a unique prefix)")
    _common(p)
    p.set_defaults(func=_run_status, command="train status")

    p = sub.add_parser("manager", help="start queued training requests and restart lost ones",
                       description="Each pass: start queued requests, check running ones through the Prefect "
                                   "API, restart a crashed or stale run from its newest checkpoint with the "
                                   "remaining kimg (up to manager.max_attempts), mark finished ones done. "
                                   "Needs PREFECT_API_URL (a server that outlives the runs).")
    p.add_argument("--once", action="store_true", help="one pass, then exit (for cron or a scheduled deployment)")
    p.add_argument("--interval", type=float, metavar="S", help="seconds between passes (default: params.yaml)")
    p.add_argument("--stale-after", type=float, metavar="S",
                   help="a Running run silent this long is lost (default: params.yaml)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts per request (default: params.yaml)")
    p.add_argument("--max-running", type=int, metavar="N", help="requests training at once, 0 = no limit")
    p.add_argument("--deployment", metavar="NAME",
                   help="start runs of this deployment (flow/deployment) for a work pool instead of local "
                        "processes; '' = local (default: params.yaml)")
    _common(p)
    p.set_defaults(func=_run_manager)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", metavar="FILE", help="queue file (default: $GANFLOW_QUEUE, then params.yaml "
                                                   "manager.queue, runs/queue.sqlite)")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")


def _open_queue(args: argparse.Namespace):
    from tasks.settings import read_params
    from tasks.manager.queue import Queue, queue_path

    section = read_params(args.params).get("manager") or {}
    return Queue(queue_path(args.queue, section.get("queue")))


def _run_submit(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not (data / "dataset.json").is_file():
        raise FileNotFoundError(f"no curated dataset at {data} (expected {data / 'dataset.json'}; "
                                "make one with `ganflow curate`)")
    if args.resume_from is None and (args.arch is None or args.resolution is None):
        raise ValueError("--arch and --resolution are required, unless --resume-from names the network to start "
                         "from (its architecture is the run's)")
    if args.resume_from is not None:
        # Refuse at once what the run would refuse: a missing file, or options that contradict it.
        from tasks.training.transfer import file_architecture

        file_architecture(args.resume_from, {"arch": args.arch, "resolution": args.resolution})
    if args.resolution is not None:
        from tasks.training.run import check_resolution

        check_resolution(data, args.resolution)  # refused now, not when the manager starts it hours later
    queue = _open_queue(args)
    # Absolute paths: the manager (or a worker) may run from another folder.
    params = {"data": str(data.resolve()), "run_dir": str(Path(args.run_dir).resolve()), "arch": args.arch,
              "resolution": args.resolution, "kimg": args.kimg, "seed": args.seed,
              "params": str(Path(args.params).resolve())}
    if args.resume_from is not None:
        params["resume_from"] = str(Path(args.resume_from).resolve())
    if args.freeze_d is not None:
        params["freeze_d"] = args.freeze_d
    req = queue.submit(params)
    print(req.id)
    print(f"queued in {queue.path}; `ganflow manager` starts it, `ganflow train status` follows it",
          file=sys.stderr)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from tasks.settings import ManagerSettings, load

    queue = _open_queue(args)
    try:
        max_attempts = load(ManagerSettings, args.params).max_attempts
    except ValueError:
        max_attempts = None
    from tasks.manager.queue import STATES

    requests = [queue.get(args.request)] if args.request else queue.list(states=None)
    if not requests:
        print(f"no training requests in {queue.path}")
        return 0
    print(status_table(requests, max_attempts))
    for r in requests:
        if r.state not in STATES:  # written by another version, or by hand: shown, never hidden
            print(f"ganflow train status: warning: request {r.id} is in state {r.state!r}, which this version does "
                  f"not know ({', '.join(STATES)}); the manager leaves it alone", file=sys.stderr)
    if args.request:
        for a in requests[0].history:
            ended = f"{_clock(a.ended)} {a.outcome}" if a.ended else "-"
            print(f"  attempt {a.n}: started {_clock(a.started)} on {a.host}"
                  f"{f' pid {a.pid}' if a.pid else ''}, from {a.start_kimg:g} kimg; flow run "
                  f"{a.flow_run_id or '-'}; ended {ended}" + (f"; log {a.log}" if a.log else ""))
    return 0


def status_table(requests: list, max_attempts: int | None) -> str:
    rows = [("id", "state", "kimg done/target", "attempts", "last checkpoint", "ETA", "reason")]
    for r in requests:
        done, rate, ckpt = _progress(r)
        target = "?" if r.kimg_target is None else f"{r.kimg_target:g}"
        lost = _lost(r)
        eta = "-" if lost else _eta(r, done, rate)
        rows.append((r.id, "lost" if lost else r.state, f"{done:g} / {target}",
                     f"{r.attempts}/{max_attempts}" if max_attempts else str(r.attempts),
                     Path(ckpt).name if ckpt else "-", eta, lost or r.reason or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows).rstrip()


def _lost(r) -> str:
    """Why a running request's attempt is gone, from what the queue knows (the pid of a process launched on
    this machine); "" when it may be alive. The manager's next pass restarts it (or fails it at the cap)."""
    from tasks.manager.launch import process_state

    a = r.current
    if r.state != "running" or a is None or a.pid is None:
        return ""
    if process_state(a.pid, a.host, r.id) != "dead":
        return ""
    return f"lost, restart on next manager pass (process {a.pid} is gone)"


def _progress(r) -> tuple[float, float | None, str | None]:
    """kimg done, kimg/s and the newest checkpoint: the manager's last look, refreshed from the run dir's
    checkpoints when they are visible from here (no Prefect server needed)."""
    from models.run_dir import RunDir

    done, rate, ckpt = r.kimg_done, r.kimg_per_s, r.last_checkpoint
    if not r.params.get("run_dir"):
        return done, rate, ckpt
    run = RunDir(r.params["run_dir"])
    newest = run.newest_checkpoint()
    if newest and newest[0] >= done:
        done, ckpt = newest[0], str(newest[1])
    if r.state == "running" and rate is None and r.current is not None:
        # Checkpoints written by this attempt: their kimg over the time since it started.
        mine = [(k, p.stat().st_mtime) for k, p in run.checkpoint_files() if p.stat().st_mtime > r.current.started]
        if mine and mine[-1][0] > r.current.start_kimg:
            rate = (mine[-1][0] - r.current.start_kimg) / max(mine[-1][1] - r.current.started, 1e-6)
    return done, rate, ckpt


def _eta(r, done: float, rate: float | None) -> str:
    if r.state != "running" or r.kimg_target is None:
        return "-"
    if not rate:
        return "?"
    seconds = int(max(r.kimg_target - done, 0) / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _run_manager(args: argparse.Namespace) -> int:
    from flows.manager import run_manager

    return run_manager(args.once, args.interval, queue=args.queue, params=args.params,
                       stale_after_seconds=args.stale_after, max_attempts=args.max_attempts,
                       max_running=args.max_running, deployment=args.deployment)
