"""A grading helper process (see `processes.py`): says `ready` once imported, then reads `[response, ground_truth,
problem, timeout_s]` JSON lines on stdin and answers each with `{"correct": bool}` (or `{"error": message}`) on its
own line, grading in its main thread."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, never into the replies
    sys.stdout = sys.stderr
    from .grader import grade_answer
    from .processes import READY

    replies.write(READY + "\n")
    for line in sys.stdin:
        response, ground_truth, problem, timeout_s = json.loads(line)
        try:
            reply = {"correct": grade_answer(response, ground_truth, problem=problem, timeout_s=timeout_s)}
        except ValueError as error:
            reply = {"error": str(error)}
        except Exception:  # sympy can raise on pathological input: not equivalent
            reply = {"correct": False}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
