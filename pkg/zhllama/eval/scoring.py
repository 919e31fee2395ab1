"""Log-likelihood of continuations: the shared core of exam scoring and the demo's classifiers."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.models.loading import encode, model_device


def continuation_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, continuation: str) -> list[int]:
    """The tokens `continuation` becomes right after `prompt`.

    Tokenized in context, because SentencePiece and byte-level BPE spell a piece differently after text
    ("：A" is not "：" + "▁A"); falls back to tokenizing it alone when the joint tokenization moves the boundary.
    """
    prompt_ids = encode(tokenizer, prompt)
    joint_ids = encode(tokenizer, prompt + continuation)
    if joint_ids[: len(prompt_ids)] == prompt_ids and len(joint_ids) > len(prompt_ids):
        return joint_ids[len(prompt_ids) :]
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def score_choices(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, choices: list[str]
) -> list[float]:
    """Log-probability of each choice as the continuation of `prompt` (summed over the choice's tokens).

    Single-token choices (exam letters) cost one forward pass: the next-token distribution after the prompt.
    """
    prompt_ids = encode(tokenizer, prompt)
    choice_ids = [continuation_ids(tokenizer, prompt, choice) for choice in choices]
    device = model_device(model)
    if all(len(ids) == 1 for ids in choice_ids):
        logits = model(torch.tensor([prompt_ids], device=device)).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [logprobs[ids[0]].item() for ids in choice_ids]
    scores = []
    for ids in choice_ids:
        sequence = torch.tensor([prompt_ids + ids], device=device)
        logits = model(sequence).logits[0, len(prompt_ids) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        scores.append(logprobs.gather(1, torch.tensor(ids, device=device)[:, None]).sum().item())
    return scores
