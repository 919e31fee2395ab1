"""A finished run notices when an input artifact it was made from has been replaced (an upstream re-run)."""

from pathlib import Path

from zhllama.run import RunContext, changed_inputs, outputs_done
from zhllama.spec import resolve_spec
from zhllama.store import open_store


def publish_upstream(store_uri: str, tmp_path: Path, text: str) -> None:
    source = tmp_path / f"up-{text}"
    source.mkdir()
    (source / "tokenizer.json").write_text(text)
    open_store(store_uri).publish_dir(source, "runs/up/outputs/tokenizer")


def test_outputs_record_their_inputs_and_notice_a_replaced_input(tmp_path: Path) -> None:
    store_uri = f"file://{tmp_path / 'store'}"
    publish_upstream(store_uri, tmp_path, "v1")
    spec = resolve_spec(
        "merge",
        size="tiny",
        run_id="down",
        values={"store": store_uri, "tokenizer": "run://up/outputs/tokenizer", "adapters": []},
    )
    ctx = RunContext.create(spec, tmp_path / "work")
    assert (ctx.input("run://up/outputs/tokenizer") / "tokenizer.json").read_text() == "v1"
    (ctx.output_dir("model") / "config.json").write_text("{}")
    manifest = ctx.publish("model")
    assert manifest is not None and set(manifest["input_manifests"]) == {"run://up/outputs/tokenizer"}
    assert changed_inputs(ctx.store, "down", ("model",)) == []
    assert outputs_done(ctx)

    publish_upstream(store_uri, tmp_path, "v2")
    assert changed_inputs(ctx.store, "down", ("model",)) == ["run://up/outputs/tokenizer"]
    assert not outputs_done(ctx)
