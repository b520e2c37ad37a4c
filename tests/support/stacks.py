"""A local stack (moto server + SageMaker emulator running the BoltzGen simulator) for a test scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sagemaker_emulator.stack import LocalStack, free_ports


@contextmanager
def simulated_stack(state: Path, buckets: list[str], **options: Any) -> Iterator[LocalStack]:
    """
    Start a stack on free ports with no GPU and a short stop grace; stop it on exit.

    :param state: the stack's folder.
    :param buckets: the buckets to create.
    :param options: more :class:`LocalStack` options (quotas, simulated GPUs, region).
    """
    moto_port, emulator_port = free_ports(2)
    local = LocalStack(
        state,
        moto_port=moto_port,
        emulator_port=emulator_port,
        simulated=True,
        buckets=buckets,
        gpus=0,
        stop_grace_seconds=1.0,
        **options,
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()
