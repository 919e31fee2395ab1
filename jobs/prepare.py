"""Entrypoint of the prepare stage: one pod of an Indexed Job on Kubernetes (its share by JOB_COMPLETION_INDEX);
one of N processes under `ctl run --local`."""

from zhllama.prepare import run_prepare
from zhllama.run import job_main

if __name__ == "__main__":
    job_main("prepare", run_prepare)
