"""Debian's chromium driven by Playwright (never ``playwright install``), and pixel checks of a canvas."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL without a GPU: SwiftShader, chromium's software renderer.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is absent: apt-get install -y --no-install-recommends chromium",
)


def launch(playwright: Any) -> Any:
    """:param playwright: ``sync_playwright()``'s object; a headless chromium."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)


def drawn_pixels(png: bytes, background: tuple[int, int, int] = (255, 255, 255)) -> dict[str, float]:
    """
    How much of a screenshot is not background, and how many distinct colours it holds.

    :param png: a PNG screenshot of the viewer.
    :param background: the viewer's background colour.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = list(image.getdata())
    drawn = [p for p in pixels if max(abs(a - b) for a, b in zip(p, background, strict=True)) > 40]
    blue = [p for p in drawn if p[2] > p[0] + 20]  # the first chain's colour is a dark blue
    orange = [p for p in drawn if p[0] > p[2] + 40 and p[0] > p[1]]  # the second chain's is orange
    return {
        "fraction": len(drawn) / len(pixels),
        "blue_fraction": len(blue) / max(1, len(drawn)),
        "orange_fraction": len(orange) / max(1, len(drawn)),
        "colours": len({(r // 16, g // 16, b // 16) for r, g, b in drawn}),
    }
