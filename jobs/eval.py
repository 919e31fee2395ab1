"""Entrypoint of the eval stage: a batch/v1 Job on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.eval import run_eval
from zhllama.run import job_main

if __name__ == "__main__":
    job_main("eval", run_eval)
