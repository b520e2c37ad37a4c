"""Handing this machine's GPUs to concurrent jobs, each job its own device indices."""

from __future__ import annotations

import threading


class GpuPool:
    """
    Device indices ``0..total-1`` shared by the jobs of one emulator.

    :param total: the number of GPUs on this machine.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = set(range(total))
        self._cond = threading.Condition()

    def acquire(self, count: int, cancelled: threading.Event, poll: float = 0.5) -> list[int] | None:
        """
        Wait for ``count`` free devices and take them; None when ``cancelled`` is set first.

        :param count: devices needed (more than ``total`` is capped at ``total``).
        :param cancelled: set when the job is stopped while waiting.
        :param poll: how often to look at ``cancelled``.
        """
        count = min(count, self.total)
        with self._cond:
            while len(self._free) < count:
                if cancelled.is_set():
                    return None
                self._cond.wait(poll)
            taken = sorted(self._free)[:count]
            self._free.difference_update(taken)
            return taken

    def release(self, devices: list[int]) -> None:
        """:param devices: indices returned by :meth:`acquire`."""
        with self._cond:
            self._free.update(devices)
            self._cond.notify_all()
