"""The table of embedded names and the files inside installed packages they are built from."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from zhllama.errors import UserError

Builder = Callable[[Path], None]
"""Writes the files of one embedded artifact into an empty directory, byte-identical on every call."""

BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    def register(func: Builder) -> Builder:
        BUILDERS[name] = func
        return func

    return register


def package_file(package: str, *parts: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"the package {package!r} is not installed; run `make setup`")
    path = Path(next(iter(found.submodule_search_locations)), *parts)
    if not path.exists():
        raise UserError(f"{path} is missing from the installed {package!r} package; reinstall it")
    return path
