"""Every chapter runs in JupyterLab, in a real (headless) Chromium, as a student would run it.

For each chapter a private JupyterLab server (``lab_server`` in ``conftest.py``) opens the
notebook in a fresh workspace; the test waits for ``Python 3 (ipykernel) | Idle`` in the status
bar, clicks Run → Run All Cells, waits until the kernel is idle with no cell queued, and checks:

- every non-empty code cell got an execution count (Run All stops at the first error);
- no error output: no cell output of type ``error`` in the notebook model, and no rendered
  stderr output (JupyterLab renders both errors and stderr streams as
  ``.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]``, including those
  inside widget ``Output`` areas such as ``interact``'s) that shows a traceback or an
  ``...Error``/``...Exception`` name; no "Error displaying widget"/"Error rendering output";
- when the chapter's source mentions ``ipywidgets`` or ``interact``: at least one widget view
  (``.jupyter-widgets``) is rendered and visible.

A screenshot of each chapter goes to ``test-artefacts/browser/<chapter>.png``; the JupyterLab
log is attached to failing reports and saved as ``test-artefacts/browser/jupyterlab.log``. Each
chapter's kernel is shut down through the REST API before the next one is opened. JupyterLab's
autosave is off, so the chapters in the working tree are never rewritten.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package (never run
``playwright install``). Without them the tests skip, unless ``VIRTCORE_REQUIRE_BROWSER=1`` (set
by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    PLAYWRIGHT_IMPORT_ERROR: ImportError | None = exc
else:
    PLAYWRIGHT_IMPORT_ERROR = None

REQUIRE_BROWSER = os.environ.get("VIRTCORE_REQUIRE_BROWSER") == "1"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
KERNEL_READY_TIMEOUT = 60.0
RUN_ALL_TIMEOUT = 120.0
VIEWPORT = {"width": 1280, "height": 900}
MAX_SCREENSHOT_HEIGHT = 40000
IDLE_TEXT = "(ipykernel) | Idle"

ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b")
WIDGET_HINT = re.compile(r"ipywidgets|\binteract")

#: Collects, in the page, what the checks need (cells from the model, outputs from the DOM).
STATE_JS = """
() => {
  const status = document.querySelector('#jp-main-statusbar');
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const cells = [];
  if (panel && panel.content && panel.content.model) {
    const model = panel.content.model.cells;
    for (let i = 0; i < model.length; i++) {
      const c = model.get(i);
      if (c.type !== 'code') continue;
      const outputs = [];
      for (let j = 0; j < c.outputs.length; j++) {
        const o = c.outputs.get(j).toJSON();
        outputs.push(o.output_type === 'error' ? `${o.ename}: ${o.evalue}` : o.output_type);
      }
      cells.push({index: i, empty: c.sharedModel.getSource().trim() === '',
                  count: c.executionCount, outputs: outputs});
    }
  }
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
  const stderr = [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')];
  return {
    status: status ? status.innerText : '',
    path: panel && panel.context ? panel.context.path : null,
    pending: prompts.filter(p => p.textContent.includes('*')).length,
    cells: cells,
    stderr: stderr.map(e => e.innerText),
    widgetViews: document.querySelectorAll('.jupyter-widgets').length,
    brokenViews: [...document.querySelectorAll('.jp-OutputArea-output')]
        .map(e => e.innerText)
        .filter(t => /Error displaying widget|Error rendering output|Failed to display/.test(t)),
    dialog: document.querySelector('.jp-Dialog') ? document.querySelector('.jp-Dialog').innerText
                                                 : null,
  };
}
"""


def _unavailable_reason() -> str | None:
    if PLAYWRIGHT_IMPORT_ERROR is not None:
        return f"the playwright package is not importable ({PLAYWRIGHT_IMPORT_ERROR})"
    if chromium_path() is None:
        return "Chromium not found (/usr/bin/chromium; Debian: apt-get install chromium)"
    return None


def chromium_path() -> str | None:
    """``/usr/bin/chromium`` if it exists, else ``chromium`` on PATH, else None."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


UNAVAILABLE = _unavailable_reason()
# Skip before any fixture (JupyterLab) starts; with VIRTCORE_REQUIRE_BROWSER=1 the ``browser``
# fixture fails instead.
pytestmark = [pytest.mark.browser]
if UNAVAILABLE is not None and not REQUIRE_BROWSER:
    pytestmark.append(pytest.mark.skip(reason=UNAVAILABLE))


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile (skips, or fails when the browser is required)."""
    if UNAVAILABLE is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"VIRTCORE_REQUIRE_BROWSER=1 but {UNAVAILABLE}", pytrace=False)
        pytest.skip(UNAVAILABLE)
    with (
        tempfile.TemporaryDirectory(prefix="virtcore-chromium-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


def _wait_kernel_idle(page: Page, deadline: float) -> dict[str, Any]:
    """Wait for the status bar's ``(ipykernel) | Idle``; accept a kernel-selection dialog."""
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        if state["dialog"] and "Select Kernel" in state["dialog"]:
            page.locator(".jp-Dialog .jp-mod-accept").click()
        elif IDLE_TEXT in state["status"] and state["path"]:
            return state
        time.sleep(0.2)
    raise AssertionError(
        f"kernel not idle within {KERNEL_READY_TIMEOUT} s; status bar: {state.get('status')!r}, "
        f"dialog: {state.get('dialog')!r}"
    )


def _run_all_and_wait(page: Page, deadline: float) -> tuple[dict[str, Any], float]:
    """Run → Run All Cells; wait until idle with nothing queued (stable for two polls)."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    clicked = time.monotonic()
    previous = None
    while True:
        state = page.evaluate(STATE_JS)
        summary = (state["pending"], state["status"], [c["count"] for c in state["cells"]])
        all_ran = all(c["count"] is not None for c in state["cells"] if not c["empty"])
        settled = state["pending"] == 0 and IDLE_TEXT in state["status"]
        if settled and (all_ran or time.monotonic() - clicked > 1.0) and summary == previous:
            return state, time.monotonic() - clicked
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Run All did not finish within {RUN_ALL_TIMEOUT} s: {state['pending']} cells "
                f"queued, status bar {state['status']!r}"
            )
        previous = summary
        time.sleep(0.3)


def _screenshot(page: Page, path: Path) -> None:
    """Grow the viewport to the notebook's height (JupyterLab scrolls inside), then capture."""
    height = page.evaluate(
        "() => Math.max(0, ...[...document.querySelectorAll("
        "'.jp-NotebookPanel .jp-WindowedPanel-outer')].map(e => e.scrollHeight))"
    )
    wanted = min(MAX_SCREENSHOT_HEIGHT, max(VIEWPORT["height"], int(height) + 150))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": wanted})
    page.evaluate(
        "() => document.querySelectorAll('.jp-NotebookPanel .jp-WindowedPanel-outer')"
        ".forEach(e => { e.scrollTop = 0; })"
    )
    page.wait_for_timeout(300)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def _problems(state: dict[str, Any], expects_widgets: bool) -> list[str]:
    problems = []
    for cell in state["cells"]:
        if not cell["empty"] and cell["count"] is None:
            problems.append(f"cell #{cell['index']} never ran")
        problems += [
            f"cell #{cell['index']} error output {o}"
            for o in cell["outputs"]
            if o not in ("stream", "display_data", "execute_result")
        ]
    for text in state["stderr"]:
        if ERROR_TEXT.search(text):
            problems.append(f"rendered stderr shows an error: {text.strip()[:600]}")
    problems += [f"broken output: {t.strip()[:300]}" for t in state["brokenViews"]]
    if expects_widgets and state["widgetViews"] == 0:
        problems.append("the chapter uses ipywidgets/interact but no widget view was rendered")
    return problems


def test_chapter_runs_in_jupyterlab(
    chapter_path: Path, browser: BrowserContext, lab_server: Any, artefacts_dir: Path
) -> None:
    """Open the chapter in JupyterLab, Run All, and see outputs without errors and live widgets."""
    nb = nbformat.read(chapter_path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    expects_widgets = bool(WIDGET_HINT.search(source))
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda err: console_errors.append(f"pageerror: {err}"))
    page.on(
        "console",
        lambda msg: console_errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        # A workspace of its own, so JupyterLab does not reopen the previous chapters' tabs.
        url = lab_server.lab_url(chapter_path).replace(
            "/lab/tree/", f"/lab/workspaces/{chapter_path.stem}-{os.getpid()}/tree/", 1
        )
        page.goto(url)
        _wait_kernel_idle(page, start + KERNEL_READY_TIMEOUT)
        timings["open"] = time.monotonic() - start
        state, timings["run_all"] = _run_all_and_wait(page, time.monotonic() + RUN_ALL_TIMEOUT)
        if expects_widgets and state["widgetViews"]:
            page.locator(".jupyter-widgets").first.wait_for(state="visible", timeout=5000)
        shot = artefacts_dir / "browser" / f"{chapter_path.stem}.png"
        _screenshot(page, shot)
        state = page.evaluate(STATE_JS)  # after the screenshot: late outputs included
        timings["total"] = time.monotonic() - start
        print(f"{chapter_path.name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        problems = _problems(state, expects_widgets)
        assert not problems, (
            f"{chapter_path.name} in JupyterLab (screenshot {shot}):\n"
            + "\n".join(problems)
            + ("\n--- browser console ---\n" + "\n".join(console_errors) if console_errors else "")
        )
    finally:
        try:
            lab_server.shutdown_sessions(chapter_path)
        finally:
            page.close()
