"""Peak memory of a process tree (the process and every child, e.g. Beam's workers),
sampled in a thread: what the benchmarks report as "peak"."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import psutil


@dataclasses.dataclass
class Sample:
    at: float  # time.time()
    rss: int  # bytes, the process and all its children


class TreeMemory:
    """Samples the summed RSS of a process and its children every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2):
        self.samples: list[Sample] = []
        self._process = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self._process, *self._process.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree if p.is_running())
                self.samples.append(Sample(time.time(), rss))
            except psutil.Error:
                pass
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = math.inf) -> int:
        """The largest sample between start and end (time.time() values), 0 if none."""
        inside = [s.rss for s in self.samples if start <= s.at <= end]
        return max(inside, default=0)
