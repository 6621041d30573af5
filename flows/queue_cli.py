"""`ganflow train submit`, `ganflow train status` and `ganflow manager`: the queue's command line.

`train submit ...` reaches the hidden command `train-submit ...` through flows.cli.route_train_verbs.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from flows.cli.options import add_params_option, add_setting_options, given_settings
from flows.train_cli import add_train_setting_options
from flows.cli.validate import existing_folder, run_folder
from tasks.manager.queue import RequestQueue, open_queue, queue_path
from tasks.common.settings import ManagerSettings, TrainSettings, load

MANAGER_METAVARS = {"queue": "QUEUE", "interval_seconds": "S", "stale_after_seconds": "S", "max_attempts": "N",
                    "max_running": "N", "deployment": "NAME"}


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    # No help= on the train-* parsers: they stay out of the command list; `train`'s help names them.
    p = sub.add_parser("train-submit", prog="ganflow train submit",
                       description="Add a training request to the queue and print its id. `ganflow manager` "
                                   "starts it (as `ganflow train --flow` with the options given here), watches it "
                                   "through the Prefect API and restarts it from its newest checkpoint if its "
                                   "process or machine is lost. Settings not given come from params.yaml's `train` "
                                   "section when the run starts.")
    p.add_argument("--data", required=True, metavar="DIR", type=existing_folder,
                   help="curated dataset (dataset.json + shards/)")
    p.add_argument("--run-dir", required=True, metavar="R", type=run_folder,
                   help="run folder (checkpoints/, attempt logs)")
    # One option per setting of params.yaml's `train` section, as `ganflow train` has them; --kimg is required
    # (restarts continue toward it), --arch and --resolution are unless --resume-from names the network.
    add_train_setting_options(p, required=("kimg",))
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
                                   "Needs PREFECT_API_URL (a server that outlives the runs). Options not given "
                                   "come from params.yaml's `manager` section.")
    p.add_argument("--once", action="store_true", help="one pass, then exit (for cron or a scheduled deployment)")
    # One option per setting of params.yaml's `manager` section (--queue in _common); --interval and
    # --stale-after are the names users know.
    add_setting_options(p, ManagerSettings, [n for n in ManagerSettings.model_fields if n != "queue"],
                        aliases={"interval_seconds": ["--interval"], "stale_after_seconds": ["--stale-after"]},
                        metavars=MANAGER_METAVARS)
    _common(p)
    p.set_defaults(func=_run_manager)


def _common(p: argparse.ArgumentParser) -> None:
    # --queue comes before $GANFLOW_QUEUE, which comes before params.yaml's manager.queue (queue_path).
    add_setting_options(p, ManagerSettings, ["queue"], metavars=MANAGER_METAVARS)
    add_params_option(p)


def _open_queue(args: argparse.Namespace) -> tuple[RequestQueue, ManagerSettings]:
    """The queue the command names, and params.yaml's `manager` section (validated: a bad value is one line)."""
    settings = load(ManagerSettings, args.params)
    return open_queue(queue_path(args.queue, settings.queue)), settings


def _run_submit(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not (data / "dataset.json").is_file():
        raise FileNotFoundError(f"no curated dataset at {data} (expected {data / 'dataset.json'}; "
                                "make one with `ganflow curate`)")
    if not args.resume_from and (args.arch is None or args.resolution is None):
        raise ValueError("--arch and --resolution are required, unless --resume-from names the network to start "
                         "from (its architecture is the run's)")
    given = given_settings(args, TrainSettings)
    if args.resume_from:  # --resume-from '' is a run from scratch when params.yaml names a file
        resume_from = Path(args.resume_from)
        if not resume_from.is_file():
            raise FileNotFoundError(f"--resume-from {args.resume_from!r} is not an existing file")
        # Absolute: the manager (or a worker) may run from another folder.
        given["resume_from"] = str(resume_from.resolve())
    # Refused now what the run would refuse hours later, when the manager starts it: settings that do not go
    # together (with params.yaml's), a network file that contradicts the options, a resolution above the data's.
    load(TrainSettings, args.params, **given)
    if args.resume_from:
        from tasks.training.transfer import file_architecture

        file_architecture(given["resume_from"], given)
    if args.resolution is not None:
        from tasks.training.run import check_resolution

        check_resolution(data, args.resolution)
    queue, _ = _open_queue(args)
    # The train flow's parameters: the settings given here (the others are params.yaml's when the run starts).
    # A run folder URL (s3://...) is kept as given; a local path absolute, for a manager in another folder.
    run_dir = args.run_dir if "://" in args.run_dir else str(Path(args.run_dir).resolve())
    params = {"data": str(data.resolve()), "run_dir": run_dir, **given,
              "params": str(Path(args.params).resolve())}
    req = queue.submit(params)
    print(req.id)
    print(f"queued in {queue.where}; `ganflow manager` starts it, `ganflow train status` follows it",
          file=sys.stderr)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from tasks.manager.queue import STATES

    queue, settings = _open_queue(args)
    max_attempts = settings.max_attempts

    requests = [queue.get(args.request)] if args.request else queue.list(states=None)
    if not requests:
        print(f"no training requests in {queue.where}")
        return 0
    now = _attempts_now(requests)
    print(status_table(requests, max_attempts, now))
    for r in requests:
        if r.state not in STATES:  # written by another version, or by hand: shown, never hidden
            print(f"ganflow train status: warning: request {r.id} is in state {r.state!r}, which this version does "
                  f"not know ({', '.join(STATES)}); the manager leaves it alone", file=sys.stderr)
    if args.request:
        r = requests[0]
        for a in r.history:
            flow_run = a.flow_run_id
            if a is r.current and r.id in now:
                flow_run = now[r.id].flow_run_id or flow_run
            if a.ended:
                ended = f"ended {_clock(a.ended)}: {a.outcome}"
            elif r.id in now and now[r.id].state:
                ended = f"now {now[r.id].state.lower()}" + (f" ({now[r.id].message})" if now[r.id].message else "")
            else:
                ended = "not ended"
            print(f"  attempt {a.n}: started {_clock(a.started)} on {a.host}"
                  f"{f' pid {a.pid}' if a.pid else ''}, from {a.start_kimg:g} kimg; flow run "
                  f"{flow_run or '-'}; {ended}" + (f"; log {a.log}" if a.log else ""))
    return 0


def _attempts_now(requests: list) -> dict:
    """The running requests' current attempts as the Prefect API shows them now (tasks.manager.runs.AttemptNow), when
    a server is configured (PREFECT_API_URL); {} without one, or when it does not answer (said in one line)."""
    if not any(r.state == "running" for r in requests):
        return {}
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    from tasks.common.prefect_api import ApiUnreachable, probe
    from tasks.manager.runs import current_attempts

    url = PREFECT_API_URL.value()
    if not url:  # no server configured: Prefect would start a temporary one, which knows no runs
        return {}
    try:
        probe()  # a stalled server: the warning below within seconds, not after every request's timeout
        with get_client(sync_client=True) as client:
            return current_attempts(client, requests)
    except Exception as e:  # an unreachable server: the queue and the run folders still say something
        said = str(e) if isinstance(e, ApiUnreachable) else f"the Prefect API at {url} did not answer ({type(e).__name__})"
        print(f"ganflow train status: warning: {said.split('; check')[0]}; showing the queue as the manager's last "
              "pass left it", file=sys.stderr)
        return {}


def status_table(requests: list, max_attempts: int | None, now: dict | None = None) -> str:
    """One row per request. `now`: the running ones' current attempts from the Prefect API (_attempts_now), which
    beat the queue's record: a Completed attempt is done, a Crashed or Failed one lost, before the manager's pass."""
    rows = [("id", "state", "kimg done/target", "attempts", "last checkpoint", "ETA", "reason")]
    for r in requests:
        done, rate, ckpt = _progress(r)
        target = "?" if r.kimg_target is None else f"{r.kimg_target:g}"
        state, reason = _state_now(r, (now or {}).get(r.id), done)
        eta = _eta(r, done, rate) if state == "running" else "-"
        rows.append((r.id, state, f"{done:g} / {target}",
                     f"{r.attempts}/{max_attempts}" if max_attempts else str(r.attempts),
                     Path(ckpt).name if ckpt else "-", eta, reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows).rstrip()


_NEXT_PASS = "the manager's next pass records it"


def _state_now(r, live, done: float) -> tuple[str, str]:
    """(state, reason) of a request as they are now: the queue's, corrected for a running request by its current
    attempt's flow run (live, from the API) and its process (on this machine). The reason is the current attempt's;
    earlier attempts' reasons are in `ganflow train status ID`."""
    if r.state != "running" or r.current is None:
        return r.state, r.reason or ""
    n = r.current.n
    if live is not None and live.state == "COMPLETED":
        return "done", f"attempt {n} completed (flow run {live.flow_run_id}); {_NEXT_PASS}"
    if live is not None and live.state in ("CRASHED", "FAILED"):
        message = f": {live.message}" if live.message else ""
        return "lost", f"attempt {n}: flow run {live.state.lower()}{message}; restart on next manager pass"
    if live is not None and live.state == "CANCELLED":
        return "cancelled", f"attempt {n} cancelled in Prefect; {_NEXT_PASS} (failed, not restarted)"
    lost = _lost(r)
    if lost:
        if live is None and r.kimg_target and done >= r.kimg_target:  # no API to ask: its checkpoints say it finished
            return "done", f"attempt {n}: its run folder reached the target; {_NEXT_PASS}"
        return "lost", lost
    if live is not None:
        return "running", f"attempt {n}: flow run {(live.state or 'not created yet').lower()}"
    return "running", f"attempt {n}" if n > 1 else ""


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
    checkpoints when they are visible from here (for a URL run, its published manifest; no Prefect server needed)."""
    done, rate, ckpt = r.kimg_done, r.kimg_per_s, r.last_checkpoint
    if not r.params.get("run_dir"):
        return done, rate, ckpt
    from tasks.manager.run_view import local_run, newest_checkpoint

    run = local_run(r.params["run_dir"])
    newest = newest_checkpoint(r.params["run_dir"])
    if newest and newest[0] >= done:
        done, ckpt = newest[0], str(newest[1])
    if r.state == "running" and rate is None and r.current is not None:
        # Checkpoints written by this attempt: their kimg over the time since it started.
        mine = [(k, t) for k, t in _mtimes(run.checkpoint_files()) if t > r.current.started]
        if mine and mine[-1][0] > r.current.start_kimg:
            rate = (mine[-1][0] - r.current.start_kimg) / max(mine[-1][1] - r.current.started, 1e-6)
    return done, rate, ckpt


def _mtimes(files):
    """(kimg, modification time) of each checkpoint still there: a restart may set the folder aside
    (superseded/) between the listing and the look, and status must not fail for it."""
    for kimg, path in files:
        try:
            yield kimg, path.stat().st_mtime
        except FileNotFoundError:
            continue


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

    overrides = given_settings(args, ManagerSettings)
    overrides.pop("queue", None)  # --queue goes on its own: it comes before $GANFLOW_QUEUE (queue_path)
    interval = overrides.pop("interval_seconds", None)  # the loop's, not a pass's
    return run_manager(args.once, interval, queue=args.queue, params=args.params, **overrides)
