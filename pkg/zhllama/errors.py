"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message names the field or file and says what to do."""


class SpecError(UserError):
    """A run spec failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str = "spec") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class ArtifactError(UserError):
    """An artifact in the store is missing, incomplete (no manifest) or corrupt (checksum mismatch)."""


class StoreUnavailable(UserError):
    """The store cannot be used at all: its endpoint is unreachable, the credentials are missing or refused, or
    the bucket does not exist. The message names the store and what to check; it never contains a secret."""
