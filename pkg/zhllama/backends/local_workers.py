"""An indexed stage's N workers on this machine, as Kubernetes runs an Indexed Job's N pods.

Each process gets JOB_COMPLETION_INDEX and the worker count, and its output lines prefixed with its index. When
one fails, the others are stopped and the launcher exits with the failed worker's code: the run is Failed, what
the workers finished is kept, and the next run redoes the rest (Kubernetes would retry the index instead).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from zhllama.run.process import WORKERS_ENV


def _relay(stream: IO[bytes], prefix: bytes) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()


def run_workers(workers: int, command: list[str]) -> int:
    processes = []
    relays = []
    for index in range(workers):
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), WORKERS_ENV: str(workers)}
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(f"[launcher] worker {index}/{workers}: pid {process.pid}", flush=True)
        assert process.stdout is not None
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {index}] ".encode()), daemon=True)
        relay.start()
        processes.append(process)
        relays.append(relay)
    failed: int | None = None
    while failed is None:
        codes = [p.poll() for p in processes]  # every one polled: a dead worker is seen while the others run
        failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
        if all(code == 0 for code in codes):
            break
        time.sleep(0.2)
    if failed is not None:
        code = processes[failed].returncode
        print(f"[launcher] worker {failed} exited with {code}; stopping the others", flush=True)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
    for relay in relays:
        relay.join(timeout=5)
    if failed is None:
        return 0
    code = processes[failed].returncode
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


if __name__ == "__main__":
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m zhllama.backends.local_workers N COMMAND...")
    sys.exit(run_workers(int(sys.argv[1]), sys.argv[2:]))
