"""`rclone serve s3 -vv` servers over one root, one per simulated pod, and what each server's log says it served.

Counting from the servers' own logs, never from zhllama's counters, is what makes the pods' traffic evidence.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

S3_KEY, S3_SECRET, BUCKET = "zhllama-test", "not-a-real-secret-1234", "zhllama"
PART_BYTES = 16 * 1024 * 1024
"""boto3's multipart size as zhllama.store.s3 configures it: a download of a larger object is several ranged GETs."""
METADATA_FILES = ("manifest.json", "trainer_state.json")
"""Small index documents (an artifact's manifest, a checkpoint's step record) that processes read to decide what
to download; reported, and kept apart from the payload objects whose downloads the checks bound."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rclone_binary() -> str:
    return shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")


# --- the S3 servers ----------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """`rclone serve s3` over `root` (buckets are its top-level directories), logging every request at -vv."""

    root: Path
    log_path: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, root: Path, log_path: Path, timeout_s: float = 30, *, port: int | None = None,
              keys: tuple[str, str] = (S3_KEY, S3_SECRET)) -> S3Server:
        """Serve `root` on `port` (a free one by default), accepting the access key and secret `keys`."""
        port = port or free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                 "--auth-key", ",".join(keys), "-vv", "--log-format", "date,time,microseconds",
                 "--vfs-cache-mode", "off", "--dir-cache-time", "1ms"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return cls(root, log_path, port, process)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"rclone serve s3 did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def traffic(self, prefix: str) -> Traffic:
        return parse_log(self.log_path, BUCKET, prefix)


@contextlib.contextmanager
def aws_env(endpoint: str) -> Iterator[None]:
    """boto3's standard variables pointed at `endpoint` for the duration (this process's own S3 calls)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_PROFILE",
             "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
                       "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- what a server's log says --------------------------------------------------------------------------------------

_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\w+)\s*: (.*)$")
_GET = re.compile(r"^serve s3: GET OBJECT Bucket: (\S+) Object: (.+)$")
_HEAD = re.compile(r"^serve s3: HEAD OBJECT (\S+) (.+)$")
_PUT = re.compile(r"^serve s3: (?:CREATE OBJECT:|initiate multipart upload) (\S+) (.+)$")
_PART = re.compile(r"^serve s3: put multipart upload (\S+) (\S+) \S+$")
_LIST = re.compile(r"^serve s3: bucketname: (\S+) prefix: prefix:\"([^\"]*)\"")
_DELETE = re.compile(r"^serve s3: delete (?:multi )?(\S+)")
_SIZE = re.compile(r"^(\S*\.rclone_temp_\S+): size = (\d+) OK$")
_MOVED = re.compile(r"^(\S*\.rclone_temp_\S+): Moved \(server-side\) to: (.+)$")


@dataclass(frozen=True)
class Request:
    time: float
    op: str
    """GET, HEAD, PUT (an object created: a single PUT or a multipart upload), PART, LIST or DELETE."""
    key: str
    """The store key (bucket and store prefix stripped); for LIST the prefix listed."""


@dataclass
class Traffic:
    """One server's requests, and the bytes of every upload it completed (key -> sizes, one per upload)."""

    requests: list[Request] = field(default_factory=list)
    uploads: dict[str, list[int]] = field(default_factory=dict)
    upload_times: dict[str, list[float]] = field(default_factory=dict)

    def count(self, op: str, where: Callable[[str], bool] = lambda key: True, before: float = math.inf,
              after: float = -math.inf) -> Counter[str]:
        return Counter(r.key for r in self.requests if r.op == op and where(r.key) and after <= r.time < before)

    def gets(self, where: Callable[[str], bool] = lambda key: True, before: float = math.inf) -> Counter[str]:
        return self.count("GET", where, before)

    def downloads(self, sizes: dict[str, int], where: Callable[[str], bool] = lambda key: True,
                  before: float = math.inf) -> dict[str, int]:
        """Whole-object reads per key: GETs, divided by the parts of a multipart download."""
        return {key: math.ceil(n / parts(sizes.get(key, 0))) for key, n in self.gets(where, before).items()}

    def bytes_read(self, sizes: dict[str, int], where: Callable[[str], bool] = lambda key: True,
                   before: float = math.inf) -> int:
        total = 0.0
        for key, n in self.gets(where, before).items():
            size = sizes.get(key, 0)
            total += n * size / parts(size)
        return round(total)

    def bytes_written(self, where: Callable[[str], bool] = lambda key: True) -> int:
        return sum(sum(sizes) for key, sizes in self.uploads.items() if where(key))

    def first(self, op: str, where: Callable[[str], bool]) -> float:
        return min((r.time for r in self.requests if r.op == op and where(r.key)), default=math.inf)


def parts(size: int) -> int:
    return max(1, math.ceil(size / PART_BYTES)) if size >= PART_BYTES else 1


def _timestamp(text: str) -> float:
    fmt = "%Y/%m/%d %H:%M:%S.%f" if "." in text else "%Y/%m/%d %H:%M:%S"
    return datetime.strptime(text, fmt).timestamp()


def parse_log(path: Path, bucket: str, prefix: str) -> Traffic:
    """The S3 requests in an `rclone serve s3 -vv` log, by store key (under s3://bucket/prefix)."""
    strip = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def store_key(name: str) -> str:
        return name[len(strip):] if name.startswith(strip) else name

    traffic = Traffic()
    temp_sizes: dict[str, int] = {}
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = _LINE.match(raw)
        if line is None:
            continue
        when, message = _timestamp(line.group(1)), line.group(3)
        for op, pattern in (("GET", _GET), ("HEAD", _HEAD), ("PUT", _PUT), ("PART", _PART), ("LIST", _LIST)):
            found = pattern.match(message)
            if found and found.group(1) == bucket:
                traffic.requests.append(Request(when, op, store_key(found.group(2))))
                break
        else:
            if (found := _DELETE.match(message)) and found.group(1) == bucket:
                traffic.requests.append(Request(when, "DELETE", ""))
            elif found := _SIZE.match(message):
                temp_sizes[found.group(1)] = int(found.group(2))
            elif found := _MOVED.match(message):
                target = found.group(2)
                if target.startswith(f"{bucket}/"):
                    key = store_key(target[len(bucket) + 1:])
                    traffic.uploads.setdefault(key, []).append(temp_sizes.pop(found.group(1), 0))
                    traffic.upload_times.setdefault(key, []).append(when)
    return traffic


def is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in METADATA_FILES


