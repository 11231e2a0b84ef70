"""Hydra callbacks used by the fault tests (loaded by the app through ``hydra.callbacks``)."""

from __future__ import annotations

import os
import signal
from typing import Any

from hydra.experimental.callback import Callback


class TerminateAfterFirstJob(Callback):
    """Sends this process SIGTERM when the first job of a sweep has ended, before the next starts."""

    def __init__(self) -> None:
        self.sent = False

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
