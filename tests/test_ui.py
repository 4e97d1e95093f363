"""The Dagster UI, opened in a real headless browser: each dataset reads as its own pipeline.

Groups are ``<dataset>/<stage kind>`` (Dagster's nested groups), so the global lineage shows one box per
dataset, and the dataset's "Filter to this group" in the lineage sidebar shows that dataset alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lgcd_pipeline.versions import STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATASETS = ("demo", "food_kitchen")  # the data need not exist: definitions load without it


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
    """dagster-webserver on 127.0.0.1 over a definitions set holding two datasets."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    for name in DATASETS:
        shutil.copy(REPO_ROOT / "datasets" / f"{name}.yaml", datasets / f"{name}.yaml")
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


def _stage_of(label: str) -> list[str]:
    """The stages a graph node label can be: long names are ellipsised ("filt…_interactions")."""
    return [stage for stage in STAGES if label.startswith(stage[:4]) and label.endswith(stage[-8:])]


def _dismiss_dialogs(page) -> None:
    """Close the first-visit newsletter dialog, which can open seconds after the page on a loaded machine and then
    takes every click; any other modal left open is closed with Escape."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=3000)
        skip.click()
    except PlaywrightTimeout:
        pass
    backdrop = page.locator(".bp5-overlay-backdrop")
    if backdrop.count():
        page.keyboard.press("Escape")
        backdrop.first.wait_for(state="detached", timeout=10_000)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on this machine (apt-get install chromium)")
def test_each_dataset_is_its_own_pipeline_in_the_lineage(webserver: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1800, "height": 1300})
        page.goto(f"{webserver}/asset-groups", wait_until="networkidle")
        page.get_by_text("Global asset lineage").wait_for()
        _dismiss_dialogs(page)
        # The sidebar's top level: one group per dataset, nothing else.
        sidebar = page.locator("button", has=page.get_by_role("img", name="asset_group")).locator("[title]")
        sidebar.first.wait_for()
        global_tree = sidebar.evaluate_all("els => els.map(e => e.title)")
        assert sorted(global_tree) == sorted(DATASETS)

        # The global graph, every group expanded (Alt+E on the canvas) and zoomed out: one box per dataset.
        page.mouse.click(1200, 1000)
        page.keyboard.press("Alt+e")
        page.wait_for_timeout(1500)
        _dismiss_dialogs(page)
        zoom_out = page.locator("button", has=page.get_by_role("img", name="zoom_out"))
        for _ in range(3):
            zoom_out.click()
            page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))

        # One dataset alone: "Filter to this group" in the ⋯ menu of its name in the sidebar (hover, two clicks).
        more = page.locator("button", has=page.locator("[aria-label=more_horiz]"))  # shown on hover
        row = page.locator("div", has=page.get_by_title("demo", exact=True)).filter(has=more).last
        row.hover()
        row.locator(more).click()
        page.get_by_text("Filter to this group").click()
        page.wait_for_timeout(1500)
        nodes = page.locator("[class*=AssetNode_assetName]")  # the graph's asset nodes
        if not nodes.count():  # the demo box came collapsed: expand it
            page.mouse.click(1200, 1000)
            page.keyboard.press("Alt+e")
            nodes.first.wait_for()
            page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "asset_graph_demo.png"))
        selection = urllib.parse.unquote(page.url)  # the lineage URL carries the selection
        labels = [label.strip() for label in nodes.all_inner_texts()]
        demo_tree = sidebar.evaluate_all("els => els.map(e => e.title)")
        rendered = page.inner_text("body")
        browser.close()

    assert demo_tree == ["demo"]
    assert "food_kitchen" not in rendered, "the demo's view shows the other dataset"
    assert 'group:"demo/*"' in selection, selection  # what the filter bar shows, and what a user can type
    # every stage of the demo, once: the other dataset's nodes (same stage names) are not drawn
    assert sorted(stage for label in labels for stage in _stage_of(label)) == sorted(STAGES), labels
    assert len(labels) == len(STAGES), labels
