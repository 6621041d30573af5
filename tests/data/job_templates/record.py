"""Records the Docker worker's default base job template that deployments/job-templates/docker.json is checked
against (tests/test_job_templates.py). prefect-docker is not a ganflow dependency (a Docker pool's worker installs
it), so its template is recorded here; the process and Kubernetes defaults come from the installed Prefect itself.

    pip install --target /tmp/pd prefect-docker==0.7.4 docker
    PYTHONPATH=/tmp/pd python tests/data/job_templates/record.py
"""
import json
from pathlib import Path

from prefect_docker.worker import DockerWorker

out = Path(__file__).with_name("prefect-docker-0.7.4.json")
out.write_text(json.dumps(DockerWorker.get_default_base_job_template(), indent=1) + "\n")
print(out)
