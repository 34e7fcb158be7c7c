"""The local run's console: component lines from the runner's records, the rest to a log."""

import logging
import os
import time

from histo_testlib import run_python
from modules import progress
from pipeline import console


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_component_saying_ran_or_cached_with_seconds():
    lines, clock = [], FakeClock()
    handler = console.ComponentLines(lines.append, clock=clock)
    handler.handle(_record("absl", "Component %s is running.", ("Transform",)))
    clock.now += 12.5
    handler.handle(_record("absl", "Component %s is finished.", ("Transform",)))
    handler.handle(_record("absl", "Component %s is running.", ("Trainer",)))
    handler.handle(_record("absl", "A cached execution %d is used.", (7,)))
    handler.handle(_record("absl", "Publishing output artifacts %s", ("{...}",)))
    clock.now += 0.25
    handler.handle(_record("absl", "Component %s is finished.", ("Trainer",)))
    assert [line.split() for line in lines] == [
        ["Transform", "ran", "12.5", "s"],
        ["Trainer", "cached", "0.2", "s"],
    ]
    assert handler.done == 2 and handler.node is None


def test_progress_records_are_shown_and_nothing_else():
    lines = []
    handler = console.ComponentLines(lines.append)
    handler.handle(_record(progress.LOGGER_NAME, "head: %d epochs", (40,)))
    handler.handle(_record("apache_beam", "Worker: severity: WARN %s", ("...",)))
    handler.handle(_record("absl", "Going to run a new execution %d", (3,)))
    assert lines == ["    head: 40 epochs"]


def test_a_slow_component_gets_a_line_as_it_starts(monkeypatch):
    monkeypatch.setattr(console, "SLOW_START_SECONDS", 0.05)
    lines = []
    handler = console.ComponentLines(lines.append)
    handler.handle(_record("absl", "Component %s is running.", ("Evaluator",)))
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    handler.handle(_record("absl", "Component %s is finished.", ("Evaluator",)))
    assert lines[0] == "  Evaluator ..."
    assert lines[1].split()[:2] == ["Evaluator", "ran"]


def _record(name: str, msg: str, args: tuple) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, msg, args, None)


def test_native_and_python_output_go_to_the_log_and_only_console_lines_show(tmp_path):
    """fds 1 and 2 are redirected: C++ code and subprocesses write there too."""
    script = (
        "import os, subprocess, sys\n"
        "from pipeline import console\n"
        f"c = console.start(['--output-dir', {str(tmp_path)!r}])\n"
        "os.write(2, b'native stderr line\\n')\n"
        "print('python stdout line', flush=True)\n"
        "subprocess.run([sys.executable, '-c', 'print(\"worker line\")'])\n"
        "console.finish(c, 'summary line')\n"
    )
    shown = run_python(script)
    out = shown.stdout.splitlines()
    assert shown.stderr == ""
    assert out[0].startswith("full log: ") and out[1:] == ["summary line", out[0].split(" (")[0]]
    log_path = out[-1].removeprefix("full log: ")
    assert os.path.dirname(log_path) == str(tmp_path / "logs")
    with open(log_path) as f:
        log = f.read()
    for line in ("native stderr line", "python stdout line", "worker line", "summary line"):
        assert line in log


def test_verbose_keeps_everything_on_the_console(tmp_path):
    script = (
        "import os\n"
        "from pipeline import console\n"
        f"c = console.start(['--output-dir', {str(tmp_path)!r}, '--verbose'])\n"
        "os.write(2, b'native stderr line\\n')\n"
        "console.finish(c, 'summary line')\n"
    )
    shown = run_python(script)
    assert shown.stdout.splitlines() == ["summary line"]
    assert shown.stderr == "native stderr line\n"
    assert not (tmp_path / "logs").exists()


def test_without_real_file_descriptors_everything_stays_where_it_is(monkeypatch, capsys, tmp_path):
    """In a notebook (sys.stdout has no fileno) nothing is redirected and lines are printed."""
    monkeypatch.setattr(console, "_current", None)
    shown = console.start(["--output-dir", str(tmp_path)])
    shown.say("one line")
    assert shown.log_path is None and capsys.readouterr().out == "one line\n"
    assert not (tmp_path / "logs").exists()
