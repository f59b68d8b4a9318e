"""Fault injection for the reliability tests (tests/test_faults.py), and nothing else.

`SAERUN_FAULT=<point>:<n>` makes the process SIGKILL itself the n-th time (1-based) it reaches
`faults.point(<point>)`. The points sit where a real kill would hurt most:
    lm_forward   inside the language model's forward pass (activation production)
    train_step   mid-step: after backward, before the optimiser step
    checkpoint   a checkpoint's tensors written to the temp file, not yet renamed
    registry     inside a registry transaction, before COMMIT
    eval         during evaluation
`SAERUN_FAULT_DELAY=<point>:<seconds>` instead sleeps that long at every hit of the point, so a
test can catch a job mid-training (tests/test_slurm.py cancels one) on a fast machine.
Unset (always, outside those tests) a point costs one global lookup.
"""

from __future__ import annotations

import os
import signal
import time

_FAULT = os.environ.get("SAERUN_FAULT")
_POINT, _, _N = (_FAULT or "").partition(":")
_seen = 0
_DELAY_POINT, _, _DELAY = (os.environ.get("SAERUN_FAULT_DELAY") or "").partition(":")


def point(name: str) -> None:
    global _seen
    if _DELAY and name == _DELAY_POINT:
        time.sleep(float(_DELAY))
    if _FAULT is None or name != _POINT:
        return
    _seen += 1
    if _seen == int(_N or 1):
        os.kill(os.getpid(), signal.SIGKILL)
