"""Loaded by ``tests/faketime/run.sh`` only (it puts this folder on ``PYTHONPATH``).

Under libfaketime 0.9.10 (Debian 12) with ``DONT_FAKE_MONOTONIC=1``, CPython 3.11's
``time.sleep`` fails with ``OSError: [Errno 22]``: it sleeps with
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` and libfaketime shifts that absolute deadline
by the fake offset (wolfcw/libfaketime#426). Faking the monotonic clock instead hangs every lock
wait with a timeout (``sem_clockwait`` on the real monotonic clock, wolfcw/libfaketime#390). So
the check keeps the monotonic clock real and sleeps with ``select``, whose timeout is relative.
"""

import os
import select
import time

if os.environ.get("DONT_FAKE_MONOTONIC") and "faketime" in os.environ.get("LD_PRELOAD", ""):
    _monotonic = time.monotonic

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = _monotonic() + seconds
        while (left := deadline - _monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep
