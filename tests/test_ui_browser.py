"""The Dagster UI in a real browser: `refinery dev` (webserver + daemon on the embedded
PostgreSQL) on 127.0.0.1, headless Chromium materializes one collection's ingestion assets by
clicking through the asset graph, the run succeeds, and its metadata (counts) is on the run page;
the asset page of `embeddings` and a check's detail name the collection they describe.

Needs Debian's `chromium` (`apt-get install -y chromium chromium-driver`; `make test` installs it)
and the `playwright` Python package (the `test` extra); Playwright's own browser download is
not used. A screenshot and the server log go to $ARTIFACTS_DIR/ui (default `artifacts/ui`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.dev_server import ARTIFACTS_ROOT, Server, refinery_dev, wait_for_run

pytestmark = pytest.mark.browser

COLLECTION = "support"
SUPPORT_DOCUMENTS = 5  # files of the sample corpus's `support` collection (drafts/ excluded)
ARTIFACTS = ARTIFACTS_ROOT / "ui"
UI_TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
INSTALL_HINT = ("install Debian's Chromium: `sudo apt-get install -y chromium chromium-driver` "
                "(`make test` does this), or point CHROMIUM at a Chromium binary")


def _chromium() -> str:
    """The system Chromium (and Playwright), checked before any server is started."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the browser test needs the `playwright` package: pip install -e '.[local,test]' "
                    "(make install does this)", pytrace=False)
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(f"no Chromium for the browser test: {INSTALL_HINT}", pytrace=False)
    return path


def _materialize_from_the_ui(dagster_ui: Server, chromium: str, screenshot: Path) -> dict[tuple[str, str], int]:
    """Click the ingestion assets of one partition into a run; the counts its page shows."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)

        @contextmanager
        def step(name: str):
            try:
                yield
            except (PlaywrightError, AssertionError) as exc:
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
                dagster_ui.fail(f"UI step failed: {name} (page {page.url}, screenshot "
                                f"{ARTIFACTS / 'failure.png'}): {type(exc).__name__}: {exc}")

        # In case the newsletter dialog shows anyway (see _dagster_ui), dismiss it whenever it does.
        page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                                 lambda: page.get_by_role("button", name="Skip").click())
        try:
            with step("open the asset graph and select the ingest job's assets"):
                page.goto(f"{dagster_ui.base_url}/asset-groups")
                expect(page.get_by_text("Global asset lineage")).to_be_visible()
                # The asset selection box is a CodeMirror editor (its textarea is named by the placeholder).
                selection = page.get_by_role("textbox", name="Search and filter assets")
                selection.press_sequentially("job:ingest")
                selection.press("Enter")
                expect(page.locator(".CodeMirror").filter(has=selection)).to_contain_text("job:ingest")
                for asset in ("documents", "chunks", "embeddings"):
                    expect(page.get_by_text(asset, exact=True).first).to_be_visible()

            with step(f"Materialize all… -> partition {COLLECTION} -> Launch 1 run"):
                page.get_by_role("button", name="Materialize all…").click()
                dialog = page.get_by_role("dialog")
                expect(dialog.get_by_text("Launch runs to materialize 3 assets")).to_be_visible()
                dialog.get_by_text("Select a partition or create one").click()
                page.get_by_placeholder("Filter partitions").fill(COLLECTION)
                # The checkbox <input> is hidden behind its styled <label>: click the label.
                page.get_by_role("checkbox", name=COLLECTION).locator("xpath=ancestor::label[1]").click()
                dialog.get_by_text("Launch runs to materialize").click()  # closes the partition list
                expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
                dialog.get_by_role("button", name="Launch 1 run").click()

            with step("follow the 'Launched run' toast to the run page"):
                view = page.locator("a[href^='/runs/']").filter(has_text="View").first
                href = view.get_attribute("href")
                run_id = href.rsplit("/", 1)[-1]
                view.click()
                page.wait_for_url(f"**{href}")

            status = wait_for_run(dagster_ui, run_id)
            if status != "SUCCESS":
                page.screenshot(path=str(screenshot), full_page=True)
                dagster_ui.fail(f"run {run_id} ended {status}; see {screenshot}")

            with step("the run page shows Success and the materializations' metadata"):
                header = page.get_by_text(f"partition: {COLLECTION}")
                expect(header).to_be_visible()
                expect(page.get_by_text("Success", exact=True).first).to_be_visible()
                events = page.get_by_placeholder("Filter…")
                events.fill("type:ASSET_MATERIALIZATION")
                events.press("Enter")

                def shown(asset: str, label: str) -> int:
                    cell = page.locator(f"xpath=//div[text()[contains(., 'Materialized value {asset}.')]]"
                                        f"//tr[td[1][normalize-space()='{label}']]/td[2]")
                    expect(cell).to_be_visible()
                    return int(cell.inner_text().strip())

                counts = {(asset, label): shown(asset, label) for asset, label in (
                    ("documents", "new"), ("documents", "errors"), ("chunks", "documents"), ("chunks", "chunks"),
                    ("embeddings", "texts"), ("embeddings", "embedded"), ("embeddings", "texts_embedded"),
                    ("embeddings", "total_vectors"))}
                page.screenshot(path=str(screenshot))

            with step("the asset page of embeddings names the collection of its latest materialization"):
                page.goto(f"{dagster_ui.base_url}/assets/embeddings")
                latest = page.locator("xpath=//*[normalize-space()='Latest materialization']/..").first
                expect(latest).to_contain_text(COLLECTION)
                page.screenshot(path=str(ARTIFACTS / "embeddings-asset.png"), full_page=True)

            with step("a check's detail names the collection its result was computed on"):
                page.goto(f"{dagster_ui.base_url}/assets/embeddings?view=checks&checkDetail=every_live_chunk_has_vector")
                expect(page.get_by_text("Latest execution").first).to_be_visible()
                metadata = page.locator("tr", has=page.get_by_text("collection", exact=True)).first
                expect(metadata).to_contain_text(COLLECTION)
                counts[("every_live_chunk_has_vector", "missing_vectors")] = int(page.locator(
                    "xpath=//tr[td[1][normalize-space()='missing_vectors']]/td[2]").first.inner_text().strip())
                page.screenshot(path=str(ARTIFACTS / "embeddings-check.png"), full_page=True)

            with step("a metric check shows its day and its trend inline"):
                today = datetime.now(timezone.utc).date().isoformat()
                snapshot = dagster_ui.refinery("snapshot")
                assert snapshot.returncode in (0, 1), snapshot.stderr  # 1: a threshold is breached
                page.goto(f"{dagster_ui.base_url}/assets/metric_snapshots?view=checks"
                          "&checkDetail=embedding_coverage_within_thresholds")
                expect(page.locator("tr", has=page.get_by_text("day", exact=True)).first).to_contain_text(today)
                trend = page.locator("tr", has=page.get_by_text(today, exact=True)).filter(has_text="█").first
                expect(trend).to_be_visible()  # the table's bar, not a dialog
                page.screenshot(path=str(ARTIFACTS / "metric-check.png"), full_page=True)
        finally:
            browser.close()

    return counts


def test_materialize_one_collection_from_the_asset_graph():
    chromium = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"ingest-{COLLECTION}-run.png"
    for stale in (screenshot, ARTIFACTS / "failure.png"):
        stale.unlink(missing_ok=True)
    with refinery_dev("ui") as server:
        counts = _materialize_from_the_ui(server, chromium, screenshot)

    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, f"no screenshot at {screenshot}"
    # A fresh database: every document is new and every chunk is embedded, none reused.
    assert counts[("documents", "new")] == counts[("chunks", "documents")] == SUPPORT_DOCUMENTS, counts
    assert counts[("documents", "errors")] == 0, counts
    chunks = counts[("chunks", "chunks")]
    assert chunks > 0 and counts[("embeddings", "texts")] == counts[("embeddings", "embedded")] == chunks, counts
    assert counts[("embeddings", "texts_embedded")] == chunks, counts
    assert counts[("embeddings", "total_vectors")] == chunks, counts
    assert counts[("every_live_chunk_has_vector", "missing_vectors")] == 0, counts
