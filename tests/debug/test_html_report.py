"""The dump directory's HTML report renders in a real browser: headless Chromium takes a screenshot (checked for
the report's colours: white page, red removed nodes, green added nodes) and dumps the DOM (checked for the region
tables). CI installs Chromium (.ci/run); without it this test fails and says how to install it."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import models
import slipstream
from png import color_counts, read_png
from slipstream.debug.pictures import COLORS


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed to check the HTML report: install it with `apt-get install -y "
                "chromium` (Debian/Ubuntu; .ci/run does this)")


def _run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, timeout=600, cwd=tmp_path)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    out = tmp_path_factory.mktemp("dump")
    slipstream.optimize(models.build("llama", num_hidden_layers=1), verify=True, dump_dir=out)
    return out / "report.html"


def test_report_renders_in_headless_chromium(report_html, tmp_path):
    shot = tmp_path / "shot.png"
    done = _run_chromium(tmp_path, "--window-size=1200,1600", "--force-device-scale-factor=0.5",
                         f"--screenshot={shot}", report_html.as_uri())
    assert shot.is_file(), f"chromium wrote no screenshot: {done.stderr.decode()[-500:]}"
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (600, 800)
    counts = color_counts(rows)
    pixels = width * height
    assert counts[b"\xff\xff\xff"] > pixels * 0.5  # a white page ...
    rgb = {k: bytes.fromhex(v[1:]) for k, v in COLORS.items()}
    assert counts[rgb["removed"]] > 500 and counts[rgb["added"]] > 200  # ... with the regions' colours painted
    assert len(counts) > 50  # and text (anti-aliased glyphs), not a flat fill


def test_rendered_dom_holds_the_region_tables(report_html, tmp_path):
    done = _run_chromium(tmp_path, "--dump-dom", report_html.as_uri())
    dom = done.stdout.decode()
    diff_text = (report_html.parent / "diff.txt").read_text()
    hunks = sum(line.startswith("@@ ") for line in diff_text.splitlines())
    assert hunks == 6 and dom.count('<table class="region">') == hunks
    assert '<table class="verify">' in dom and dom.count("<svg") == 2 * hunks
    assert "slipstream.rms_norm" in dom and "model.layers.0.input_layernorm" in dom
