"""The train flow against the real Prefect API (the test harness's server), with tiny CPU networks.

A stage that fails once is retried by Prefect and resumes from its checkpoint; SIGTERM writes a
checkpoint at once and ends the run Crashed (a lone process: the manager restarts it) or, under a
`prefect flow-run execute` supervisor with PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule,
AwaitingRetry, from which the rerun resumes; the flow trains through all its stages.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import PARAMS, ROOT, write_curated

# test_trainer's small StyleGAN2 (r1 every 2 steps, no ADA) and PGGAN; batch 4 = 0.004 kimg per step.
TINY_TRAIN = dict(batch=4, channel_base=512, channel_max=64, net=dict(z_dim=32, w_dim=32, mapping_layers=2),
                  ada_target=0.0, snapshot_kimg=0.008, cycle_kimg=0.008, retries=0, retry_delay_seconds=0,
                  device="cpu")
TINY_PGGAN = dict(channel_base=256, channel_max=64, net=dict(z_dim=32), fade_kimg=0.008, stabilize_kimg=0.008)
TINY_SG3 = dict(channel_base=256, channel_max=16, net=dict(z_dim=16, w_dim=16))


def tiny_params(folder: Path, **train) -> Path:
    data = yaml.safe_load(PARAMS.read_text())
    data["train"].update({**TINY_TRAIN, **train})
    path = folder / f"params-{len(list(folder.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def api(prefect_api):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        yield client


def _env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1", **extra}


def _task_runs(api, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: r.expected_start_time)


def _artifacts(api, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return api.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _manager_view(api, flow_run_id, until):
    """The manager's view of a run, once `until(view)` holds (events are stored asynchronously) or after 60 s."""
    from tasks.manager.runs import view_run

    deadline = time.time() + 60
    while not until(view := view_run(api, api.read_flow_run(flow_run_id))) and time.time() < deadline:
        time.sleep(0.2)
    return view


def _logs(api, flow_run_id) -> list[tuple[int, str]]:
    """(level, message) of the flow run's log lines in the API, what its Logs tab shows."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    found = api.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [(log.level, log.message) for log in found]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- plans

def test_stage_plans_follow_params_and_growth_schedule():
    from models.pggan import GrowthSchedule
    from tasks.common.settings import TrainSettings, load
    from tasks.training.stages import pggan_stages, plan_stages, stylegan2_stages

    p = load(TrainSettings, PARAMS)
    assert [s.end_kimg for s in plan_stages("stylegan2", 256, None, p)] == [5000, 10000, 15000, 20000, 25000]
    assert [s.end_kimg for s in stylegan2_stages(12000, 5000)] == [5000, 10000, 12000]
    assert stylegan2_stages(12000, 5000)[2].label == "stage 3/3 (cycle 3/3)"

    schedule = GrowthSchedule(3, stabilize_kimg=800, fade_kimg=800)  # 32x32: stages 4, 8, 16, 32
    plan = plan_stages("pggan", 32, None, p)
    assert [s.name for s in plan] == ["4x4", "8x8", "16x16", "32x32"]
    assert [s.end_kimg for s in plan] == [schedule.stage_end_kimg(s) for s in range(4)] == [800, 2400, 4000, 5600]
    assert [s.end_kimg for s in pggan_stages(32, 800, 800, 3000)] == [800, 2400, 3000]   # stops where it falls
    assert [s.end_kimg for s in pggan_stages(32, 800, 800, 9000)][-1] == 9000             # longer: last grows on
    with pytest.raises(ValueError, match="power of two"):
        pggan_stages(48, 800, 800)


def test_stage_report_is_a_table_of_the_stage_result():
    from dataclasses import replace

    from tasks.training.report import stage_markdown
    from tasks.training.results import EvaluationOutcome, StageResult, TrainedStage

    result = StageResult.from_stats(0.016, 0.016, {"checkpoint": "run/checkpoints/ckpt-000000.016.pt", "loss_D": 1.25,
                                                   "loss_G": 0.5, "augment_p": 0.0125, "kimg_per_s": 0.0456},
                                    resumed_from="run/checkpoints/ckpt-000000.008.pt", transferred_from=None,
                                    samples="run/samples/fakes-000000.016.png", seconds=3.21, run_info={"arch": "x"})
    assert stage_markdown("stage 2/2 (cycle 2/2)", replace(result, attempt=2), 0.016, embed=False) == (
        "### Training stage 2/2 (cycle 2/2)\n\n| | |\n|---|---|\n"
        "| kimg | 0.016 / 0.016 (stage ends at 0.016) |\n| loss D | 1.25 |\n| loss G | 0.5 |\n| ADA p | 0.013 |\n"
        "| kimg/s | 0.0456 |\n| stage time | 3.2 s |\n| resumed from | `run/checkpoints/ckpt-000000.008.pt` |\n"
        "| flow run attempt | 2 (resumed after a preemption) |\n| checkpoint | `run/checkpoints/ckpt-000000.016.pt` |\n"
        "| sample grid | `run/samples/fakes-000000.016.png` |\n")
    nothing_left = StageResult.from_stats(0.008, 0.008, {}, resumed_from=None, transferred_from=None, samples=None,
                                          seconds=0.1)
    assert "| loss D | – |" in stage_markdown("s", nothing_left, 0.016) and "| checkpoint | – |" in stage_markdown(
        "s", nothing_left, 0.016)
    row = TrainedStage("stage 1/2 (cycle 1/2)", nothing_left, EvaluationOutcome.skipped("no weights")).to_dict()
    assert row == {"stage": "stage 1/2 (cycle 1/2)", "end_kimg": 0.008, "kimg": 0.008, "resumed_from": None,
                   "transferred_from": None, "checkpoint": None, "loss_D": None, "loss_G": None, "augment_p": None,
                   "kimg_per_s": None, "samples": None, "seconds": 0.1, "attempt": 1, "evaluate": {"skipped": "no weights"}}
    assert "run_info" not in result.to_dict()  # the trainer's description is logged, not returned


def test_train_params_errors_name_the_key(tmp_path):
    from tasks.common.settings import ParamsError, TrainSettings, load

    with pytest.raises(ParamsError, match=r"^train.snapshot_kimg 0 is not a finite number from 0.001 to 1000000$"):
        load(TrainSettings, tiny_params(tmp_path, snapshot_kimg=0))
    with pytest.raises(ParamsError, match=r"^train.bogus is not a setting \(known: arch, resolution, "):
        load(TrainSettings, tiny_params(tmp_path, bogus=1))


# ---------------------------------------------------------------------------------------------- flows

@pytest.mark.parametrize("arch,resolution,extra,stages", [
    ("stylegan2", 32, {}, ["cycle 1/2", "cycle 2/2"]),
    ("pggan", 16, TINY_PGGAN, ["4x4", "8x8", "16x16"]),
    ("stylegan3-r", 16, TINY_SG3, ["cycle 1/2", "cycle 2/2"]),
])
def test_flow_trains_through_all_stages_with_artifacts(tmp_path, api, arch, resolution, extra, stages):
    from flows.train import train_flow
    from models.checkpoint import latest_checkpoint
    from tasks.common.settings import TrainOverrides

    data = write_curated(tmp_path / "data")
    run_dir = tmp_path / "run"
    from prefect import tags

    with tags("request:abc123"):  # how `ganflow train --request-id` (the manager's launch) tags its run
        state = train_flow(data=str(data), run_dir=str(run_dir),
                           settings=TrainOverrides(resolution=resolution, arch=arch,
                                                   kimg=None if arch == "pggan" else 0.016,
                                                   xflip=True if arch == "stylegan2" else None,
                                                   batch_gpu=2 if arch == "stylegan3-r" else None),
                           params=str(tiny_params(tmp_path, **extra)), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    run = api.read_flow_run(state.state_details.flow_run_id)
    assert "request:abc123" in run.tags

    # PGGAN: one stage per resolution, ending where the growth schedule has stabilized it (0.008, 0.024, 0.040).
    ends = [0.008, 0.024, 0.040] if arch == "pggan" else [0.008, 0.016]
    # The flow's result is plain data (TrainRun.to_dict): the keys, in the order it has always returned them.
    assert list(result) == ["run_dir", "arch", "resolution", "total_kimg", "kimg", "stages"]
    assert all(list(s) == ["stage", "end_kimg", "kimg", "resumed_from", "transferred_from", "checkpoint", "loss_D",
                           "loss_G", "augment_p", "kimg_per_s", "samples", "seconds", "attempt", "evaluate"]
               for s in result["stages"])
    assert [s["stage"].split("(")[1].rstrip(")") for s in result["stages"]] == stages
    assert [s["kimg"] for s in result["stages"]] == ends
    assert [s["resumed_from"] is not None for s in result["stages"]] == [False] + [True] * (len(stages) - 1)
    path, ckpt = latest_checkpoint(run_dir)
    assert ckpt["kimg"] == ends[-1] and ckpt["arch"]["name"] == arch
    assert ckpt["config"]["xflip"] is (arch == "stylegan2")  # a setting of the form, as of the CLI
    assert ckpt["config"]["batch_gpu"] == (2 if arch == "stylegan3-r" else None)  # in rounds, resumed each cycle
    assert [r.name for r in _task_runs(api, run.id)] == [f"stage {i + 1}/{len(stages)} ({n})"
                                                         for i, n in enumerate(stages)]

    artifacts = _artifacts(api, run.id)
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 1 and float(progress[0].data) == 100.0
    assert progress[0].description.startswith(f"kimg {ends[-1]:g} / {ends[-1]:g}")
    reports = [a for a in artifacts if a.type == "markdown"]
    assert len(reports) == len(stages)
    # What the training manager keeps of it: the numbers the flow sent with its progress, not its text.
    view = _manager_view(api, run.id, until=lambda v: v.kimg == ends[-1])
    assert (view.kimg, view.total_kimg) == (ends[-1], ends[-1]) and view.kimg_per_s > 0
    assert all("data:image/png;base64," in a.data and "| loss D |" in a.data for a in reports)


def test_failed_stage_is_retried_and_resumes_from_its_checkpoint(tmp_path, api):
    """An attempt that fails after its first checkpoint: Prefect retries the task, the retry continues
    from that checkpoint (not from zero) and ends with the weights of a run that never failed."""
    from prefect import flow

    from models.checkpoint import latest_checkpoint, list_checkpoints
    from tasks.training.results import StageResult
    from tasks.training.stages import Stage, run_stage, train_config, train_stage_task
    from tasks.common.settings import TrainSettings, load

    data = write_curated(tmp_path / "data")
    p = load(TrainSettings, tiny_params(tmp_path))
    cfg = train_config(p, "stylegan2", 32)
    stage = Stage(0, 1, "cycle 1/1", 0.016)
    failed_at: list[float] = []

    def fail_once(stats: dict) -> None:  # runs in the training thread, after the step's checkpoint
        if "checkpoint" in stats and not failed_at:
            failed_at.append(stats["kimg"])
            raise RuntimeError("injected failure after the first checkpoint")

    @flow(name="train-retry-test")
    def one_stage(run_dir: str) -> StageResult:
        task = train_stage_task.with_options(retries=1, retry_delay_seconds=0)
        return task(cfg, str(data), run_dir, stage, stage.end_kimg, progress_fn=fail_once)

    state = one_stage(str(tmp_path / "run"), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert failed_at == [0.008]
    assert [k for k, _ in list_checkpoints(tmp_path / "run")] == [0.008, 0.016]
    assert summary.resumed_from == str(tmp_path / "run" / "checkpoints" / "ckpt-000000.008.pt")
    (task_run,) = _task_runs(api, state.state_details.flow_run_id)
    assert task_run.run_count == 2 and task_run.state.is_completed()

    reference = run_stage(cfg, data, tmp_path / "ref", 0.016)  # the pure function, no Prefect, no failure
    assert reference.resumed_from is None
    assert _same(latest_checkpoint(tmp_path / "ref")[1]["G_ema"], latest_checkpoint(tmp_path / "run")[1]["G_ema"])


def test_a_missing_dataset_fails_the_stage_at_once_without_retries(tmp_path, api):
    """Retries are for what can pass next time (a lost worker, a full disk); a folder with no dataset
    fails the same way on every attempt, so the task fails on the first, with the reason."""
    from prefect import flow

    from models.data import DatasetError
    from tasks.training.stages import Stage, train_config, train_stage_task
    from tasks.common.settings import TrainSettings, load

    p = load(TrainSettings, tiny_params(tmp_path))
    cfg = train_config(p, "stylegan2", 32)

    @flow(name="train-no-data-test")
    def one_stage(run_dir: str) -> dict:
        task = train_stage_task.with_options(retries=3, retry_delay_seconds=0)
        return task(cfg, str(tmp_path / "nothing"), run_dir, Stage(0, 1, "cycle 1/1", 0.008), 0.008)

    state = one_stage(str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    with pytest.raises(DatasetError, match="no dataset.json"):
        state.result()
    (task_run,) = _task_runs(api, state.state_details.flow_run_id)
    assert task_run.run_count == 1


def test_sigterm_outside_prefect_checkpoints_raises_preempted_and_restores_the_handler(tmp_path):
    """run_stage called plainly (no flow, so no Prefect SIGTERM bridge): its own handler sets the flag."""
    from models.checkpoint import list_checkpoints
    from tasks.training.stages import Preempted, run_stage, train_config
    from tasks.common.settings import TrainSettings, load

    data = write_curated(tmp_path / "data")
    cfg = train_config(load(TrainSettings, tiny_params(tmp_path)), "stylegan2", 32)
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # never pytest's death

    def term_after_first_checkpoint(stats: dict) -> None:
        if stats.get("checkpoint") and stats["kimg"] == 0.008:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Preempted, match="stopped at .* kimg after writing"):
            run_stage(cfg, data, tmp_path / "run", 1.0, progress_fn=term_after_first_checkpoint)
        assert signal.getsignal(signal.SIGTERM) is handler and seen == []  # restored; the stage took the signal
    finally:
        signal.signal(signal.SIGTERM, previous)
    kimgs = [k for k, _ in list_checkpoints(tmp_path / "run")]
    assert kimgs[0] == 0.008 and kimgs[-1] in (0.012, 0.016)  # the step in flight (one more on a busy machine)


def _wait_for_stage(api, flow_run_filter, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the flow run's first stage task is Running (its trainer then steps within seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        runs = api.read_task_runs(flow_run_filter=flow_run_filter)
        if any(r.state and r.state.is_running() for r in runs):
            return
        time.sleep(0.2)
    raise AssertionError("the stage task never started")


def test_sigterm_checkpoints_at_once_and_the_rerun_resumes(tmp_path, api):
    """A lone `ganflow train --flow` (how the manager launches one): SIGTERM → checkpoint after the
    current step, flow run Crashed (what the manager restarts), and the same command resumes from it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from models.checkpoint import list_checkpoints

    data = write_curated(tmp_path / "data")
    # Snapshots and stage ends far away: any checkpoint during the test comes from the SIGTERM.
    params = tiny_params(tmp_path, snapshot_kimg=1.0, cycle_kimg=1.0)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--flow", "--data", str(data), "--run-dir", str(run_dir),
           "--resolution", "32", "--kimg", "1.0", "--params", str(params), "--request-id", "sigterm1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=["request:sigterm1"]))
    _wait_for_stage(api, tagged, proc)
    time.sleep(2)  # a few steps
    assert list_checkpoints(run_dir) == []
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # Prefect re-sends it once it has reported
    (kimg, ckpt), = list_checkpoints(run_dir)
    assert 0 < kimg < 1.0
    assert ckpt.stat().st_mtime - sent < 30  # after the step in flight, not at the next snapshot
    (run,) = api.read_flow_runs(flow_run_filter=tagged)
    assert run.state.is_crashed(), run.state
    (task_run,) = _task_runs(api, run.id)
    assert task_run.state.is_crashed()

    rerun = subprocess.run([*cmd[:-1], "sigterm2", "--kimg", f"{kimg + 0.008:g}"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {ckpt}" in rerun.stdout
    assert [k for k, _ in list_checkpoints(run_dir)][-1] == pytest.approx(kimg + 0.008)


def _deployment_run(api, tmp_path: Path, name: str):
    """A one-stage train run created from a deployment, as a worker would find it: (the run, its run folder, the
    `prefect flow-run execute` command that runs it)."""
    from flows.train import train_flow

    data = write_curated(tmp_path / "data")
    params = tiny_params(tmp_path, snapshot_kimg=1.0, cycle_kimg=1.0)
    run_dir = tmp_path / "run"
    deployment = api.create_deployment(
        flow_id=api.create_flow(train_flow), name=name, entrypoint="flows/train.py:train_flow",
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}])
    run = api.create_flow_run_from_deployment(deployment, parameters=dict(
        data=str(data), run_dir=str(run_dir), settings={"resolution": 32, "kimg": 1.0}, params=str(params)))
    return run, run_dir, [sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)]


def test_sigterm_under_flow_run_execute_reschedules_and_the_rescheduled_run_resumes(tmp_path, api):
    """A deployment run under `prefect flow-run execute` (what a worker runs with command set so) with
    PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule: SIGTERM to the supervisor → the engine
    acknowledges, the trainer checkpoints, the run is AwaitingRetry (Scheduled); executing it again
    resumes from that checkpoint and completes."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from models.checkpoint import list_checkpoints

    run, run_dir, execute = _deployment_run(api, tmp_path, "sigterm-test")
    # As `make serve` runs its worker: no PREFECT_LOGGING_LEVEL, the console handler quieted.
    env = _env(PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR="reschedule", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    env.pop("PREFECT_LOGGING_LEVEL")
    proc = subprocess.Popen(execute, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_stage(api, FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), proc)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Flow run successfully rescheduled" in out + err, err[-3000:]
    (kimg, ckpt), = list_checkpoints(run_dir)
    assert 0 < kimg < 1.0
    state = api.read_flow_run(run.id).state
    assert state.is_scheduled() and state.name == "AwaitingRetry", state
    assert state.message == f"Preempted (SIGTERM): rescheduled to resume from {ckpt} ({kimg:g} kimg)"

    # What a worker does with the rescheduled run; a shorter target keeps the test short.
    api.update_flow_run(run.id, parameters={**run.parameters, "settings": {"resolution": 32, "kimg": kimg + 0.008}})
    again = subprocess.run(execute, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert api.read_flow_run(run.id).state.is_completed()
    assert [k for k, _ in list_checkpoints(run_dir)] == [kimg, pytest.approx(kimg + 0.008)]

    # What the UI shows for the run: one progress artifact, moved by the resumed attempt to 100%.
    progress = [a for a in _artifacts(api, run.id) if a.type == "progress"]
    assert len(progress) == 1 and float(progress[0].data) == 100.0, [(a.data, a.description) for a in progress]
    # The stage task run the SIGTERM stopped reads as preempted and resumed, not as a crash.
    stages = _task_runs(api, run.id)
    assert [(t.state.type.name, t.state.name) for t in stages] == [("CANCELLED", "Preempted"), ("COMPLETED", "Completed")]
    assert f"attempt 2 of this flow run resumes from {ckpt}" in stages[0].state.message
    report = [a for a in _artifacts(api, run.id) if a.type == "markdown"]
    assert report and "| flow run attempt | 2 (resumed after a preemption) |" in report[-1].data
    # Its logs reach the API at INFO (the Logs tab), with the terminal quiet (console handler at WARNING).
    lines = _logs(api, run.id)
    assert any(level == 20 and f"attempt 2 of this flow run resumes from {ckpt}" in m for level, m in lines), lines
    assert any(level == 20 and "training from" in m for level, m in lines)
    assert any(level == 20 and m.endswith(f"resumed from {ckpt}") for level, m in lines), lines
    assert any(level == 20 and m.startswith("FID evaluation skipped") for level, m in lines)
    assert "training from" not in again.stdout + again.stderr
    from tasks.training.report import PREEMPTED_LOG

    assert not [m for level, m in lines if level >= 40], lines  # no ERROR: no "Crash detected!" for a preemption
    assert any(level == 30 and m == PREEMPTED_LOG for level, m in lines), lines


@pytest.mark.parametrize("signalled", ["engine", "all"])
def test_sigterm_to_the_engine_process_alone_reschedules_and_the_run_resumes(tmp_path, api, signalled):
    """A shutdown that signals the flow's own process (`python -m prefect.engine`, the child of `prefect flow-run
    execute`) and not, or not first, its supervisor: Prefect alone would end the run Crashed for good. The train
    flow's on_crashed hook sets it AwaitingRetry, saying which checkpoint it resumes from; executed again, it does.
    A machine shutdown signals every process at once (`all`): the supervisor sets the run AwaitingRetry, with no
    message of its own; the stage gives that state the same message, in the Logs tab too."""
    from models.checkpoint import list_checkpoints

    run, run_dir, execute = _deployment_run(api, tmp_path, f"sigterm-{signalled}-test")
    env = _env(PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR="reschedule")
    proc = subprocess.Popen(execute, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: what a shutdown signals, all of it
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _wait_for_stage(api, FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), proc)
    time.sleep(2)
    [engine] = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    if signalled == "engine":
        os.kill(int(engine), signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # the supervisor and the engine, at once
    proc.communicate(timeout=120)
    (kimg, ckpt), = list_checkpoints(run_dir)
    state = api.read_flow_run(run.id).state
    assert (state.type.name, state.name) == ("SCHEDULED", "AwaitingRetry"), state
    assert state.message == f"Preempted (SIGTERM): rescheduled to resume from {ckpt} ({kimg:g} kimg)"

    api.update_flow_run(run.id, parameters={**run.parameters, "settings": {"resolution": 32, "kimg": kimg + 0.008}})
    again = subprocess.run(execute, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert api.read_flow_run(run.id).state.is_completed()
    progress = [a for a in _artifacts(api, run.id) if a.type == "progress"]
    assert len(progress) == 1 and float(progress[0].data) == 100.0
    lines = _logs(api, run.id)
    assert any(m == state.message for _, m in lines), lines[-12:]  # the Logs tab says it, not only the worker's terminal
    assert any(f"attempt 2 of this flow run resumes from {ckpt}" in m for _, m in lines), lines


def test_pipeline_curates_then_trains_as_subflows(tmp_path, api):
    from PIL import Image
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from skimage import data as photos

    from flows.pipeline import pipeline

    images = tmp_path / "photos"
    images.mkdir()
    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(photos, name)()).save(images / f"{name}.png")
    out, run_dir = tmp_path / "curated", tmp_path / "run"
    state = pipeline(source="path", input_path=str(images), out=str(out), run_dir=str(run_dir),
                     settings={"resolution": 32, "kimg": 0.008}, params=str(tiny_params(tmp_path)),
                     curate_settings={"resolution": 64, "matte": "none"},
                     raw_root=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["dataset"]["count"] == 3 and result["train"]["kimg"] == 0.008
    assert (out / "dataset.json").is_file() and (run_dir / "checkpoints" / "ckpt-000000.008.pt").is_file()

    children = api.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
    names = {api.read_flow(r.flow_id).name: r.state.type.name for r in children}
    assert names == {"curate": "COMPLETED", "train": "COMPLETED"}
    # Each run says what it is (whatever started it): ganflow's tags, the dataset's content hash, and the train run's
    # name from its data and settings, with the curate run that wrote its data linked.
    runs = {api.read_flow(r.flow_id).name: api.read_flow_run(r.id) for r in children}
    content = result["dataset"]["content_hash"]
    assert {"ganflow", "curate", f"dataset:{content[:12]}"} <= set(runs["curate"].tags)
    assert {"ganflow", "train", f"dataset:{content[:12]}"} <= set(runs["train"].tags)
    assert runs["train"].name == f"train-curated-sg2-32-{content[:4]}"
    [link] = [a for a in _artifacts(api, runs["train"].id) if a.type == "markdown" and a.data.startswith("### Dataset")]
    assert f"| content hash | `{content}` |" in link.data and runs["curate"].name in link.data
    assert str(runs["curate"].id) in link.data
