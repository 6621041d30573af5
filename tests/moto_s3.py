"""moto's S3 server on localhost for tests: a real HTTP S3 API (no cloud account), reached the way a user's machine
reaches MinIO or AWS, through the standard environment (AWS_ENDPOINT_URL and a key pair moto accepts whatever it is)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

BUCKET = "ganflow-test"


@contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[dict[str, str]]:
    """Start moto's server on a free port with `bucket` created; yields the environment that points a client at it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in a failing test's output

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()
