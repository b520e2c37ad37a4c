"""A real headless browser opens the report from disk: tables render, every plot decodes, CSS applies."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from report_html import parse
from report_synthetic import RenderedRun

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is absent: install Debian's chromium "
    "(apt-get install -y --no-install-recommends chromium) to run the browser check",
)
# Flags that keep the browser from reaching any network service on its own.
QUIET = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT = 1280, 2000


def _chromium(profile: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CHROMIUM), *QUIET, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    return stdout


def test_browser_renders_tables_decodes_plots_and_applies_css(
    partial_run: RenderedRun, tmp_path: Path
) -> None:
    index = partial_run.written[0]
    url = index.resolve().as_uri()
    screenshot = tmp_path / "report.png"
    # Both browsers run at once: each needs its own profile directory.
    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    shot = _chromium(
        tmp_path / "profile-shot", f"--screenshot={screenshot}", f"--window-size={WIDTH},{HEIGHT}", url
    )
    page = parse(_finish(dom))
    _finish(shot)

    body = page.find("body")
    images = list(page.iter("img"))
    assert len(images) == 1 + len(partial_run.report.distributions)
    # Set by the page's own script on load, from each image's naturalWidth.
    assert body.attrs["data-images-total"] == str(len(images))
    assert body.attrs["data-images-decoded"] == str(len(images))
    for table_id in ("spec-table", "cost-table", "shard-table", "problem-table"):
        assert page.find("table", id=table_id) is not None, table_id
    designs = list(page.find_all("table", class_="data designs"))
    assert [t.attrs["data-spec"] for t in designs] == [s.name for s in partial_run.specs]
    assert len(page.find(id="shard-table").rows()) == len(partial_run.manifest["shards"])

    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (WIDTH, HEIGHT)
    from matplotlib.image import imread

    pixels = imread(screenshot)
    # The masthead's dark blue proves the inline stylesheet applied; the page is not a blank render.
    red, green, blue = (round(float(c) * 255) for c in pixels[8, 8, :3])
    assert (red, green, blue) == (0x16, 0x32, 0x4F)
    assert len({tuple(p) for p in pixels[::40, ::40, :3].reshape(-1, 3).tolist()}) > 20
