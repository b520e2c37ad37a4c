"""Airflow's plugin loader reads plugin.py alone from the plugins folder.

The loader imports every module it finds under its bare file name, so ``sagemaker/requests.py``
would replace the ``requests`` library in ``sys.modules`` of the scheduler and the API server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def test_the_loader_finds_plugin_py_alone_and_it_registers_the_links() -> None:
    from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory

    plugins, errors = _load_plugins_from_plugin_directory(str(PLUGINS))
    assert errors == {}
    assert [type(p).__name__ for p in plugins] == ["BoltzGenPlugin"]
    assert all(isinstance(p, AirflowPlugin) for p in plugins)
    assert {link.name for link in plugins[0].operator_extra_links} == {
        "SageMaker Processing Job",
        "CloudWatch Logs",
        "Campaign results",
    }
    # The folder holds many modules; none of them became a top-level module of its bare name.
    assert len(list(PLUGINS.rglob("*.py"))) > 30
    shadowed = [
        name
        for name, module in list(sys.modules.items())
        if "." not in name
        and str(getattr(module, "__file__", "") or "").startswith(str(PLUGINS / "boltzgen_airflow"))
        and name not in ("plugin", "boltzgen_airflow")
    ]
    assert shadowed == []
