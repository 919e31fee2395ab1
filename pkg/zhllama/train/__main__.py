"""`python -m zhllama.train --spec spec.json` (or under torchrun): the pretrain or sft stage the spec names."""

from zhllama.runs import job_main
from zhllama.train.stage import run_train

if __name__ == "__main__":
    job_main("train", run_train)
