"""What can go wrong talking to S3, said in one line, and the one retry loop every S3 operation goes through.

botocore's own retries are off: its adaptive mode waited up to half a minute in silence and then printed a
traceback. Here a transient failure (connection refused or reset, a timeout, a 5xx, throttling) is retried a
bounded number of times with exponential backoff, each retry announced on stderr, and a permanent one (no
credentials, access denied, no such bucket) is not retried at all. Whatever is left becomes a StoreUnavailable
naming the store, the operation and what to check. Only error codes reach a message, never a response body, so
no credential can leak into one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from boto3.exceptions import Boto3Error
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)
from s3transfer.exceptions import RetriesExceededError

from zhllama.errors import StoreUnavailable, UserError

T = TypeVar("T")

RETRIES_ENV = "ZHLLAMA_S3_RETRIES"
DEFAULT_RETRIES = 4
FIRST_DELAY_S = 0.5
"""Delays 0.5, 1, 2, 4 s: with the 1.5 s connect timeout, an unreachable endpoint is given up in about 15 s."""
CONNECT_TIMEOUT_S = 1.5

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem"}
_PRECONDITION = {"412", "PreconditionFailed"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "500", "502", "503", "504"}


class ObjectExists(Exception):
    """A conditional write found the object already there (412); only create_exclusive expects it."""


def retries_from_env() -> int:
    raw = os.environ.get(RETRIES_ENV, "")
    if not raw.strip():
        return DEFAULT_RETRIES
    try:
        retries = int(raw)
    except ValueError:
        retries = -1
    if not 0 <= retries <= 20:
        raise UserError(f"{RETRIES_ENV}={raw!r}: give a whole number of retries from 0 to 20")
    return retries


def public_endpoint(endpoint: str) -> str:
    """The endpoint URL without any user:password@ part, fit for a message."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl() if parts.scheme else endpoint


@dataclass(frozen=True)
class S3Faults:
    """Retries and one-line errors for the S3 store at `root_uri` (bucket `bucket`, talking to `endpoint`)."""

    root_uri: str
    bucket: str
    endpoint: str
    retries: int

    def call(self, op: str, key: str, attempt: Callable[[], T]) -> T:
        """`attempt()` (one S3 request, or a transfer), retried while it fails transiently.

        `op` and `key` name it in messages: "PUT runs/x/status.json". A missing object raises FileNotFoundError
        and a failed If-None-Match ObjectExists, both for the caller to handle; everything else that fails
        raises StoreUnavailable.
        """
        for number in range(1, self.retries + 2):
            try:
                return attempt()
            except (BotoCoreError, ClientError, Boto3Error, RetriesExceededError) as raised:
                err = unwrap(raised)
                reason = transient_reason(err)
                if reason is None or number > self.retries:
                    raise self.error(op, key, err, reason, number) from None
                delay = FIRST_DELAY_S * 2 ** (number - 1)
                print(f"s3: {op} {key or '/'}: {reason}; retry {number}/{self.retries} in {delay:.1f}s",
                      file=sys.stderr, flush=True)
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def error(self, op: str, key: str, err: BaseException, reason: str | None, attempts: int) -> Exception:
        """The one-line exception for a failure that is not retried (any more)."""
        what = f"{op} {key or '/'}"
        code = error_code(err)
        if code in _NOT_FOUND:
            return FileNotFoundError(f"{self.root_uri}/{key}")
        if code in _PRECONDITION:
            return ObjectExists(key)
        if isinstance(err, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return StoreUnavailable(
                f"no AWS credentials for {self.root_uri} ({what}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if code in _DENIED:
            return StoreUnavailable(
                f"{self.root_uri}: access denied ({code}) on {what}; check the credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and that they may use this bucket"
            )
        if code in _NO_BUCKET:
            return StoreUnavailable(f"s3://{self.bucket}: bucket does not exist; check the store URI or create it")
        tries = f", {attempts} attempts" if attempts > 1 else ""
        if isinstance(err, SSLError):
            return StoreUnavailable(f"{self.root_uri}: {what}: TLS failed with {self.endpoint}; check AWS_CA_BUNDLE")
        if isinstance(err, ConnectionError | HTTPClientError | IncompleteReadError):
            return StoreUnavailable(
                f"{self.root_uri}: {what}: cannot reach the S3 endpoint {self.endpoint} ({reason}{tries}); "
                "check AWS_ENDPOINT_URL and that the server is up"
            )
        status = error_status(err)
        detail = f"{code}, HTTP {status}" if code and status else code or type(err).__name__
        return StoreUnavailable(f"{self.root_uri}: {what} failed ({detail}{tries}); check the S3 server")


def unwrap(err: BaseException) -> BaseException:
    """The botocore error inside boto3's transfer wrappers (an upload's S3UploadFailedError keeps it as its
    context, a download's RetriesExceededError as `last_exception`)."""
    inner = getattr(err, "last_exception", None)
    if isinstance(inner, BaseException):
        return unwrap(inner)
    if type(err).__name__ == "S3UploadFailedError" and isinstance(err.__context__, BotoCoreError | ClientError):
        return err.__context__
    return err


def error_code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def error_status(err: BaseException) -> int:
    if isinstance(err, ClientError):
        return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def transient_reason(err: BaseException) -> str | None:
    """Why a retry may succeed ("connection refused", "SlowDown", "HTTP 503"), or None for a permanent error."""
    if isinstance(err, ClientError):
        code, status = error_code(err), error_status(err)
        if code in _TRANSIENT:
            return code
        return f"HTTP {status}" if status >= 500 else None
    if isinstance(err, SSLError):
        return None
    if isinstance(err, ConnectionError | HTTPClientError | IncompleteReadError):
        return connection_reason(err)
    return None


def connection_reason(err: BaseException) -> str:
    text = str(err).lower() + " " + str(getattr(err, "kwargs", {}).get("error", "")).lower()
    for needle, reason in (("refused", "connection refused"), ("timed out", "timed out"),
                           ("timeout", "timed out"), ("reset", "connection reset"),
                           ("name or service not known", "unknown host"), ("nodename nor servname", "unknown host"),
                           ("temporary failure in name resolution", "unknown host")):
        if needle in text:
            return reason
    if isinstance(err, ConnectionClosedError | IncompleteReadError):
        return "connection closed"
    return "connection failed"


def client_setup_error(root_uri: str, err: BotoCoreError) -> StoreUnavailable:
    """A failure creating the client (a named profile that does not exist, a broken config file)."""
    if isinstance(err, ProfileNotFound):
        return StoreUnavailable(
            f"{root_uri}: AWS profile {os.environ.get('AWS_PROFILE', '')!r} not found; check AWS_PROFILE and "
            "~/.aws/config"
        )
    return StoreUnavailable(f"{root_uri}: cannot set up the S3 client ({type(err).__name__}); check ~/.aws/config")
