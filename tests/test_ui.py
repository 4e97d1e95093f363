"""The Dagster UI, opened in a real headless browser, renders every stage of the demo dataset."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lgcd_pipeline.versions import STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def webserver(tmp_path: Path):
    """dagster-webserver on 127.0.0.1 over a definitions set holding only the demo dataset."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    shutil.copy(REPO_ROOT / "datasets" / "demo.yaml", datasets / "demo.yaml")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "LGCD_DATASETS_DIR": str(datasets)}
    port = _free_port()
    exe = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen([str(exe), "-m", "lgcd_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on this machine (apt-get install chromium)")
def test_asset_graph_renders_every_demo_stage(webserver: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        page.goto(f"{webserver}/asset-groups", wait_until="networkidle")
        skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
        if skip.count():
            skip.click()
        page.get_by_text("Global asset lineage").wait_for()
        page.mouse.click(1200, 1000)  # focus the graph canvas, then "Expand all groups" (Alt+E)
        page.keyboard.press("Alt+e")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
        rendered = page.inner_text("body")
        browser.close()
    for stage in STAGES:
        # long names are ellipsised in graph nodes ("filt…_interactions"): match the two ends
        head, tail = stage[:4], stage[-8:]
        assert any(line.startswith(head) and line.endswith(tail) for line in rendered.splitlines()), stage
