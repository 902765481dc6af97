"""SIGTERM/SIGINT as a request to stop after the current step, and the test hooks that kill a run at a step."""

from __future__ import annotations

import os
import signal

from bornagain_kd.engine.distributed import DistInfo, max_over_ranks


STOP_CHECK_EVERY = 8


class SignalFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def requested(self, dist: DistInfo, step: int) -> bool:
        # Under DDP every rank must stop after the same step: the ranks agree every STOP_CHECK_EVERY steps
        # (one small all-reduce and read then, not a host synchronisation per step).
        if dist.enabled and step % STOP_CHECK_EVERY == 0:
            self.signum = int(max_over_ranks(self.signum))
            return self.signum != 0
        return self.signum != 0 and not dist.enabled

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def fault_injection(step: int, run_name: str) -> None:
    """Test hooks: BORNAGAIN_KILL_AT_STEP=N (or RUN:N, e.g. gen1:5) makes the process SIGKILL itself
    before global step N (of run RUN); BORNAGAIN_TERM_AT_STEP the same with SIGTERM (which lets the step
    finish). The resume tests use them to stop a run exactly mid-epoch."""
    for variable, sig in (("BORNAGAIN_KILL_AT_STEP", signal.SIGKILL), ("BORNAGAIN_TERM_AT_STEP", signal.SIGTERM)):
        at = os.environ.get(variable)
        if at is None:
            continue
        name, _, number = at.rpartition(":")
        if step == int(number) and name in ("", run_name):
            os.kill(os.getpid(), sig)
