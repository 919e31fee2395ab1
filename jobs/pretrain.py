"""Entrypoint of the pretrain stage: a PyTorchJob (torchrun) on Kubernetes; a subprocess under `ctl run --local`."""

from zhllama.run import job_main
from zhllama.train import run_pretrain

if __name__ == "__main__":
    job_main("pretrain", run_pretrain)
