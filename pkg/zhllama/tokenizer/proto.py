"""SentencePiece's protobuf classes, and the one loader of .model files. The classes are generated at import time,
so type checkers see them as Any."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from zhllama.errors import UserError

sp_pb2: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")
ModelProto = Any
"""A sentencepiece_model_pb2.ModelProto (alias for annotations)."""


def load_sentencepiece(file: Path, what: str = "SentencePiece model",
                       fix: str = "give a .model file written by sentencepiece") -> ModelProto:
    """The model proto in `file`; a UserError naming `what` (the spec field it came from) and `fix` when the file
    is not a SentencePiece model (protobuf parses many other files without complaint, hence the pieces check)."""
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(file).read_bytes())
    except DecodeError as error:
        raise UserError(f"{what} {file}: not a SentencePiece model ({error}); {fix}") from error
    if not proto.pieces:
        raise UserError(f"{what} {file}: not a SentencePiece model (no pieces); {fix}")
    return proto
