"""Progress bars of the long data steps (filter, train_tokenizer, shard): tqdm on stderr.

On a terminal the bar redraws in place (count, total, rate, ETA). When stderr is a file or a pipe (Slurm logs,
`2> log`) the same bar is written as a line of its own when it starts, at most every 30 s, and when it ends, so the
log stays readable. TQDM_* environment variables tune the rest (TQDM_DISABLE=1: no bars).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _Lines:
    """The stream of a bar that is not on a terminal: each redraw ('\\r' + bar) becomes a line of its own."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(description: str, *, total: int | None = None, unit: str = "docs") -> tqdm:
    """A tqdm bar on stderr, advanced by update(n) and ended by close(); `total` None shows a count and a rate (no
    ETA)."""
    stream = sys.stderr
    if stream.isatty():
        return tqdm(desc=description, total=total, unit=unit, file=stream, dynamic_ncols=True)
    return tqdm(
        desc=description,
        total=total,
        unit=unit,
        file=_Lines(stream),
        mininterval=LOG_INTERVAL_S,
        maxinterval=2 * LOG_INTERVAL_S,
        ascii=True,
    )
