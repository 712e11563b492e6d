"""A progress line on stderr for long streaming jobs (count, rate, elapsed), at most a few updates per
second."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(
        self, description: str, unit: str = "docs", total: int | None = None, every_s: float = 0.5
    ) -> None:
        self.description, self.unit, self.total, self.every_s = description, unit, total, every_s
        self.count = 0
        self.start = self.last_shown = time.perf_counter()
        self.interactive = sys.stderr.isatty()

    def update(self, amount: int = 1) -> None:
        self.count += amount
        now = time.perf_counter()
        # Non-interactive logs (Slurm) get a line every 30 s instead of a redrawn one.
        if now - self.last_shown >= (self.every_s if self.interactive else 30.0):
            self.last_shown = now
            self._show(now, end="\r" if self.interactive else "\n")

    def close(self) -> float:
        now = time.perf_counter()
        self._show(now, end="\n")
        return now - self.start

    def _show(self, now: float, end: str) -> None:
        elapsed = max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total else ""
        sys.stderr.write(
            f"{self.description}: {self.count}{total} {self.unit} "
            f"[{elapsed:.1f}s, {self.count / elapsed:,.0f} {self.unit}/s]{end}"
        )
        sys.stderr.flush()
