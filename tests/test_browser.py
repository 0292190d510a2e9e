"""The review page in a real headless browser (Debian chromium): worklist rows, no console errors, a screenshot.

Skips when /usr/bin/chromium is absent (CI installs it: apt-get install chromium). The screenshot is kept at
results/report_screenshot.png in the repository (git-ignored) for people to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_summary import SLIDES, make_mini_cohort

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "results" / "report_screenshot.png"
# Recorded by the page copy under test: uncaught errors, failed resource loads and console.error calls.
ERROR_PROBE = """<script>
(function () {
  var errors = [];
  function note(msg) {
    errors.push(String(msg));
    document.documentElement.setAttribute('data-errors', errors.join(' | '));
  }
  window.addEventListener('error', function (e) {
    note(e.message || ('failed to load ' + (e.target && (e.target.src || e.target.href))));
  }, true);
  var ce = console.error;
  console.error = function () { note([].join.call(arguments, ' ')); ce.apply(console, arguments); };
  document.documentElement.setAttribute('data-errors', '');
  window.addEventListener('load', function () {
    var broken = [].filter.call(document.images, function (i) { return !i.complete || i.naturalWidth === 0; });
    if (broken.length) note(broken.length + ' image(s) did not decode');
    document.documentElement.setAttribute('data-loaded', 'yes');
  });
})();
</script>"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed at /usr/bin/chromium "
                       "(apt-get install chromium); the CI script installs it"),
]


def chromium(url: str, user_dir: Path, *extra: str, timeout: int = 90) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", "--window-size=1400,2000",
           "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    results = make_mini_cohort(tmp_path_factory.mktemp("mini_browser"))
    mp.undo()
    return results / "report.html"


def test_worklist_renders_with_every_row_and_no_errors(page, tmp_path):
    html = page.read_text(encoding="utf-8")
    # The page itself runs no script (its CSP forbids it); the copy under test allows only the inline probe.
    probed = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probed = probed.replace("<head>", "<head>\n" + ERROR_PROBE, 1)
    copy = page.with_name("report_probe.html")
    copy.write_text(probed, encoding="utf-8")
    proc = chromium(copy.as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-loaded="yes"' in dom, "page did not finish loading"
    errors = re.search(r'data-errors="([^"]*)"', dom)
    assert errors is not None and errors.group(1) == "", errors.group(1) if errors else dom[:500]
    table = dom[dom.index('id="worklist"'):dom.index("</table>", dom.index('id="worklist"'))]
    assert table.count('data-level="slide"') == len(SLIDES)
    assert table.count('data-level="case"') == len({c for c, _ in SLIDES.values()})
    assert "Decision support, not a diagnosis" in dom[:dom.index('id="worklist"')]


def test_no_console_messages_and_a_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    proc = chromium(page.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # the page is drawn, not blank
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


def test_sample_cohort_page_puts_the_carcinoma_cases_on_top(cohort_run, tmp_path):
    """The demo's page (the sample cohort) in the browser: cases A and B (suspected metastatic carcinoma) first,
    then C (sarcoma), then D (no tumour); the screenshot people look at is of this page."""
    page = cohort_run / "results" / "report.html"
    proc = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r'<tr[^>]*data-level="case"[^>]*>(.*?)</tr>', proc.stdout, flags=re.S)
    cells = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S)]
             for r in rows]
    order = [next(c for c in row if c in {"A", "B", "C", "D"}) for row in cells]
    calls = {case: next(c for c in row if c.startswith(("favours", "no tumour", "refer")))
             for case, row in zip(order, cells, strict=True)}
    assert set(order[:2]) == {"A", "B"} and order[2:] == ["C", "D"], order
    assert calls == {"A": "favours metastatic carcinoma", "B": "favours metastatic carcinoma",
                     "C": "favours sarcoma", "D": "no tumour"}, calls
    shot = tmp_path / "report.png"
    assert chromium(page.as_uri(), tmp_path / "profile2", f"--screenshot={shot}").returncode == 0
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
