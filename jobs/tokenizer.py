"""Entrypoint of the tokenizer stage: a batch/v1 Job on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.run import job_main
from zhllama.tokenizer import run_tokenizer

if __name__ == "__main__":
    job_main("tokenizer", run_tokenizer)
