"""Grading in helper processes: `python -m trl_justrl.grading.worker`, one JSON line per answer each way.

A helper grades in its own main thread, where the grader's SIGALRM time limit works, so threads (an evaluation's
workers, a trainer's reward threads) and `grade_many` keep every time bound. The helpers are plain subprocesses,
not `multiprocessing` children: they never re-import the caller's `__main__`, so a script without an
`if __name__ == "__main__":` guard can grade from any thread. A helper says it is ready once its imports are done
(one that cannot start is an error); one that then overruns an answer's deadline is killed and replaced, and that
answer counts as wrong.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import site
import subprocess
import sys
import threading
from pathlib import Path

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder that holds trl_justrl/
START_TIMEOUT_S = 120  # a helper's imports (sympy, math-verify): about 1 s on an idle machine
READY = "ready"


def deadline_s(timeout_s: int) -> float:
    """How long one answer may take in a ready helper: the whole answer is bounded by `timeout_s` there; the rest is
    slack for a loaded machine (a helper stuck in C code past it is killed)."""
    return 2 * timeout_s + 10


def _command() -> tuple[list[str], dict[str, str], str | None]:
    """The helper's command line, environment and working folder: this package, never a `trl_justrl` folder in the
    caller's working directory (`-P` on Python 3.11+, the package's parent as working folder before that), and the
    package's parent on PYTHONPATH only when it is a checkout, not site-packages (which must stay behind the
    standard library)."""
    env = dict(os.environ)
    installed = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if _PACKAGE_PARENT not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "trl_justrl.grading.worker"], env, None
    return [sys.executable, "-m", "trl_justrl.grading.worker"], env, _PACKAGE_PARENT


class GradingProcess:
    """One helper process; `grade` sends it an answer and waits at most `deadline_s`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        argv, env, cwd = _command()
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd, text=True,
                                   bufsize=1)
        if self._read_line(process, START_TIMEOUT_S) != READY:
            # its output may close a moment before it can be reaped: wait briefly for the status it exits with
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            code = process.poll()
            self._kill(process)
            raise RuntimeError(f"The grading helper ({' '.join(argv)}) did not start"
                               + (f": it exited with status {code}; its error is above." if code is not None else
                                  f" within {START_TIMEOUT_S} s."))
        return process

    @staticmethod
    def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
        """One line from the helper ('' on end of file or when none comes within `timeout_s`)."""
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        return process.stdout.readline().strip() if ready else ""

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):  # closing a broken pipe flushes into it
                stream.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._kill(process)

    def grade(self, response: str, ground_truth: str, problem: str | None, timeout_s: int) -> bool:
        """`grade_answer(response, ground_truth, problem=problem, timeout_s=timeout_s)` in the helper; False when
        it overruns or dies on this answer. A ValueError raised there (an empty ground truth) is raised here, and
        so is a helper that cannot start."""
        if self._process is None or self._process.poll() is not None:
            self.stop()
            self._process = self._start()
        try:
            self._process.stdin.write(json.dumps([response, ground_truth, problem, timeout_s]) + "\n")
            self._process.stdin.flush()
            line = self._read_line(self._process, deadline_s(timeout_s))
        except OSError:
            line = ""
        if not line:
            self.stop()  # overran or died on this answer: it counts as wrong; the next starts a fresh helper
            return False
        reply = json.loads(line)
        if "error" in reply:
            raise ValueError(reply["error"])
        return bool(reply["correct"])


def grade_in_processes(items: list[tuple[str, str, str | None, int]], processes: int) -> list[bool]:
    """`grade_answer` over (response, ground_truth, problem, timeout_s) items on `processes` helpers, in order."""
    results: list[bool | None] = [None] * len(items)
    indices, lock = itertools.count(), threading.Lock()
    errors: list[BaseException] = []

    def drive() -> None:
        helper = GradingProcess()
        try:
            while not errors:
                with lock:
                    index = next(indices)
                if index >= len(items):
                    return
                results[index] = helper.grade(*items[index])
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)
        finally:
            helper.stop()

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(min(processes, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [bool(result) for result in results]
