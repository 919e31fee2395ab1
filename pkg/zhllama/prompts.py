"""The prompt templates of Chinese-Alpaca, in one place: SFT, evaluation and generation all import them.

The single-turn template is the paper's (Alpaca's, without the "### Input:" block: a non-empty input is
appended to the instruction on its own line, as Chinese-Alpaca's training and inference scripts do).

Multi-turn chat uses the seed projects' context template: the earlier turns are written as "Human: ..." /
"Assistant: ..." lines inside the one Alpaca instruction, followed by the new message, so a multi-turn prompt
keeps the single-turn layout the model was tuned on (`chat_prompt([], m) == alpaca_prompt(m)`).
"""

from __future__ import annotations

ALPACA_PROLOGUE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
INSTRUCTION_HEADER = "### Instruction:\n"
RESPONSE_HEADER = "### Response:\n"
HUMAN, ASSISTANT = "Human: ", "Assistant: "
ALPACA_TEMPLATE = ALPACA_PROLOGUE + INSTRUCTION_HEADER + "{instruction}\n\n" + RESPONSE_HEADER


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the Alpaca field is named `input`
    """The prompt for one instruction; the model's answer follows it directly."""
    if input:
        instruction = f"{instruction}\n{input}"
    return ALPACA_TEMPLATE.format(instruction=instruction)


def chat_prompt(history: list[tuple[str, str]], message: str) -> str:
    """The prompt for `message` after the (question, answer) turns in `history`, oldest first."""
    if not history:
        return alpaca_prompt(message)
    context = "".join(f"{HUMAN}{question}\n{ASSISTANT}{answer}\n" for question, answer in history)
    return alpaca_prompt(f"{context}{HUMAN}{message}")
