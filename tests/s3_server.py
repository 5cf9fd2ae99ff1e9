"""A real S3-protocol server on 127.0.0.1 for tests (moto's server, as DVC's own tests use).

    from s3_server import s3_server  # noqa: F401  (the pytest fixture)

    def test_x(s3_server):
        boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1").create_bucket(Bucket="b")
        s3_server.stop(); s3_server.start()   # a crash and restart; the data is kept in memory

Dummy credentials are set in the environment; the instance metadata lookup is switched off so
botocore never waits on it.
"""

from __future__ import annotations

import socket

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


@pytest.fixture
def s3_server(monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    server = S3Server()
    server.start()
    yield server
    server.stop()
