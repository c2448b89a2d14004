"""The object layer of the team store against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from contextlib import contextmanager

import pytest
from s3server import ACCESS_KEY, S3Study, SeaweedS3

from qcourier.errors import UsageError
from qcourier.store.objects import (
    ObjectStore,
    StoreError,
    StoreLocation,
    StoreUnavailable,
    check_key_part,
)


def store_of(study: S3Study, **options) -> ObjectStore:
    return ObjectStore(StoreLocation.parse(study.url, study.server.endpoint), **options)


@contextmanager
def loopback_server(handler: type):
    """An HTTP server with ``handler`` on 127.0.0.1 (any free port), stopped on leaving;
    yields its endpoint URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_create_only_writes_never_overwrite(s3_study: S3Study):
    store = store_of(s3_study)
    assert store.put_new("ledger/a.jsonl", b"one\n") is True
    assert store.put_new("ledger/a.jsonl", b"two\n") is False
    data, etag = store.get("ledger/a.jsonl")
    assert data == b"one\n" and etag
    assert s3_study.keys() == ["ledger/a.jsonl"]  # below the prefix, nowhere else


def test_compare_and_swap_loses_to_a_writer_in_between(s3_study: S3Study):
    store = store_of(s3_study)
    store.put_new("lease", b"free")
    _data, etag = store.get("lease")
    mine = store.put_if_match("lease", b"mine", etag)
    assert mine is not None
    assert store.put_if_match("lease", b"theirs", etag) is None  # stale ETag: refused
    assert store.get("lease")[0] == b"mine"
    assert store.delete_if_match("lease", etag) is False
    assert store.delete_if_match("lease", mine) is True
    assert store.get("lease") is None and store.head("lease") is None


def test_listing_pages_and_stays_below_the_prefix(s3_study: S3Study):
    store = store_of(s3_study)
    s3_study.client().put_object(Bucket=s3_study.bucket, Key="elsewhere/x", Body=b"x")
    for n in range(5):
        store.put_new(f"blobs/{n}", bytes(n))
    store._client.meta.events.register(  # pages of two: the continuation must be followed
        "before-parameter-build.s3.ListObjectsV2",
        lambda params, **_: params.setdefault("MaxKeys", 2))
    listed = list(store.list("blobs/"))
    assert [o.key for o in listed] == [f"blobs/{n}" for n in range(5)]
    assert [o.size for o in listed] == list(range(5))


@pytest.mark.parametrize("url", ["s3:/x", "http://bucket/p", "s3://B/p", "s3://ab/p/../q",
                                 "s3://bucket/p q"])
def test_a_bad_store_url_is_a_usage_error(url: str):
    with pytest.raises(UsageError, match="QCOURIER_STORE"):
        StoreLocation.parse(url)


def test_a_location_names_bucket_prefix_and_endpoint():
    where = StoreLocation.parse("s3://team-study/qec/2026/", "https://s3.example.org")
    assert (where.bucket, where.prefix) == ("team-study", "qec/2026")
    assert str(where) == "s3://team-study/qec/2026 at https://s3.example.org"
    assert where.key("ledger/x") == "qec/2026/ledger/x"
    with pytest.raises(UsageError, match="QCOURIER_S3_ENDPOINT"):
        StoreLocation.parse("s3://team-study", "s3.example.org")


def test_refused_credentials_name_the_store_never_the_key(s3_study: S3Study,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(StoreError) as caught:
        store_of(s3_study).check()
    message = str(caught.value)
    assert not isinstance(caught.value, StoreUnavailable)
    assert s3_study.url in message and "credentials refused" in message
    assert "wrong-secret-value" not in message and ACCESS_KEY not in message


def test_a_missing_bucket_says_so(s3_study: S3Study):
    store = ObjectStore(StoreLocation.parse("s3://no-such-bucket/x", s3_study.server.endpoint))
    with pytest.raises(StoreError, match="no such bucket 'no-such-bucket'"):
        store.check()


def test_a_server_that_is_down_is_unavailable_not_misconfigured(tmp_path, monkeypatch):
    down = SeaweedS3(tmp_path)  # ports chosen, never started
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    store = ObjectStore(StoreLocation.parse("s3://bucket/x", down.endpoint), timeout=1,
                        attempts=1)
    with pytest.raises(StoreUnavailable, match="cannot be reached.*local ledger"):
        store.put_new("k", b"v")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "x\n", "-x", "a" * 201,
                                  "job id"])
def test_unsafe_names_from_a_store_are_refused(name: str):
    with pytest.raises(StoreError, match="not a safe object or file name"):
        check_key_part(name, "job id")


def test_safe_names_pass():
    assert check_key_part("d4q5kz0r3f7c73a3pkv0", "job id") == "d4q5kz0r3f7c73a3pkv0"
    assert check_key_part("submitted_jobs_20261203_101500.jsonl") == \
        "submitted_jobs_20261203_101500.jsonl"


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_unavailable_and_names_the_store(tmp_path, monkeypatch, status: int):
    """A server on loopback that answers every request with a 5xx, as S3 does when it is
    overloaded: the store is unavailable (the command goes on locally), never misconfigured."""

    requests: list[str] = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def _fail(self) -> None:
            requests.append(self.command)
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                    + (b"ServiceUnavailable" if status == 503 else b"InternalError")
                    + b"</Code><Message>try later</Message></Error>")
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = _fail

        def log_message(self, *_args) -> None:
            pass

    with loopback_server(Failing) as endpoint:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-shown")
        store = ObjectStore(StoreLocation.parse("s3://bucket/x", endpoint), timeout=5,
                            attempts=2)
        for call in (lambda: store.put_new("k", b"v"), lambda: store.get("k"),
                     lambda: list(store.list())):
            requests.clear()
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert len(requests) == 2  # attempts: the first call and one retry, no more
            message = str(caught.value)
            assert f"s3://bucket/x at {endpoint}" in message and str(status) in message
            assert "local ledger" in message and "secret-never-shown" not in message


def test_the_seaweedfs_server_honours_conditional_writes(s3_study: S3Study):
    store = store_of(s3_study)
    assert store.conditional_writes_problem() is None
    assert s3_study.keys() == []  # the probe object is gone


def test_a_server_that_ignores_conditional_writes_is_found_out(monkeypatch):
    """A loopback object server that stores whatever it is sent and ignores If-None-Match
    and If-Match (as an S3-compatible server without conditional writes does)."""

    objects: dict[str, bytes] = {}

    class Careless(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"", etag: str | None = None) -> None:
            self.send_response(status)
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            objects[self.path] = body
            self._answer(200, etag=f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324

        def do_GET(self) -> None:  # noqa: N802
            if self.path not in objects:
                self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")
                return
            body = objects[self.path]
            self._answer(200, body, f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324

        def do_DELETE(self) -> None:  # noqa: N802
            objects.pop(self.path, None)
            self._answer(204)

        def log_message(self, *_args) -> None:
            pass

    with loopback_server(Careless) as endpoint:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
        store = ObjectStore(StoreLocation.parse("s3://bucket/x", endpoint), timeout=5,
                            attempts=1)
        problem = store.conditional_writes_problem()
    assert problem is not None and problem.startswith(
        f"store s3://bucket/x at {endpoint} does not honour conditional writes")
    assert "let an existing object be overwritten" in problem
    assert "stale ETag" in problem
    assert objects == {}  # the probe cleaned up after itself
