"""The tokenizer stage through its job entrypoint, against a directory store and a real S3 server."""

from pathlib import Path

import pytest

from zhllama.backends.local import LocalBackend
from zhllama.spec import resolve_spec
from zhllama.store import open_store

pytestmark = pytest.mark.slow


def run_tokenizer(store_uri: str, run_id: str) -> dict[str, dict[str, object]]:
    backend = LocalBackend(store_uri)
    spec = resolve_spec(
        "tokenizer",
        size="tiny",
        run_id=run_id,
        values={"store": store_uri, "base_tokenizer": "embedded://smollm2-135m", "vocab_size": 3000},
    )
    backend.submit(spec)
    final = backend.wait(run_id)
    assert final.state == "Succeeded", "\n".join(backend.logs(run_id))
    manifest = open_store(store_uri).read_manifest(f"runs/{run_id}/outputs/tokenizer")
    files: dict[str, dict[str, object]] = manifest["files"]
    return files


def test_s3_and_directory_stores_give_byte_identical_tokenizers(tmp_path: Path, s3_env: str) -> None:
    on_disk = run_tokenizer(f"file://{tmp_path / 'store'}", "tok-dir")
    on_s3 = run_tokenizer(f"{s3_env}/{tmp_path.name}", "tok-s3")
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chinese_sp.model"}
    assert tokenizer_files <= set(on_disk)
    for name in tokenizer_files:
        assert on_disk[name]["sha256"] == on_s3[name]["sha256"], name
