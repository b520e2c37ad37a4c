"""The SNS notifier of campaign runs."""

from __future__ import annotations

import copy
from typing import Any

from airflow.providers.amazon.aws.notifications.sns import SnsNotifier


class RunSnsNotifier(SnsNotifier):
    """
    An :class:`SnsNotifier` that renders its templates on a copy at each call.

    The base notifier renders its fields in place, and the DAG processor runs the callbacks of
    several runs with the same DAG object, so every run after the first would send the first
    run's message.
    """

    def __call__(self, *args: Any) -> None:
        SnsNotifier.__call__(copy.copy(self), *args)
