"""User-facing errors: each names the file (and line or id), what was expected, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class of every error that is the user's to fix (bad input, bad config)."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None, fix: str = ""):
        self.path = str(path) if path is not None else None
        self.line = line
        self.message = message
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        text = f"{where}{self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class DataError(PipelineError):
    """A dataset file is missing, malformed or inconsistent."""


class ConfigError(PipelineError):
    """The configuration names something that does not exist or does not fit together."""


class ArtifactError(PipelineError):
    """An artifact on disk is missing, incomplete or does not match its key."""
