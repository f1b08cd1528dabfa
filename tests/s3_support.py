"""Shared pieces of the S3 suite: moto's standalone S3 server on loopback, spoken to over
real HTTP with boto3 exactly as AWS S3 or MinIO would be. Nothing reaches AWS: every
client and every sink here has ``endpoint_url`` on 127.0.0.1, and the credentials are
dummies set in this process's environment only while the fixture lives."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import msgspec
import pytest
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from tests.helpers import free_port
from tests.queue_support import unique

REGION = "us-east-1"

#: What the standard credential chain finds here: dummies, and no file, profile or
#: instance-metadata lookup that could leave the machine.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def start_moto(port: int) -> ThreadedMotoServer:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@dataclass
class S3Env:
    """A running moto S3 server and a boto3 client on it."""

    endpoint_url: str
    client: Any

    def bucket(self) -> str:
        """A new, empty bucket of this test's own."""
        name = unique("bkt")
        self.client.create_bucket(Bucket=name)
        return name

    def sink(self, bucket: str, **options: Any) -> dict[str, Any]:
        """A ``[sinks.NAME]`` table of type s3 on this server."""
        return {
            "type": "s3",
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            **options,
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", ())
        )

    def body(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def lines(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """The events of one gzip NDJSON object, decoded; asserts it is a single gzip
        member (what readers that stop at the first member need)."""
        body = self.body(bucket, key)
        inflater = zlib.decompressobj(wbits=31)
        text = inflater.decompress(body)
        assert inflater.eof and inflater.unused_data == b"", "not one complete gzip member"
        assert text == gzip.decompress(body)
        assert text.endswith(b"\n")
        return [msgspec.json.decode(line) for line in text.splitlines()]

    def events(self, bucket: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
        """Every NDJSON object under ``prefix``: key -> its events."""
        return {key: self.lines(bucket, key) for key in self.keys(bucket, prefix)}


def closed_endpoint() -> str:
    """An http:// endpoint on loopback where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[S3Env]:
    """moto's S3 server on a free loopback port, for the module."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        for name in AWS_UNSET:
            patch.delenv(name, raising=False)
        # moto logs every request at INFO; keep failing tests' captured logs readable.
        patch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)
        port = free_port()
        server = start_moto(port)
        endpoint_url = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=REGION,
            config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 2}),
        )
        try:
            yield S3Env(endpoint_url, client)
        finally:
            client.close()
            server.stop()
