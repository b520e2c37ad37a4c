"""
Where the package finds its data and how often it polls: the ``[boltzgen]`` section of Airflow's
configuration, with environment fallbacks.

Each setting is read, first match wins, from the environment variable ``BOLTZGEN_<NAME>``, the
option ``[boltzgen] <name>`` of Airflow's configuration (``AIRFLOW__BOLTZGEN__<NAME>`` in the
environment, or ``airflow.cfg`` once Airflow's configuration is loaded), and the default.
``include_dir`` moves the three data folders at once (one setting on MWAA); each folder may also
be set on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SECTION = "boltzgen"
#: the default include folder: ``include/`` of the project (beside ``plugins/``)
DEFAULT_INCLUDE_DIR = Path(__file__).resolve().parents[2] / "include"
DEFAULT_CHECK_INTERVAL = 30


def setting(name: str) -> str | None:
    """
    Return one setting's value, or None when it is not set anywhere.

    :param name: the option name, e.g. ``check_interval``.
    """
    value = os.environ.get(f"BOLTZGEN_{name.upper()}") or os.environ.get(
        f"AIRFLOW__{SECTION.upper()}__{name.upper()}"
    )
    if value:
        return value
    # Read airflow.cfg only inside Airflow's own processes: importing its configuration elsewhere
    # (the CLI, the DAG-free tools) would create an Airflow home as a side effect.
    configuration = sys.modules.get("airflow.configuration")
    conf = getattr(configuration, "conf", None)
    if conf is not None:
        found = conf.get(SECTION, name, fallback=None)
        if found:
            return str(found)
    return None


def include_dir() -> Path:
    """The folder holding ``configs/`` and ``step_scripts/`` (``include_dir``)."""
    value = setting("include_dir")
    return Path(value) if value else DEFAULT_INCLUDE_DIR


def configs_dir() -> Path:
    """The instance catalog, presets and stage time model (``config_dir``; ``<include>/configs``)."""
    value = setting("config_dir")
    return Path(value) if value else include_dir() / "configs"


def campaigns_dir() -> Path:
    """The campaign files (``campaigns_dir``; ``<include>/configs/campaigns``)."""
    value = setting("campaigns_dir")
    return Path(value) if value else include_dir() / "configs" / "campaigns"


def step_scripts_dir() -> Path:
    """The step scripts staged for every job (``step_scripts_dir``; ``<include>/step_scripts``)."""
    value = setting("step_scripts_dir")
    return Path(value) if value else include_dir() / "step_scripts"


def check_interval() -> int:
    """Seconds between SageMaker and S3 polls (``check_interval``, default 30, at least 1)."""
    try:
        return max(1, int(setting("check_interval") or DEFAULT_CHECK_INTERVAL))
    except ValueError:
        return DEFAULT_CHECK_INTERVAL


DEFAULT_CLAIM_START_TIMEOUT = 900
DEFAULT_COMMIT_WAIT = 300


def _seconds(name: str, default: int) -> int:
    try:
        return max(0, int(setting(name) or default))
    except ValueError:
        return default


def claim_start_timeout() -> int:
    """
    Seconds another task's claim may stand before its job exists (``claim_start_timeout``, default
    900); after that its owner is taken for gone and the claim is taken over.
    """
    return _seconds("claim_start_timeout", DEFAULT_CLAIM_START_TIMEOUT)


def commit_wait() -> int:
    """
    Seconds a stage sensor waits for a commit that nobody has claimed (``commit_wait``, default
    300): a stage left out of a run waits that long for another run to claim it.
    """
    return _seconds("commit_wait", DEFAULT_COMMIT_WAIT)
