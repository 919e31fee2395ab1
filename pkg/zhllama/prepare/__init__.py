"""The prepare stage: corpora tokenized in parallel workers into the sharded token dataset pretraining streams."""

from zhllama.prepare.dataset import build_index, eos_of, tokenization_for, tokenizer_fingerprint
from zhllama.prepare.sources import CorpusFile, corpus_files, deal
from zhllama.prepare.stage import run_prepare
from zhllama.prepare.units import Tokenization, prepare_units

__all__ = ["CorpusFile", "Tokenization", "build_index", "corpus_files", "deal", "eos_of", "prepare_units",
           "run_prepare", "tokenization_for", "tokenizer_fingerprint"]
