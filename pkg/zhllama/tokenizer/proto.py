"""SentencePiece's protobuf classes. They are generated at import time, so type checkers see them as Any."""

from __future__ import annotations

import importlib
from typing import Any

sp_pb2: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")
ModelProto = Any
"""A sentencepiece_model_pb2.ModelProto (alias for annotations)."""
