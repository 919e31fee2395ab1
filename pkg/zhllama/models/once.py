"""Built once per job, shared through the store: node 0 builds and publishes, the other nodes poll for it.

For work of unbounded length (a GGUF import, a corpus tokenization, another rank's upload): polling the store
instead of waiting in a collective means no process-group timeout can fire while one node works, and a build
that fails on node 0 is reported by node 0 while the others time out with a line naming what they waited for.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zhllama.store import ArtifactStore, node_lock

DEFAULT_WAIT_S = 3600
"""How long a node waits for node 0's build when the stage sets no limit of its own."""


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Poll `ready` until it holds; a one-line error naming `what` after `timeout_s`."""
    started = time.monotonic()
    announced = started
    while not ready():
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise TimeoutError(f"waited {waited:.0f} s for {what}; it did not come (see the other pods' logs)")
        if time.monotonic() - announced >= 60:
            print(f"still waiting for {what} ({waited:.0f} s)", flush=True)
            announced = time.monotonic()
        # Back off: a long build should not cost thousands of store requests per waiting node.
        time.sleep(min(poll_s * (1 + waited / 30), 15.0))


def built_once(
    store: ArtifactStore,
    key: str,
    build: Callable[[Path], dict[str, Any]],
    *,
    node_rank: int,
    what: str,
    timeout_s: float = DEFAULT_WAIT_S,
) -> Path:
    """The artifact `key`, built and published by node 0 when the store lacks it, awaited by the other nodes; then
    fetched once per node (the local path). `build` fills a directory and returns the manifest's extra fields."""
    if not store.is_complete(key):
        if node_rank == 0:
            # Several processes of node 0 (its ranks) may get here: one builds, the others find it complete.
            with node_lock(f"build:{store.uri(key)}"):
                if not store.is_complete(key):
                    with tempfile.TemporaryDirectory(prefix="zhllama-build-") as tmp:
                        extra = build(Path(tmp))
                        store.publish_dir(Path(tmp), key, extra=extra)
        else:
            wait_for(lambda: store.is_complete(key), f"node 0 to publish {what} ({store.uri(key)})", timeout_s)
    return store.fetch_dir(key)
