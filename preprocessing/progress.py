"""Live progress counts for the DirectRunner, whose workers are other processes.

Each worker process writes its running count to a small file in a local folder; a thread
in the launching process sums them and prints ``N/M images`` while the job runs. On
Dataflow, Flink or Spark the runner's own UI shows the Beam counters instead.
"""

import os
import sys
import threading
import uuid

WRITE_EVERY = 25


class WorkerCounter:
    """Per-process count, flushed to ``<folder>/<pid>-<random>`` by atomic replace."""

    def __init__(self, folder: str | None):
        self._folder = folder
        self._path: str | None = None
        self.count = 0

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.count % WRITE_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        if not self._folder or not os.path.isdir(self._folder):
            return
        if self._path is None:
            self._path = os.path.join(self._folder, f"{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(self.count))
        os.replace(tmp, self._path)


def total(folder: str) -> int:
    count = 0
    for name in os.listdir(folder):
        if not name.endswith(".tmp"):
            try:
                with open(os.path.join(folder, name)) as f:
                    count += int(f.read() or 0)
            except (OSError, ValueError):
                pass
    return count


class ProgressPrinter(threading.Thread):
    """Prints ``progress: N/M images`` to stderr every ``interval`` s while the count moves."""

    def __init__(self, folder: str, expected: int, interval: float = 2.0):
        super().__init__(daemon=True)
        self._folder, self._expected, self._interval = folder, expected, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        last = -1
        while not self._stop_event.wait(self._interval):
            count = total(self._folder)
            if count != last:
                print(f"progress: {count}/{self._expected} images", file=sys.stderr, flush=True)
                last = count

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
