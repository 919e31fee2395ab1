"""Entrypoint of the quantize stage: a batch/v1 Job on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.quantize import run_quantize
from zhllama.run import job_main

if __name__ == "__main__":
    job_main("quantize", run_quantize)
