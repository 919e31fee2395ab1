"""Entrypoint of the merge stage: a batch/v1 Job on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.merge import run_merge
from zhllama.run import job_main

if __name__ == "__main__":
    job_main("merge", run_merge)
