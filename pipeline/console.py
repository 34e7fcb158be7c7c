"""The local run's console: one line per component, progress lines, then the summary.

Everything else — TFX's protobuf dumps, Beam workers, TensorFlow's start-up lines, the
user-code wheel builds, dependency warnings — goes to a log file named in the first and the
last line. ``--verbose`` keeps all of it on the console instead.

The file descriptors 1 and 2 themselves are redirected (not only ``sys.stdout``), because
much of that output is written by C++ code and by Beam's worker subprocesses, which inherit
them. ``start`` therefore runs before TensorFlow is imported. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from modules import progress, quiet
from pipeline import settings

# LocalDagRunner's and the launcher's own messages (tfx/orchestration/local, portable).
_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."
_CACHED = "A cached execution %d is used."
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SLOW_START_SECONDS = 3.0  # a component still running after this gets a line of its own


def arguments() -> argparse.ArgumentParser:
    """The flags the console needs before anything heavy is imported (a parent parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output-dir", default=settings.read("HISTO_OUTPUT_DIR"))
    parser.add_argument("--verbose", action="store_true", help="show the full log on the console")
    return parser


@dataclasses.dataclass
class Console:
    say: Callable[[str], None]  # writes one line to the person's terminal
    log_path: str | None  # None: verbose, everything is on the console


_current: Console | None = None


def _log_path(output_dir: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.abspath(output_dir), "logs", f"run-{stamp}-{os.getpid()}.log")


def start(argv: list[str]) -> Console:
    """Points fds 1 and 2 at a new log file (unless --verbose); idempotent."""
    global _current
    if _current is not None:
        return _current
    args, _ = arguments().parse_known_args(argv)
    try:
        sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a notebook: no real fds
        _current = Console(lambda line: print(line, flush=True), None)
        return _current
    terminal = io.TextIOWrapper(
        io.FileIO(os.dup(sys.stdout.fileno()), "w"), line_buffering=True, encoding="utf-8"
    )
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            terminal.write(line + "\n")

    log_path = None
    if not args.verbose:
        log_path = _log_path(args.output_dir)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        quiet.dependency_warnings()  # Beam's worker subprocesses inherit it too
        sys.stdout.flush()
        sys.stderr.flush()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, sys.stdout.fileno())
        os.dup2(log_fd, sys.stderr.fileno())
        os.close(log_fd)
        say(f"full log: {log_path} (--verbose shows it here)")
    _current = Console(say, log_path)
    return _current


class ComponentLines(logging.Handler):
    """Turns the runner's log records into one line per component (ran or cached, seconds)
    and shows ``modules.progress`` records; a slow component also gets a line as it starts."""

    def __init__(self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        super().__init__(level=logging.INFO)
        self._say, self._clock = say, clock
        self.node: str | None = None  # the component running now
        self._started = 0.0
        self._cached = False
        self._timer: threading.Timer | None = None
        self.done = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == progress.LOGGER_NAME:
            self._say(f"    {record.getMessage()}")
        elif record.msg == _RUNNING and record.args:
            self._start(str(record.args[0]))
        elif record.msg == _CACHED:
            self._cached = True
        elif record.msg == _FINISHED and record.args:
            self._finish(str(record.args[0]))

    def _start(self, node: str) -> None:
        self.node, self._started, self._cached = node, self._clock(), False
        self._timer = threading.Timer(SLOW_START_SECONDS, self._say, [f"  {node} ..."])
        self._timer.daemon = True
        self._timer.start()

    def _finish(self, node: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        seconds = self._clock() - self._started
        self.done += 1
        self._say(f"  {node:<30} {'cached' if self._cached else 'ran':<6} {seconds:6.1f} s")
        self.node = None


def attach_logging(console: Console) -> ComponentLines:
    """Root logging: every record to stderr (the log file unless --verbose), the runner's
    component records and progress lines to the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    everything = logging.StreamHandler(sys.stderr)
    everything.setFormatter(logging.Formatter(LOG_FORMAT))
    lines = ComponentLines(console.say)
    root.addHandler(everything)
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    for noisy in ("apache_beam", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.INFO)  # TFX logs its components here
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO)
    return lines


def finish(console: Console, text: str) -> None:
    """The summary on the console (and in the log), then where the log is."""
    print(text, flush=True)  # the log (or the console when verbose)
    if console.log_path:
        for line in text.splitlines():
            console.say(line)
        console.say(f"full log: {console.log_path}")
