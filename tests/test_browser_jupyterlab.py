"""End to end in a real browser: JupyterLab, started with ``--gateway-url=<our service>``, runs a notebook.

Debian's ``chromium`` (driven by Playwright) opens JupyterLab, creates a Python 3 notebook, runs cells (numpy, an
inline matplotlib plot), restarts the kernel from the UI and runs a cell on the fresh kernel. The notebook's kernel
must be one of the gateway's. Artefacts (screenshot, JupyterLab's log, the browser console) go to ``output_dir``.

The browser is never downloaded: the test needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and fails,
rather than skips, without it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Locator, Page, expect, sync_playwright

from tests.jupyter_app import JupyterServer, start_jupyter, stop_group
from tests.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LAB_TOKEN = "jupyterlab-token-789"
STARTUP_TIMEOUT = 60.0
WAIT_MS = 60_000  # the bound of every single browser wait
EXECUTED_PROMPT = re.compile(r"^\[\d+\]:$")  # a cell that ran shows [n]:, not [*]:

pytestmark = pytest.mark.timeout(180)


# --------------------------------------------------------------------------------------------------------------
# A real JupyterLab, pointed at the service
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_lab(tmp: Path, service: Service) -> Iterator[JupyterServer]:
    assert service.token, "the shared service runs with auth on"
    for sub in ("config/labconfig", "home", "settings", "workspaces"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    # No "get Jupyter news?" toast over the notebook (nor its request to the internet).
    (tmp / "config" / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )
    lab = start_jupyter(
        tmp,
        module="jupyterlab",
        gateway_url=service.url,
        gateway_token=service.token,
        token=LAB_TOKEN,
        log_name="jupyterlab.log",
        startup_timeout=STARTUP_TIMEOUT,
        env={
            "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
            "HOME": str(tmp / "home"),
        },
        args=[
            "--GatewayClient.request_timeout=60",
            # window.jupyterapp, for reading the kernel's state; nothing from the internet.
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
    )
    try:
        yield lab
    finally:
        stop_group(lab.proc)


# --------------------------------------------------------------------------------------------------------------
# The notebook in the browser
# --------------------------------------------------------------------------------------------------------------

# The current notebook's session and kernel connection, as JupyterLab itself sees them.
SESSION_JS = "window.jupyterapp?.shell.currentWidget?.sessionContext"
KERNEL_JS = f"{SESSION_JS}?.session?.kernel"


def wait_kernel_idle(page: Page) -> None:
    """Idle and connected, as JupyterLab sees it, and shown so in the notebook's toolbar."""
    page.wait_for_function(
        f"""() => {{
            const sc = {SESSION_JS}, k = {KERNEL_JS};
            return !!k && !sc.isRestarting && k.connectionStatus === 'connected' && k.status === 'idle';
        }}""",
        timeout=WAIT_MS,
    )
    expect(page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=WAIT_MS
    )


def run_cell(page: Page, index: int, lines: list[str]) -> Locator:
    """Type ``lines`` into the notebook's cell ``index`` as a user does, run it with Shift+Enter; return the cell."""
    cell = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)
    editor = cell.locator(".jp-InputArea-editor .cm-content")
    editor.click(timeout=WAIT_MS)
    for i, line in enumerate(lines):
        if i:
            page.keyboard.press("Enter")
        # insert_text, not type: CodeMirror's auto-closing brackets and indentation would change typed code.
        page.keyboard.insert_text(line)
    expect(editor).to_have_text("".join(lines), timeout=WAIT_MS)
    page.keyboard.press("Shift+Enter")
    # Done: the prompt shows an execution count, not "[*]".
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(EXECUTED_PROMPT, timeout=WAIT_MS)
    return cell


def test_notebook_in_jupyterlab(service: Service, tmp_path: Path, output_dir: Path) -> None:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: this test drives Debian's chromium (install it with "
        "`apt-get update && apt-get install -y chromium`); Playwright's own browsers are never downloaded here"
    )
    console: list[str] = []
    kernels: list[str] = []
    screenshot = output_dir / "jupyterlab.png"
    for stale in (screenshot, output_dir / "jupyterlab-failure.png"):
        stale.unlink(missing_ok=True)

    try:
        with running_lab(tmp_path, service) as lab, sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=WAIT_MS
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(WAIT_MS)
                page.set_default_navigation_timeout(WAIT_MS)
                expect.set_options(timeout=WAIT_MS)

                def on_console(msg: ConsoleMessage) -> None:
                    console.append(f"[{msg.type}] {msg.text}")

                page.on("console", on_console)
                page.on("pageerror", lambda exc: console.append(f"[pageerror] {exc}"))
                try:
                    _drive_notebook(page, lab, service, kernels)
                    page.screenshot(path=screenshot, full_page=True)
                except BaseException:
                    with contextlib.suppress(Exception):
                        page.screenshot(path=output_dir / "jupyterlab-failure.png", full_page=True)
                    raise
            finally:
                browser.close()
    finally:
        (output_dir / "browser-console.log").write_text("\n".join(console) + "\n")
        lab_log = (tmp_path / "jupyterlab.log").read_text(errors="replace")
        (output_dir / "jupyterlab.log").write_text(lab_log)
        # Leave the shared service as it was, whatever jupyter lab did with its kernel on the way out.
        with service.client() as gateway:
            left = [kid for kid in kernels if kid in [k["id"] for k in gateway.get("/api/kernels").json()]]
            for kid in left:
                gateway.delete(f"/api/kernels/{kid}")

    page_errors = [line for line in console if line.startswith("[pageerror]")]
    assert not page_errors, f"uncaught errors in JupyterLab's page: {page_errors}"
    # A gateway answer that jupyter_server's GatewayClient cannot handle shows as a traceback in its log.
    assert "Traceback" not in lab_log, f"JupyterLab's log has a traceback (see {output_dir / 'jupyterlab.log'})"
    # jupyter server shuts its kernels down when it stops; on a gateway, that is a DELETE the gateway honours.
    assert not left, f"the gateway still had the notebook's kernel after jupyter lab stopped: {left}"


def _drive_notebook(page: Page, lab: JupyterServer, service: Service, kernels: list[str]) -> None:
    page.goto(f"{lab.url}/lab?token={lab.token}", wait_until="domcontentloaded")
    # JupyterLab is up once its app exists and the splash screen has gone.
    page.wait_for_function(
        "() => !!window.jupyterapp && !document.querySelector('#jupyterlab-splash')", timeout=WAIT_MS
    )
    expect(page.locator(".jp-Launcher")).to_be_visible()

    # A new notebook on the gateway's python3 kernel, the way File > New > Notebook does it.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:create-new', {kernelName: 'python3'}); }")
    expect(page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first).to_be_visible()
    expect(page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName")).to_have_text("Python 3 (ipykernel)")
    wait_kernel_idle(page)
    kernel_id = page.evaluate(f"() => {KERNEL_JS}.id")
    assert kernel_id
    kernels.append(kernel_id)

    # The kernel JupyterLab talks to is one of the gateway's.
    with service.client() as gateway:
        assert kernel_id in [k["id"] for k in gateway.get("/api/kernels").json()]
    lab_kernels = httpx.get(f"{lab.url}/api/kernels", headers={"Authorization": f"token {lab.token}"}, timeout=30)
    assert kernel_id in [k["id"] for k in lab_kernels.json()]

    numpy_cell = run_cell(page, 0, ["import numpy as np; x = 41; np.arange(3).sum()"])
    # numpy 2 shows its scalars as np.int64(3), numpy 1 as 3.
    expect(numpy_cell.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"^(np\.int64\(3\)|3)$"))

    plot_cell = run_cell(
        page, 1, ["%matplotlib inline", "import matplotlib.pyplot as plt", "plt.plot([1, 2, 3]); plt.show()"]
    )
    image = plot_cell.locator(".jp-OutputArea-output img")
    expect(image).to_be_visible()
    expect(image).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    assert page.evaluate("img => img.naturalWidth", image.element_handle()) > 100

    before = run_cell(page, 2, ["'x' in globals(), x + 1"])
    expect(before.locator(".jp-OutputArea-output")).to_have_text("(True, 42)")

    # Restart from the Kernel menu, and confirm the dialog.
    page.evaluate(
        f"() => {{ window.__statuses = []; {KERNEL_JS}.statusChanged.connect((_, s) => window.__statuses.push(s)); }}"
    )
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    # (Its accessible name ends with the shortcut, "Restart Kernel… 0, 0": find it by its command.)
    restart = page.locator('.lm-Menu-item[data-command="kernelmenu:restart"]')
    expect(restart).to_contain_text("Restart Kernel")
    restart.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Restart Kernel?")
    accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
    expect(accept).to_have_text("Restart")
    accept.click()
    page.wait_for_function("() => window.__statuses.includes('restarting')", timeout=WAIT_MS)
    wait_kernel_idle(page)
    statuses = page.evaluate("() => window.__statuses")
    # JupyterLab takes an iopub status "restarting" for the server's auto-restart of a dead kernel: it then shows
    # "The kernel ... appears to have died" and reconnects. A restart the user asked for must not look like that.
    assert "autorestarting" not in statuses and "dead" not in statuses, (
        f"JupyterLab took the requested restart for a kernel death; kernel statuses it saw: {statuses}"
    )
    expect(dialog).to_have_count(0)
    assert page.evaluate(f"() => {KERNEL_JS}.id") == kernel_id, "a restart keeps the kernel's id"

    after = run_cell(page, 3, ["'x' in globals()"])
    expect(after.locator(".jp-OutputArea-output")).to_have_text("False")
    # The fresh kernel counts its cells from 1 again.
    expect(after.locator(".jp-InputArea-prompt")).to_have_text("[1]:")

    with service.client() as gateway:
        listed = {k["id"]: k for k in gateway.get("/api/kernels").json()}
        assert kernel_id in listed, "the restarted kernel is still the gateway's"
        assert listed[kernel_id]["name"] == "python3"
