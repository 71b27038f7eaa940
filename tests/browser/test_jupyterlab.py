"""The tour notebook in a real JupyterLab, driven by headless Chromium (Debian's chromium and
chromedriver, through Selenium): run all cells, then check what a person would see.

The notebook runs from a copy in a temporary folder, so the committed one never changes. The
screenshot lands in ``out/browser/00_tour.png`` (``out/`` is git-ignored; CI keeps it).
Select with ``pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "00_tour.ipynb"
SCREENSHOT = ROOT / "out" / "browser" / "00_tour.png"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Bounds, not expectations: the run itself takes well under a minute.
SERVER_START_S, KERNEL_READY_S, RUN_ALL_S = 60, 90, 240
#: Settings for this JupyterLab only: every cell in the page (no windowing), no news.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition: object, timeout: float, what: str, poll: float = 0.5) -> object:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(poll)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab on 127.0.0.1 serving a copy of the notebook: (its URL with token, log)."""
    root, settings = tmp_path / "notebooks", tmp_path / "settings"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    for name, values in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token, port = secrets.token_hex(16), _free_port()
    log = tmp_path / "jupyterlab.log"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"jupyter lab exited ({server.returncode}):\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait(up, SERVER_START_S, "jupyter lab to answer")
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}", log
    finally:
        server.terminate()  # shuts its kernels down too
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Debian Chromium through Debian's chromedriver (nothing is downloaded)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium could not be installed: /usr/bin/chromium or "
                    "/usr/bin/chromedriver is missing (.ci/run installs them with "
                    "`apt-get install chromium chromium-driver`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # As root, offline: no sandbox, no GPU, and nothing that looks things up on the network.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(RUN_ALL_S)
    try:
        yield driver
    finally:
        driver.quit()


#: The open notebook: kernel status and, per code cell, execution count and errors.
NOTEBOOK_STATE = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext) { return null; }
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code').map(c => ({
    count: c.model.executionCount,
    errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error')
        .map(o => o.ename + ': ' + o.evalue),
}));
return {kernel: kernel ? kernel.status : null, cells: cells};
"""


def test_tour_runs_in_jupyterlab(browser, lab):
    url, log = lab
    browser.get(url)
    state = _wait(lambda: (s := browser.execute_script(NOTEBOOK_STATE)) and s["kernel"] == "idle"
                  and s, KERNEL_READY_S, f"the notebook and an idle kernel (log: {log})")
    assert state["cells"], "the notebook shows no code cells"
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.jupyterapp.commands.execute('notebook:run-all-cells').then(done, done);")

    def finished() -> dict | None:
        s = browser.execute_script(NOTEBOOK_STATE)
        ran = all(c["count"] is not None for c in s["cells"])
        return s if s["kernel"] == "idle" and (ran or any(c["errors"] for c in s["cells"])) \
            else None

    state = _wait(finished, RUN_ALL_S, "every cell to run")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    widget = browser.find_elements("css selector", ".jp-OutputArea-output .jupyter-widgets")
    if widget:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", widget[0])
    browser.save_screenshot(str(SCREENSHOT))

    errors = [e for c in state["cells"] for e in c["errors"]]
    assert not errors, f"cells raised: {errors}"
    assert all(c["count"] is not None for c in state["cells"])
    stderr = browser.find_elements(
        "css selector", '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    assert not [e.text for e in stderr if "Traceback" in e.text]

    # The plan picture: an SVG output, drawn (an image with a size).
    svgs = browser.find_elements("css selector", ".jp-RenderedSVG img, .jp-RenderedSVG svg")
    assert svgs, "no SVG output rendered"
    assert browser.execute_script(
        "return arguments[0].getBoundingClientRect().width", svgs[0]) > 100

    # The live dashboard: an ipywidgets box whose header counted the flights, over its chart.
    assert widget, "no ipywidget rendered"
    header = browser.find_element("css selector", ".jupyter-widgets.widget-html")
    assert "10,000 in" in header.text and "finished" in header.text
    chart = browser.find_element("css selector", ".jupyter-widgets.widget-image")
    assert browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", chart) > 100
