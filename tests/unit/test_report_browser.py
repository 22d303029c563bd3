"""The report page in a real browser: headless Chromium parses it and draws its charts.

Needs the ``chromium`` binary (Debian: ``apt-get install -y --no-install-recommends chromium``); skipped without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from fedstream.report import render_html
from fedstream.report.render import ACCEPTED_COLOR, REASON_COLORS, VERSION_COLOR
from tests.unit.test_report import SCRIPT, Page, fleet

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs the chromium binary: apt-get install -y --no-install-recommends chromium (Debian)",
)
SECTIONS_WITH_CHARTS = ["versions", "staleness", "activity", "clients", "privacy", "accuracy"]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(fleet(dp=True, accuracy=True).summary(bucket_seconds=60)), encoding="utf-8")
    return path


def chromium(page: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``page`` with its own throwaway profile (nothing of the user's is read or written)."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
        *arguments,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


def test_chromium_builds_every_chart_from_the_page(report_page: Path) -> None:
    dom = chromium(report_page, "--dump-dom").stdout
    page = Page(dom)
    bars = [attrs for name, attrs in page.tags if name == "rect" and attrs.get("class") == "bar"]
    paths = [attrs for name, attrs in page.tags if name == "path"]

    assert page.problems == []
    assert page.svg_in == SECTIONS_WITH_CHARTS
    assert len(paths) == 3  # versions over time, ε and accuracy per version
    assert all(str(attrs.get("d", "")).startswith("M") and str(attrs["d"]).count("L") >= 8 for attrs in paths)
    assert len(bars) > 20
    assert all(float(str(attrs["width"])) > 0 and float(str(attrs["height"])) > 0 for attrs in bars)
    assert page.count("script") == 0  # the rejection detail's <script> stayed text
    assert SCRIPT in "".join(page.text)


def _pixels_near(pixels: np.ndarray, color: str, tolerance: float = 12 / 255) -> int:
    """How many pixels are within ``tolerance`` of ``color`` (``#rrggbb``) in every channel."""
    wanted = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.all(np.abs(pixels[..., :3] - wanted) <= tolerance, axis=-1).sum())


def test_chromium_draws_the_charts(report_page: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    chromium(report_page, f"--screenshot={screenshot}", "--window-size=1200,2000", "--hide-scrollbars")
    pixels = image.imread(screenshot)  # float RGB(A) in [0, 1]

    assert pixels.shape[:2] == (2000, 1200)
    rgb = (pixels[..., :3] * 255).round().astype(np.uint32)
    distinct = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(distinct) > 50, "the page looks blank"
    # the first 2000 px hold the versions line, the staleness bars and the accepted/rejected bars
    assert _pixels_near(pixels, ACCEPTED_COLOR) > 20_000
    assert _pixels_near(pixels, VERSION_COLOR) > 500
    assert _pixels_near(pixels, REASON_COLORS[0]) > 500  # bad_signature, the most frequent reason
