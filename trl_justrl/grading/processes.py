"""Grading in helper processes: `python -m trl_justrl.grading.worker`, one JSON line per answer each way.

A helper grades in its own main thread, where math-verify's SIGALRM time limit works, so threads (an evaluation's
workers, a trainer's reward threads) and `grade_many` keep every time bound. The helpers are plain subprocesses,
not `multiprocessing` children: they never re-import the caller's `__main__`, so a script without an
`if __name__ == "__main__":` guard can grade from any thread. A helper that overruns its deadline is killed and
replaced, and its answer counts as wrong.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder that holds trl_justrl/


def deadline_s(timeout_s: int) -> float:
    """How long one answer may take in a helper: a parse of each side, comparisons of up to a few values (each
    bounded by `timeout_s` there) and, for the first answer, the helper's start-up (imports)."""
    return 4 * timeout_s + 30


class GradingProcess:
    """One helper process; `grade` sends it an answer and waits at most `deadline_s`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._answered = 0  # answers from the current process: one that dies before its first cannot start

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self._answered = 0
        # cwd: `-m` puts the working folder first on sys.path, where another checkout must not shadow this package
        return subprocess.Popen([sys.executable, "-m", "trl_justrl.grading.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, cwd=_PACKAGE_PARENT, text=True, bufsize=1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
            self._process = None

    def grade(self, response: str, ground_truth: str, problem: str | None, timeout_s: int) -> bool:
        """`grade_answer(response, ground_truth, problem=problem, timeout_s=timeout_s)` in the helper; False when
        it overruns or dies. A ValueError raised there (an empty ground truth) is raised here."""
        if self._process is None or self._process.poll() is not None:
            self.stop()
            self._process = self._start()
        try:
            self._process.stdin.write(json.dumps([response, ground_truth, problem, timeout_s]) + "\n")
            self._process.stdin.flush()
            ready, _, _ = select.select([self._process.stdout], [], [], deadline_s(timeout_s))
            line = self._process.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            exit_code = self._process.poll()
            if exit_code is not None and self._answered == 0:
                self.stop()
                raise RuntimeError(f"The grading helper (`{sys.executable} -m trl_justrl.grading.worker`) exited "
                                   f"with status {exit_code} before its first answer; its error is above.")
            self.stop()  # overran or died on this answer: it counts as wrong; the next starts a fresh helper
            return False
        self._answered += 1
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
