"""The object store: a bucket and prefix on an S3-compatible server, reached with boto3.

Everything qcourier keeps there is written with a conditional ``PUT``: ``If-None-Match: *``
creates an object only where none exists (so an upload is idempotent and nothing is ever
overwritten), ``If-Match: <etag>`` replaces one only if nobody changed it since it was read
(a compare-and-swap, for leases). Credentials come from boto3's own chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the shared files); they are
never read, stored or printed here.

Every failure is one :class:`StoreError` whose message names the store and what to do, never a
credential: :class:`StoreUnavailable` for what may pass (no connection, a timeout, a 5xx),
so the caller carries on with the local ledger and catches up later; a plain
:class:`StoreError` for what will not pass by itself (credentials refused, no such bucket,
a malformed ``QCOURIER_STORE``). boto3's own retries are the only retries of store calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qcourier.errors import QcourierError, UsageError

#: The segments of a key qcourier writes: no empty part, no ``.``/``..``, no control
#: character, nothing that a file name on the reader's machine could not hold.
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StoreError(QcourierError):
    """The store cannot be used as configured (credentials refused, no such bucket, ...)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (no connection, a timeout, a server error)."""


def check_key_part(part: str, what: str = "name") -> str:
    """``part`` if it may be one segment of an object key or a file name, else raise.

    Raises:
        StoreError: it is empty, ``.``/``..``, holds a ``/`` or a character outside
            ``A-Za-z0-9._=+-``, or is longer than 200 characters.
    """
    if not isinstance(part, str) or not _KEY_PART.fullmatch(part) or part in (".", ".."):
        raise StoreError(f"refusing {what} {part!r} from the store: not a safe object or file "
                         "name (letters, digits and ._=+- only, no '/' or '..')")
    return part


@dataclass(frozen=True)
class StoreLocation:
    """Where a team's study lives: ``s3://BUCKET/PREFIX`` on ``endpoint``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None) -> StoreLocation:
        """``QCOURIER_STORE`` (and ``QCOURIER_S3_ENDPOINT``) as a location.

        Raises:
            UsageError: the URL is not ``s3://BUCKET[/PREFIX]`` with a valid bucket name, or
                the endpoint is not an http(s) URL.
        """
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url.strip())
        if not match or not _BUCKET.fullmatch(match.group(1)):
            raise UsageError(f"bad setting QCOURIER_STORE: {url!r} is not s3://BUCKET/PREFIX "
                             "(a bucket name of 3-63 lower-case letters, digits, '.' or '-')")
        prefix = match.group(2).strip("/")
        for part in prefix.split("/") if prefix else []:
            if not _KEY_PART.fullmatch(part):
                raise UsageError(f"bad setting QCOURIER_STORE: prefix part {part!r} is not "
                                 "letters, digits and ._=+- only")
        endpoint = (endpoint or "").strip() or None
        if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
            raise UsageError(f"bad setting QCOURIER_S3_ENDPOINT: {endpoint!r} is not an "
                             "http(s) URL (e.g. https://s3.eu-de.cloud-object-storage"
                             ".appdomain.cloud)")
        return cls(match.group(1), prefix, endpoint)

    def __str__(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{url} at {self.endpoint}" if self.endpoint else url

    def key(self, relative: str) -> str:
        """The full object key of ``relative`` (a key below the prefix)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it: its key below the prefix, size and ETag."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class AgedObject:
    """One object's data and ETag, and how long ago it was last written.

    ``age_seconds`` is the server's ``Date`` when it answered minus the object's
    ``Last-Modified``: both read off the server's own clock (to the second), so no client's
    clock enters it. None when the server gave either without a usable value.
    """

    data: bytes
    etag: str
    age_seconds: float | None


class ObjectStore:
    """Create-only and compare-and-swap writes, reads and listings below one prefix.

    Args:
        location: the bucket, prefix and endpoint.
        timeout: seconds for a connection and for each read from the server.
        attempts: boto3's attempts per call, the first included (its "standard" retry mode:
            back-off with jitter on throttling, 5xx and connection errors).
        client: a boto3 S3 client to use instead of one built here.
    """

    def __init__(self, location: StoreLocation, *, timeout: float = 10.0, attempts: int = 3,
                 client: Any = None):
        self.location = location
        self._client = client if client is not None else _client(location, timeout, attempts)

    # -- writes ------------------------------------------------------------------------------

    def put_new(self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
                ) -> bool:
        """Create ``key`` with ``data`` unless an object is already there.

        Returns:
            True if this call created it, False if it existed (it is left as it was).

        Raises:
            StoreError: the write failed for another reason.
        """
        try:
            self._call("put_object", key, Body=data, IfNoneMatch="*", ContentType=content_type)
        except _Precondition:
            return False
        return True

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace ``key`` with ``data`` only if its ETag is still ``etag``.

        Returns:
            The new ETag, or None if the object changed (or vanished) since it was read.
        """
        try:
            answer = self._call("put_object", key, Body=data, IfMatch=etag,
                                ContentType="application/json")
        except (_Precondition, _Missing):
            return None
        return str(answer["ETag"])

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete ``key`` only if its ETag is still ``etag``; whether it was deleted."""
        try:
            self._call("delete_object", key, IfMatch=etag)
        except (_Precondition, _Missing):
            return False
        return True

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The data and ETag of ``key``, or None if there is no such object."""
        try:
            answer = self._call("get_object", key)
            return answer["Body"].read(), str(answer["ETag"])
        except _Missing:
            return None

    def get_aged(self, key: str) -> AgedObject | None:
        """The data and ETag of ``key`` and its age by the server's clock, or None if there
        is no such object (see :class:`AgedObject`)."""
        try:
            answer = self._call("get_object", key)
            data = answer["Body"].read()
        except _Missing:
            return None
        return AgedObject(data, str(answer["ETag"]), _server_age(answer))

    def head(self, key: str) -> StoredObject | None:
        """Size and ETag of ``key``, or None if there is no such object."""
        try:
            answer = self._call("head_object", key)
        except _Missing:
            return None
        return StoredObject(key, int(answer["ContentLength"]), str(answer["ETag"]))

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key (below the store's prefix) starts with ``prefix``, by key."""
        base = self.location.key("")
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            answer = self._call("list_objects_v2", None, Prefix=base + prefix, **extra)
            for item in answer.get("Contents", []):
                yield StoredObject(item["Key"][len(base):], int(item["Size"]),
                                   str(item["ETag"]))
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return

    def conditional_writes_problem(self) -> str | None:
        """Whether the server honours the conditional writes qcourier relies on, tried on a
        probe object of its own (``probe/<random>``, deleted after): None if it does, else
        what it got wrong (one line naming the store).

        Create-only segments need ``If-None-Match: *`` refused over an existing object, and
        the budget lease ``If-Match`` refused with a stale ETag, on PUT and on DELETE; a
        server that ignores them would overwrite data and let two machines hold a lease.

        Raises:
            StoreError: the store cannot be used at all.
        """
        import secrets

        key = f"probe/{secrets.token_hex(8)}"
        stale = '"00000000000000000000000000000000"'
        wrong = []
        try:
            if not self.put_new(key, b"first"):
                wrong.append("If-None-Match: * refused a new object")
            if self.put_new(key, b"second"):
                wrong.append("If-None-Match: * let an existing object be overwritten")
            if self.put_if_match(key, b"third", stale) is not None:
                wrong.append("If-Match let a PUT with a stale ETag through")
            if self.delete_if_match(key, stale):
                wrong.append("If-Match let a DELETE with a stale ETag through")
        finally:
            found = self.get(key)
            if found is not None:
                self.delete_if_match(key, found[1])
        if not wrong:
            return None
        return (f"store {self.location} does not honour conditional writes "
                f"({'; '.join(wrong)}): qcourier cannot keep its objects immutable nor "
                "hold a budget lease there; use a server that supports If-None-Match and "
                "If-Match")

    def check(self) -> None:
        """Check that the bucket exists and these credentials may read it.

        Raises:
            StoreError: it does not, or they may not (one line saying which).
        """
        self._call("head_bucket", None)

    # -- one call, its errors translated -----------------------------------------------------

    def _call(self, operation: str, key: str | None, **arguments: Any) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if key is not None:
            arguments["Key"] = self.location.key(key)
        try:
            return getattr(self._client, operation)(Bucket=self.location.bucket, **arguments)
        except ClientError as exc:
            raise self._translate(exc, operation, key) from None
        except NoCredentialsError:
            raise StoreError(f"store {self.location}: no credentials; set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (an HMAC key) or AWS_PROFILE") from None
        except (EndpointConnectionError, ConnectionError, ReadTimeoutError) as exc:
            raise StoreUnavailable(f"store {self.location} cannot be reached "
                                   f"({type(exc).__name__}); working on the local ledger, "
                                   "the next run catches up") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"store {self.location}: {type(exc).__name__}; working on "
                                   "the local ledger, the next run catches up") from None

    def _translate(self, exc: Any, operation: str, key: str | None) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        where = f"store {self.location}"
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return _Precondition()
        if code in ("NoSuchBucket",) or (status == 404 and key is None):
            return StoreError(f"{where}: no such bucket {self.location.bucket!r}; create it or "
                              "fix QCOURIER_STORE")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return _Missing()
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                    "InvalidToken", "ExpiredToken", "403") or status in (401, 403):
            return StoreError(f"{where}: credentials refused ({code or status}); check "
                              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (an HMAC key with "
                              "write access to the bucket) or AWS_PROFILE")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
            return StoreUnavailable(f"{where} answered {status or code} to {operation}; "
                                    "working on the local ledger, the next run catches up")
        return StoreError(f"{where}: {operation} failed ({code or status})")


class _Precondition(Exception):
    """A conditional write found the object not as the condition required."""


class _Missing(Exception):
    """No such object."""


def _server_age(answer: dict[str, Any]) -> float | None:
    from email.utils import parsedate_to_datetime

    written = answer.get("LastModified")
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date is None or written is None:
        return None
    try:
        return (parsedate_to_datetime(date) - written).total_seconds()
    except (TypeError, ValueError):
        return None


def _client(location: StoreLocation, timeout: float, attempts: int) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"total_max_attempts": attempts, "mode": "standard"},
                    s3={"addressing_style": "path"} if location.endpoint else {})
    return boto3.session.Session().client("s3", endpoint_url=location.endpoint, config=config)
