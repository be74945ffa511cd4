"""Seconds of a training step's parts that cost no sync to take: CUDA timing events on a GPU, the host clock
elsewhere; read (``float()``) later, by the training loop."""

from __future__ import annotations

import time

import torch


class Interval:
    """Seconds between two `mark` s, read only when converted with ``float()`` (the training loop does, later), so
    that taking them does not wait for the device. On CUDA the device's time between two timing events (reading
    waits for the second one), elsewhere the host's between two ``time.perf_counter()`` values."""

    __slots__ = ("start", "end")

    def __init__(self, start: float | torch.cuda.Event, end: float | torch.cuda.Event):
        self.start, self.end = start, end

    def __float__(self) -> float:
        if isinstance(self.start, torch.cuda.Event):
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return self.end - self.start

    def __repr__(self) -> str:
        return f"Interval({float(self):.6f} s)"


def mark(device: torch.device) -> float | torch.cuda.Event:
    """A point in time that costs no sync: a timing event queued on the current CUDA stream, else the host clock."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event
    return time.perf_counter()
