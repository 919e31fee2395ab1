"""zhllama: turn an English-centric LLaMA-family model into a Chinese one (Chinese-LLaMA/Alpaca recipe)."""

__version__ = "0.1.0"
