"""The prepare stage as a job: worker i of N (an Indexed Job's pod, or one of N local processes) tokenizes its
share of the files; worker 0 then waits for every unit and publishes the dataset's index, last.

Ordering rules:
  1. Every worker lists the sources and deals the files the same way (no coordinator, no messages).
  2. A unit is published whole (manifest last) or not at all: a killed worker leaves nothing a re-run would take
     as done, and what it finished is kept.
  3. The index is written only after every unit it lists is complete, so a complete dataset is usable.
"""

from __future__ import annotations

from zhllama.data.shards import write_dataset_index
from zhllama.errors import UserError
from zhllama.models.once import wait_for
from zhllama.prepare.dataset import build_index, tokenization_for
from zhllama.prepare.sources import corpus_files, deal
from zhllama.prepare.units import prepare_units
from zhllama.run import RunContext
from zhllama.run.process import WORKERS_ENV
from zhllama.spec import PrepareSpec


def run_prepare(ctx: RunContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, PrepareSpec)
    worker, workers = ctx.place.rank, ctx.place.world_size
    if worker >= workers:
        raise UserError(f"worker index {worker} (JOB_COMPLETION_INDEX) is not below the {workers} workers "
                        f"({WORKERS_ENV}); set {WORKERS_ENV} to the Job's completions")
    tokenization = tokenization_for(ctx.input(spec.tokenizer), spec.tokenizer, ctx.workdir, block_size=spec.block_size,
                                    shard_mb=spec.shard_mb, skip_bad_records=spec.skip_bad_records)
    files = corpus_files(spec.data, ctx.store)  # rule 1
    share = deal(files, workers)[worker]
    label = f"worker {worker}/{workers}: "
    counts = prepare_units(ctx.store, share, tokenization, label=label)  # rule 2
    print(f"{label}done: {counts['made']} tokenized, {counts['kept']} kept", flush=True)
    if worker != 0:
        return

    # Only the units still missing are asked about again: a 10k-file corpus costs HEADs for what is left.
    missing = {tokenization.unit_key(file): file.name for file in files}

    def all_complete() -> bool:
        for key in [key for key in missing if ctx.store.is_complete(key)]:
            del missing[key]
        return not missing

    wait_for(all_complete, f"the other workers' {len(missing)} files", spec.wait_timeout_s)  # rule 3
    index = build_index(ctx.store, spec.data, files, tokenization)
    write_dataset_index(index, ctx.output_dir("dataset"))
    report = index.report()
    for source in report["sources"]:
        print(f"{source['uri']}: weight {source['weight']:g}, {source['files']} files, {source['documents']} "
              f"documents, {source['blocks']} blocks, {source['bad_records']} bad records skipped", flush=True)
    ctx.publish("dataset", extra={"dataset": report})
