"""`brokerlab lab`: JupyterLab on notebooks/, the .py notebooks opening as notebooks.

The end-to-end test does what a new user does: start `brokerlab lab`, open a notebook's URL in a
browser (headless Chromium, driven over its DevTools protocol), and look at what opened. A
plain `jupyter lab` opens the same URL in the text editor; the test fails if that happens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket

from brokerlab.app.notebook import DEFAULT_VIEWERS, free_port, lab_launch

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: The installed command, as users run it.
BROKERLAB = [str(Path(sys.executable).with_name("brokerlab"))]
NOTEBOOK = "01_explore_scenarios.py"


def test_lab_makes_jupytext_the_default_viewer_of_python_files(tmp_path: Path) -> None:
    """The private config folder holds the default-viewer override and comes first on
    JUPYTER_CONFIG_PATH, so it applies to this server only and the user's folders stay as
    they were."""
    launch = lab_launch(ROOT, tmp_path / "config", 8899, open_browser=False)
    written = tmp_path / "config" / "labconfig" / "default_setting_overrides.json"
    overrides = json.loads(written.read_text(encoding="utf-8"))
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert overrides == DEFAULT_VIEWERS and viewers["python"] == "Jupytext Notebook"
    first = launch.env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0]
    assert Path(first) == tmp_path / "config"
    assert f"--ServerApp.root_dir={ROOT}" in launch.command
    assert "--ServerApp.ip=127.0.0.1" in launch.command
    assert "--ServerApp.open_browser=False" in launch.command
    assert re.fullmatch(r"http://127\.0\.0\.1:8899/lab/tree/notebooks\?token=\w{48}", launch.url)


def test_lab_refuses_a_port_in_use() -> None:
    """A busy --port is a user's mistake: exit 2 with a message, no server started."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*BROKERLAB, "lab", "--no-browser", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"--port {port}: the port is in use" in done.stderr


# --------------------------------------------------------------------------- end to end


def _read_url(server: subprocess.Popen[str], timeout: float) -> str:
    """The URL `brokerlab lab` prints first (its stdout), with the server's token."""
    deadline = time.monotonic() + timeout
    assert server.stdout is not None
    line = server.stdout.readline()
    assert time.monotonic() < deadline, "brokerlab lab printed nothing"
    found = re.search(r"(http://127\.0\.0\.1:\d+/lab/tree/notebooks\?token=\w+)", line)
    assert found, f"no URL in {line!r}"
    return found.group(1)


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer in {timeout:.0f} s")
        time.sleep(0.5)


class DevTools:
    """The few DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws_url: str):
        self.socket = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.socket.close()


#: What the page shows: open documents (tab labels), notebook panels and their cells, and
#: text editors. JupyterLab renders long notebooks in windows, so not every cell is in the DOM.
PAGE_STATE = """(() => {
  const panels = [...document.querySelectorAll('.jp-NotebookPanel')];
  return {
    tabs: [...document.querySelectorAll('.jp-mod-current .lm-TabBar-tabLabel, '
                                        + '.lm-DockPanel-tabBar .lm-TabBar-tabLabel')]
          .map(e => e.textContent),
    notebooks: panels.length,
    cells: document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length,
    code_cells: document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length,
    markdown_cells: document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell').length,
    kernel: (document.querySelector('.jp-NotebookPanel .jp-KernelName') || {}).textContent,
    headings: [...document.querySelectorAll('.jp-NotebookPanel .jp-RenderedMarkdown h1')]
              .map(e => e.textContent),
    code: [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .cm-content')]
          .map(e => e.textContent).join('\\n'),
    editors: document.querySelectorAll('.jp-FileEditor').length,
  };
})()"""


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_tree(processes: list[psutil.Process]) -> None:
    """Kill what this test started and is still alive (only ever processes it started)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_a_double_clicked_notebook_opens_as_a_notebook(tmp_path: Path) -> None:
    """`brokerlab lab --no-browser`, then the notebook's lab URL in headless Chromium: a
    notebook panel with the notebook's cells opens, not a text editor; stopping the command
    leaves no server or kernel behind."""
    # A fresh user: no settings of theirs, no workspace restoring a layout (and none written).
    home = {
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    server = subprocess.Popen(
        [*BROKERLAB, "lab", "--no-browser"],
        cwd=ROOT,
        env={**os.environ, **home},
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "lab.log").open("w"),
        text=True,
    )
    browser: subprocess.Popen[bytes] | None = None
    started: list[psutil.Process] = []
    try:
        url = _read_url(server, timeout=60)
        base, token = url.split("/lab/tree/notebooks?token=")
        _wait_http(f"{base}/api/status?token={token}", timeout=120)
        started = _process_tree(server.pid)
        debug_port = free_port()
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--remote-debugging-port={debug_port}",
                "--remote-allow-origins=*",
                f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "chromium.log").open("w"),
        )
        _wait_http(f"http://127.0.0.1:{debug_port}/json/version", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list") as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        try:
            state: dict[str, Any] = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = devtools.evaluate(PAGE_STATE) or {}
                if state.get("editors") or (state.get("cells") and state.get("headings")):
                    break
                time.sleep(1)
            time.sleep(2)  # let the first cells finish rendering, then look again
            state = devtools.evaluate(PAGE_STATE) or {}
            shot = devtools.call("Page.captureScreenshot", format="png")["data"]
            (tmp_path / "lab.png").write_bytes(base64.b64decode(shot))
        finally:
            devtools.close()
        assert NOTEBOOK in state.get("tabs", []), state
        assert state["editors"] == 0, f"opened in the text editor: {state}"
        assert state["notebooks"] == 1, state
        assert state["markdown_cells"] >= 2 and state["code_cells"] >= 2, state
        assert any(h.startswith("Explore a scenario") for h in state["headings"]), state
        assert "scenario_path" in state["code"] and "import brokerlab as bl" in state["code"]
    finally:
        if browser is not None:
            _stop_tree(_process_tree(browser.pid))
        if server.poll() is None:
            started = started or _process_tree(server.pid)
            started += [p for p in _process_tree(server.pid) if p not in started]
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=60)
        _gone, alive = psutil.wait_procs(started, timeout=30)
        _stop_tree(alive)
    assert server.returncode == 0, (tmp_path / "lab.log").read_text()[-3000:]
    assert len(started) >= 3  # brokerlab lab, the Jupyter server, the notebook's kernel
    assert alive == [], f"left running after brokerlab lab stopped: {alive}"
