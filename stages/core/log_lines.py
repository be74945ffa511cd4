"""Stage logs written line by line: when stderr is a file (a Snakemake log), progress bars that redraw themselves with
carriage returns (tqdm) become a plain line at most every `PROGRESS_SECONDS` (and their last state when they end),
and third-party noise (`NOISE`: model-loading bars, faiss's loader messages) is dropped."""

from __future__ import annotations

import atexit
import logging
import math
import re
import sys
import time
from typing import Callable, TextIO

PROGRESS_SECONDS = 30.0
NOISE = re.compile(r"^\s*(Loading weights|Loading checkpoint shards|Writing model shards)")
ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Terminal control sequences (tqdm moves the cursor for nested bars)."""
PACKAGE_LOGGER = "stages"
"""The loggers of the package's modules are ``stages.<module>`` (under either package name)."""
QUIET_LOGGERS = ("faiss", "faiss.loader")
"""Loggers that chatter at INFO (e.g. "Loading faiss with AVX2 support"): only their warnings are kept."""


class LineStream:
    """A text stream over ``raw`` that writes whole lines only (see the module docstring); everything else of a
    stream (fileno, encoding, ...) is ``raw``'s."""

    def __init__(self, raw: TextIO, interval: float = PROGRESS_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.raw, self.interval, self.clock = raw, interval, clock
        self.pending = ""  # the text since the last line end or carriage return
        self.redrawn = False  # whether ``pending`` is a progress bar's state (it came after a carriage return)
        self.shown = -math.inf  # when a progress line was last written

    def write(self, text: str) -> int:
        if self.redrawn and not text.startswith(("\r", "\n")):
            self.pending, self.redrawn = "", False  # another writer (a log line) while a bar is drawn: it redraws
        for piece in re.split(r"(\r|\n)", text):
            if piece == "\n":
                self._line(self.pending)
                self.pending, self.redrawn = "", False
            elif piece == "\r":
                if self.pending.strip() and self.clock() - self.shown >= self.interval:
                    self._line(self.pending)
                    self.shown = self.clock()
                self.pending, self.redrawn = "", True
            else:
                self.pending += piece
        return len(text)

    def _line(self, line: str) -> None:
        line = ESCAPES.sub("", line).rstrip()
        if line and not NOISE.match(line):
            self.raw.write(line + "\n")
            self.raw.flush()

    def finish(self) -> None:
        """Write what is left of an unfinished line."""
        if self.pending.strip():
            try:
                self._line(self.pending)
            except ValueError:  # the stream was closed already
                pass
        self.pending = ""

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


def line_by_line_stderr() -> None:
    """Route ``sys.stderr`` through a `LineStream` when it is not a terminal (once), and quiet `QUIET_LOGGERS`."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if isinstance(sys.stderr, LineStream) or sys.stderr.isatty():
        return
    sys.stderr = LineStream(sys.stderr)


@atexit.register
def _finish_stderr() -> None:
    if isinstance(sys.stderr, LineStream):
        sys.stderr.finish()


class KeptWarnings(logging.Handler):
    """The warnings the package's loggers (``stages.*``) give while a stage runs, kept for its summary.json so that
    the end of a run can show them (`stages.pipeline.snakefile.run_warnings`), not only its log."""

    KEEP = 20

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < self.KEEP:
            self.messages.append(record.getMessage())
        else:
            self.dropped += 1

    def __enter__(self) -> "KeptWarnings":
        logging.getLogger(PACKAGE_LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(self)

    def summary(self) -> dict:
        """``{"warnings": [...]}`` (with how many more the log holds), or nothing."""
        more = [f"... and {self.dropped} more (see the log)"] if self.dropped else []
        return {"warnings": self.messages + more} if self.messages else {}
