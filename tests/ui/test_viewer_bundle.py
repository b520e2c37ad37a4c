"""The committed 3D viewer bundle is the one the lockfile pins, and the plugin serves it."""

from __future__ import annotations

import json
from pathlib import Path

from boltzgen_airflow.ui.app import STATIC_DIR

VIEWER = STATIC_DIR.parent / "viewer"


def test_the_bundle_is_the_locked_3dmol_release() -> None:
    lock = json.loads((VIEWER / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/3dmol"]
    assert json.loads((VIEWER / "package.json").read_text())["dependencies"]["3dmol"] == locked["version"]
    notice = (STATIC_DIR / "vendor" / "3Dmol-min.js.LICENSE.txt").read_text()
    assert f"3dmol v{locked['version']}" in notice
    bundle = (STATIC_DIR / "vendor" / "3Dmol-min.js").read_text()
    assert bundle.startswith("/*! For license information please see 3Dmol-min.js.LICENSE.txt */")
    assert "$3Dmol" in bundle and "</script" not in bundle
    assert "BSD" in (STATIC_DIR / "vendor" / "3Dmol-LICENSE.txt").read_text()


def test_the_package_data_ships_the_static_files() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for pattern in ("ui/static/*", "ui/static/vendor/*", "ui/templates/*"):
        assert f'"{pattern}"' in pyproject
