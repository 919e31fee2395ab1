"""Generation: the generate stage (batch answers to prompts) and `ctl chat`, with the paper's decoding settings."""

from zhllama.generate.chat import chat, chat_loop
from zhllama.generate.decoding import PAPER_DECODING, DecodingSettings, decoding_settings, generate
from zhllama.generate.stage import read_prompts, run_generate

__all__ = [
    "PAPER_DECODING",
    "DecodingSettings",
    "chat",
    "chat_loop",
    "decoding_settings",
    "generate",
    "read_prompts",
    "run_generate",
]
