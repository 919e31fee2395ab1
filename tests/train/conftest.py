"""Fixtures of the training tests. The session fixture `tiny` (tokenizers, base model, corpora) lives in
tests/conftest.py, shared with tests/e2e."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shared cores: one thread per process is several times faster than two fighting over them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
