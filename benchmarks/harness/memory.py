"""Resident memory over time: a process's RSS sampled in a background thread.

The reliability scenarios watch the server under test (no growth under a
soak, bounded under overload); the offline benchmark watches its own process
while a runner loads and runs.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil

MB = 1024 * 1024


class MemoryWatch:
    """Samples process `pid`'s resident memory every `interval_s` in a daemon thread, until `stop()`."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (time.perf_counter(), rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), self._process.memory_info().rss))
            except psutil.Error:  # the process is gone
                return
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, stop: float = float("inf")) -> np.ndarray:
        """RSS samples (bytes) taken in [start, stop] (perf_counter times)."""
        return np.array([rss for t, rss in list(self.samples) if start <= t <= stop], dtype=float)

    def peak_bytes(self, start: float = 0.0, stop: float = float("inf")) -> int:
        """The highest sample in [start, stop]; the current RSS if none was taken then."""
        window = self.between(start, stop)
        return int(window.max()) if window.size else self._process.memory_info().rss

    def mb_between(self, start: float, stop: float = float("inf")) -> np.ndarray:
        """RSS samples (MiB) taken in [start, stop]."""
        return self.between(start, stop) / MB

    def peak_mb(self, start: float = 0.0, stop: float = float("inf")) -> float:
        return self.peak_bytes(start, stop) / MB
