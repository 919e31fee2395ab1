"""How much review sentiment a model's features hold: a linear probe at the position SFT answers from.

  nice -n 5 .venv/bin/python bench/sentiment_probe.py [--adapter DIR ...] [--tokenizer DIR] [--sizes 150 500 2000]
      [--heldout 500]

Why the demo's SFT does not reach 85 % held-out sentiment accuracy, measured rather than guessed. The model
(default: the embedded SmolLM2-135M with the demo's pretraining adapter and extended tokenizer, from
`make demo`'s store) reads each review in the exact Alpaca prompt `ctl run eval` uses; its features are the last
layer's hidden state at the final prompt position (where the label is generated) and the middle layer's mean over
the review. An L2-regularized logistic regression is fitted on the first N training reviews for each `--sizes`
N (regularization picked on a fifth of those N, never on the held-out reviews), then scored on the held-out
reviews (all 500, or the first `--heldout`). A bag-of-characters logistic regression on the same reviews is
the reference for what the data alone allows. One JSON line per (features, N): how separable N reviews make
the two labels in each representation; SFT at the demo's 30 steps sees about 150 sentiment examples.

About 0.3 s per review on 2 idle CPU cores (2500 reviews with the defaults: ~13 minutes).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.embedded.instructions import POSITIVE, sentiment_split
from zhllama.embedded.models import smollm2_gguf
from zhllama.models.loading import load_causal_lm
from zhllama.prompts import RESPONSE_HEADER, alpaca_prompt

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)


@torch.no_grad()
def model_features(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, records: list[dict]) -> torch.Tensor:
    # the tokens after the review: the blank line and the response header the prompt ends with
    after_review = len(tokenizer("\n\n" + RESPONSE_HEADER, add_special_tokens=False).input_ids)
    rows = []
    for record in records:
        ids = tokenizer(alpaca_prompt(record["instruction"], record["input"]), return_tensors="pt").input_ids
        hidden = model(ids, output_hidden_states=True, logits_to_keep=1).hidden_states
        review = len(tokenizer(record["input"], add_special_tokens=False).input_ids)
        end = ids.shape[1] - after_review
        middle = hidden[len(hidden) // 2][0, max(end - review, 0) : end].mean(0)
        rows.append(torch.cat([hidden[-1][0, -1], middle]).float())
    return torch.stack(rows)


def character_features(train: list[dict], texts: list[dict]) -> torch.Tensor:
    vocabulary = {c: i for i, (c, _) in enumerate(Counter(c for r in train for c in r["input"]).most_common(3000))}
    features = torch.zeros(len(texts), len(vocabulary))
    for row, record in enumerate(texts):
        for char in record["input"]:
            if char in vocabulary:
                features[row, vocabulary[char]] = 1.0
    return features


def fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def accuracy(x: torch.Tensor, y: torch.Tensor, model: tuple[torch.Tensor, torch.Tensor]) -> float:
    weight, bias = model
    return float(((x @ weight + bias > 0).float() == y).float().mean())


def probe(name: str, train_x: torch.Tensor, train_y: torch.Tensor, held_x: torch.Tensor, held_y: torch.Tensor,
          size: int) -> dict:
    x, y = train_x[:size], train_y[:size]
    mean, std = x.mean(0), x.std(0) + 1e-5
    x, held = (x - mean) / std, (held_x - mean) / std
    fold = max(size // 5, 1)  # the penalty is chosen on a fifth of the N training reviews
    penalty = max(PENALTIES, key=lambda p: accuracy(x[:fold], y[:fold], fit(x[fold:], y[fold:], p)))
    fitted = fit(x, y, penalty)
    return {"features": name, "train_reviews": size, "heldout_reviews": len(held_y), "penalty": penalty,
            "train_accuracy": round(accuracy(x, y, fitted), 4),
            "heldout_accuracy": round(accuracy(held, held_y, fitted), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Base model (HF directory or .gguf); default the "
                        "embedded SmolLM2-135M.")
    parser.add_argument("--adapter", type=Path, nargs="*",
                        default=[Path("artifacts/runs/demo-pretrain/outputs/adapter")],
                        help="Adapters applied in order (default: the demo's pretraining adapter).")
    parser.add_argument("--tokenizer", type=Path, default=Path("artifacts/runs/demo-tokenizer/outputs/tokenizer"),
                        help="Tokenizer directory (default: the demo's extended tokenizer).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 500, 2000], help="Training reviews per probe.")
    parser.add_argument("--heldout", type=int, default=500, help="Held-out reviews scored (of 500, first N).")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(args.model or smollm2_gguf(), args.adapter, args.tokenizer, device="cpu")
    train, heldout = sentiment_split()
    train, heldout = train[: max(args.sizes)], heldout[: args.heldout]
    train_y = torch.tensor([r["output"] == POSITIVE for r in train]).float()
    held_y = torch.tensor([r["output"] == POSITIVE for r in heldout]).float()
    for name, train_x, held_x in (
        ("model", model_features(model, tokenizer, train), model_features(model, tokenizer, heldout)),
        ("characters", character_features(train, train), character_features(train, heldout)),
    ):
        for size in args.sizes:
            print(json.dumps(probe(name, train_x, train_y, held_x, held_y, size)), flush=True)


if __name__ == "__main__":
    main()
