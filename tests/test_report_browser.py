"""report.html in a real browser: headless Chromium (Debian's `chromium`, which .ci/run installs
when it is missing) loads the report of a sweep with every section (tables, plots, the test-set
media of each mode), every image must decode (non-zero natural size) and the console must stay
free of errors; a screenshot is kept (its path is printed; under $CVAE_TEST_ARTIFACTS too when
that is set)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis.report import build_report
from test_analysis import fake_evaluate, make_experiment  # noqa: F401 (a fixture)

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# Put first in <head> of a copy of the page: records errors (script errors, resources that fail
# to load, console.error) and, once the page has loaded, every image's natural size, in a
# <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
window.probeErrors = [];
const consoleError = console.error;
console.error = (...args) => { window.probeErrors.push(args.join(" ")); consoleError(...args); };
window.addEventListener("error", e => window.probeErrors.push(
  e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "?")
                .slice(0, 60))), true);
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight]),
    errors: window.probeErrors});
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--no-first-run", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (Debian package "
                    "`chromium`; .ci/run installs it with apt-get when apt-get works)")
def test_report_html_renders_in_headless_chromium(tmp_path, fake_evaluate):  # noqa: F811
    out = tmp_path / "report"
    build_report(make_experiment(tmp_path), out, quiet=True, top_k=3)
    page = out / "report.html"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))

    run = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, (run.stdout[-2000:], run.stderr[-2000:])
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == []
    images = result["images"]
    assert len(images) >= 12  # 8 plots, 3 media images per evaluated mode
    assert all(width > 0 and height > 0 for _, width, height in images), images

    shot = tmp_path / "report.png"
    run = chromium("--window-size=1200,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
    if os.environ.get("CVAE_TEST_ARTIFACTS"):
        keep = Path(os.environ["CVAE_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")
    print(f"screenshot: {shot}")
