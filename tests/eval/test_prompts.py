from __future__ import annotations

from zhllama.prompts import ALPACA_PROLOGUE, alpaca_prompt, chat_prompt

PAPER_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def test_alpaca_prompt_is_the_papers_template() -> None:
    assert alpaca_prompt("把这句话翻译成英文") == PAPER_TEMPLATE.format(instruction="把这句话翻译成英文")
    assert alpaca_prompt("翻译成英文", input="我爱北京") == PAPER_TEMPLATE.format(instruction="翻译成英文\n我爱北京")
    assert alpaca_prompt("翻译", input="") == PAPER_TEMPLATE.format(instruction="翻译")


def test_chat_prompt_puts_the_human_assistant_context_inside_one_prologue() -> None:
    assert chat_prompt([], "你好") == alpaca_prompt("你好")
    prompt = chat_prompt([("你好", "你好！有什么可以帮你？"), ("北京在哪？", "中国北方。")], "那上海呢？")
    assert prompt == (
        ALPACA_PROLOGUE
        + "### Instruction:\n"
        + "Human: 你好\nAssistant: 你好！有什么可以帮你？\n"
        + "Human: 北京在哪？\nAssistant: 中国北方。\n"
        + "Human: 那上海呢？\n\n### Response:\n"
    )
    assert prompt.count(ALPACA_PROLOGUE) == 1
