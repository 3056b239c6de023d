"""One event type for long work: the CLI draws it as a progress bar, the worker writes it to the run.

A defense calls `progress(ProgressEvent(...))` at every step it wants shown; `metrics` is set on the
event that closes an epoch (CA/ASR/RA of the model being trained), so the dashboard can draw curves
while the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class ProgressEvent:
    phase: str  # the defense's phase as its metrics name it, e.g. CBD's "f_B", ABL's "isolate"
    epoch: int  # 1-based epoch within the phase (0 before the first one ends)
    epochs: int  # epochs in the phase
    step: int = 0  # batches done in this epoch
    steps: int = 0  # batches in this epoch
    metrics: dict[str, Any] | None = None  # set when an epoch ends
    # The whole run (every phase), for an elapsed time and an estimate of the time left: the share of
    # the defense's epochs done (each epoch of each phase counts as one; None when unknown) and the
    # seconds since training started.
    run_fraction: float | None = None
    elapsed_seconds: float | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left if the rest goes at the pace so far (None before 5% of the run is done)."""
        if self.run_fraction is None or self.elapsed_seconds is None or self.run_fraction < 0.05:
            return None
        return self.elapsed_seconds * (1.0 - self.run_fraction) / self.run_fraction

    @property
    def fraction(self) -> float:
        """Fraction of the phase done, for a progress bar."""
        if self.epochs <= 0:
            return 1.0
        within = self.step / self.steps if self.steps else 0.0
        done = self.epoch if self.metrics is not None or not self.steps else self.epoch - 1 + within
        return max(0.0, min(1.0, done / self.epochs))


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """The default callback: show nothing."""


class Cancelled(Exception):
    """Raised inside training when the user cancels the run; what was written so far stays."""
