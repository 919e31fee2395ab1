"""GGUF export for llama.cpp (F16 ... Q4_0 with the gguf package, K-quants with llama.cpp) and its report."""

from zhllama.quantize.export import export_gguf
from zhllama.quantize.quantize import VALID_TYPES, check_types, quantize_all
from zhllama.quantize.stage import run_quantize

__all__ = ["VALID_TYPES", "check_types", "export_gguf", "quantize_all", "run_quantize"]
