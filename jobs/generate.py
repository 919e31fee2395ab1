"""Entrypoint of the generate stage: a batch/v1 Job on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.generate import run_generate
from zhllama.run import job_main

if __name__ == "__main__":
    job_main("generate", run_generate)
