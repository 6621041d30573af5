"""Deployments for workers that share no disk (deployments/prefect-cloud.yaml, job-templates/, Dockerfile), checked
with Prefect's own code: its default base job templates, its template validation and rendering, its pull steps run
for real (a git clone at the deployed commit, the set-up), and `prefect deploy` against the test server. No Docker
daemon or Kubernetes cluster runs here: what those would do with the templates is what Prefect renders."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deployments"
KINDS = ("process", "docker", "kubernetes")
ENV = {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "180"}
# The variables whose default (and description) ganflow sets; every other one is Prefect's, unchanged.
SET_BY_GANFLOW = {"process": {"env", "command"}, "docker": {"env", "image", "container_create_kwargs"},
                  "kubernetes": {"env", "image"}}
ADDED_BY_GANFLOW = {"process": set(), "docker": set(),
                    "kubernetes": {"gpu_count", "storage_secret", "termination_grace_period_seconds"}}


def ours(kind: str) -> dict:
    return json.loads((DEPLOY / "job-templates" / f"{kind}.json").read_text())


def prefects_default(kind: str) -> dict:
    """The worker type's default base job template: the process worker's from Prefect itself, the Kubernetes one
    from the worker metadata Prefect ships (what `prefect work-pool get-default-base-job-template` prints without
    prefect-kubernetes), the Docker one recorded from prefect-docker 0.7.4 (tests/data/job_templates/record.py)."""
    if kind == "process":
        from prefect.workers.process import ProcessWorker
        return ProcessWorker.get_default_base_job_template()
    if kind == "docker":
        return json.loads((ROOT / "tests/data/job_templates/prefect-docker-0.7.4.json").read_text())
    import prefect
    meta = Path(prefect.__file__).parent / "server/api/collections_data/views/aggregate-worker-metadata.json"
    return json.loads(meta.read_text())["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]


def contains(big, small) -> bool:
    """Whether `big` holds everything `small` does (dicts key by key, lists item by item, the rest equal)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return big == small


def rendered(kind: str, **values) -> dict:
    """The job configuration a worker gets for a run with these job variables (Prefect's own templating)."""
    from prefect.utilities.templating import apply_values

    template = ours(kind)
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], {**defaults, **values})


@pytest.mark.parametrize("kind", KINDS)
def test_job_template_is_prefects_default_plus_ganflows_env_and_gpu_request(kind):
    from prefect.server.schemas.actions import WorkPoolCreate

    mine, default = ours(kind), prefects_default(kind)
    WorkPoolCreate(name=f"ganflow-{kind}", type=kind, base_job_template=mine)  # Prefect's validation of a template
    props, base = mine["variables"]["properties"], default["variables"]["properties"]
    assert set(props) - set(base) == ADDED_BY_GANFLOW[kind]
    for name, schema in base.items():  # what the worker type declares is kept; only ganflow's defaults differ
        drop = {"default", "description"} if name in SET_BY_GANFLOW[kind] else set()
        assert {k: v for k, v in props[name].items() if k not in drop} == \
            {k: v for k, v in schema.items() if k not in drop}, name
    assert contains(mine["job_configuration"], default["job_configuration"])
    assert rendered(kind)["env"] == ENV


def test_gpu_requests_render_as_docker_and_kubernetes_take_them():
    docker = rendered("docker")["container_create_kwargs"]
    assert docker["device_requests"] == [{"count": 1, "capabilities": [["gpu"]]}]  # docker-py's DeviceRequest args
    assert docker["shm_size"] == "2g"
    manifest = rendered("kubernetes")["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert rendered("kubernetes", gpu_count=2)["job_manifest"]["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["envFrom"] == [{"secretRef": {"name": "ganflow-storage", "optional": True}}]
    assert container["image"] == "ganflow:cuda" and pod["terminationGracePeriodSeconds"] == 120
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert manifest["spec"]["backoffLimit"] == 0  # Prefect reschedules a preempted run; Kubernetes must not rerun it


def test_process_template_gives_the_worker_the_command_that_reschedules_on_sigterm(prefect_api):
    from prefect.workers.process import ProcessJobConfiguration

    config: ProcessJobConfiguration = asyncio.run(  # what the worker makes of the pool's template for a run
        ProcessJobConfiguration.from_template_and_values(ours("process"), {}))
    assert config.command == "prefect flow-run execute" and config.env == ENV


def _project_repo(dest: Path) -> tuple[Path, str]:
    """A git repo of the project's files (tracked and new, not ignored; no data), with the deployed commit and a
    newer one after it; returns (repo, the deployed commit)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file() and not rel.startswith(("data/", "runs/", "tests/", "bench/", "docs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "deployed"]):
        subprocess.run(["git", *cmd], cwd=dest, env=env, check=True)
    deployed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True).stdout.strip()
    (dest / "flows" / "__init__.py").write_text("raise ImportError('a commit after the deployed one')\n")
    subprocess.run(["git", "commit", "-qam", "later"], cwd=dest, env=env, check=True)
    return dest, deployed


def test_cloud_pull_steps_clone_the_deployed_commit_and_install_it(prefect_api, tmp_path, monkeypatch):
    from prefect.deployments.steps.core import run_steps

    repo, deployed = _project_repo(tmp_path / "origin")
    steps = yaml.safe_load((DEPLOY / "prefect-cloud.yaml").read_text())["pull"]
    monkeypatch.setenv("GANFLOW_GIT_URL", str(repo))  # the file's {{ $VAR }}s (`prefect deploy` stores their values)
    monkeypatch.setenv("GANFLOW_COMMIT", deployed)
    worker = tmp_path / "worker"
    worker.mkdir()
    monkeypatch.chdir(worker)
    monkeypatch.setenv("PIP_TARGET", str(tmp_path / "site"))  # the set-up step installs here, not into this venv
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's python
    asyncio.run(run_steps(steps, {}))

    clone = Path.cwd()
    assert clone.parent == worker
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    assert head == deployed and "ImportError" not in (clone / "flows/__init__.py").read_text()
    site = tmp_path / "site"
    assert (site / "bin" / "ganflow").is_file() and (site / "tasks/serving/page.html").is_file()
    assert (site / "flows" / "__init__.py").read_text() == (ROOT / "flows" / "__init__.py").read_text()


def test_prefect_deploys_the_cloud_file_with_the_commit_and_every_flow(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        for pool, kind in (("ganflow-gpu", "docker"), ("ganflow-cpu", "kubernetes")):
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=ours(kind)),
                                    overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "GANFLOW_GIT_URL": "https://git.example/g.git",
           "GANFLOW_COMMIT": "0123456789abcdef0123456789abcdef01234567", "PREFECT_LOGGING_LEVEL": "WARNING"}
    prefect = Path(sys.executable).with_name("prefect")
    out = subprocess.run([str(prefect), "--no-prompt", "deploy", "--prefect-file", "deployments/prefect-cloud.yaml",
                          "--all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    local = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]
    with get_client(sync_client=True) as client:
        cloud = {d.name: d for d in client.read_deployments() if d.work_pool_name in ("ganflow-gpu", "ganflow-cpu")}
        # Every flow `make serve` deploys on one machine is deployable on workers that share nothing.
        assert {(d.name, d.entrypoint) for d in cloud.values()} == {(d["name"], d["entrypoint"]) for d in local}
        assert cloud["train"].work_pool_name == "ganflow-gpu" and cloud["curate"].work_pool_name == "ganflow-cpu"
        clone = cloud["train"].pull_steps[0]["prefect.deployments.steps.git_clone"]
        assert clone["repository"] == env["GANFLOW_GIT_URL"] and clone["commit_sha"] == env["GANFLOW_COMMIT"]
        assert cloud["train"].pull_steps[1] == {
            "prefect.deployments.steps.set_working_directory": {"directory": "{{ clone.directory }}"}}


def test_dockerfile_installs_pyprojects_pins_and_copies_what_the_package_needs(tmp_path):
    """The Dockerfile's steps that can run without Docker: the requirements it installs are pyproject's pins, and
    its build context (its COPY sources, allowed by .dockerignore) builds the ganflow wheel with the command."""
    sys.path.insert(0, str(DEPLOY))
    try:
        from requirements import pinned
    finally:
        sys.path.remove(str(DEPLOY))
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pinned(ROOT / "pyproject.toml") == project["dependencies"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11\S*\nFROM \$\{BASE\}", dockerfile, re.M)  # the base is a build arg
    assert "download.pytorch.org/whl/${TORCH}" in dockerfile and "PATH=/opt/ganflow/bin:$PATH" in dockerfile
    sources = [s for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for s in line.split()[:-1]]
    allowed = [p[1:] for p in (ROOT / ".dockerignore").read_text().split() if p.startswith("!")]
    assert sorted(sources) == sorted(allowed)  # the context holds exactly what the image copies
    context = tmp_path / "context"
    for src in sources:
        (context / src).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / src).is_dir() else shutil.copy2)(ROOT / src, context / src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(context)], check=True, capture_output=True, timeout=300)
    import zipfile
    [wheel] = (tmp_path / "wheel").glob("ganflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ganflow = flows.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert "tasks/serving/page.html" in names and "models/trainer.py" in names
