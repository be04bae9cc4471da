"""The MLflow UI in headless Chromium (Debian's chromium, driven by Playwright; no browser download): log
in, open the sweep's experiment, see its runs by their readable names with their data sets in the Dataset
column, open the parent run and its report artifact. Screenshots are saved under tests/e2e/artifacts/ for
a person to look at."""
import re
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, EXPERIMENT, mlflow_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():  # fail, never skip: `make test` installs it (apt-get install chromium)
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium) or "
                    "`apt-get update && apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page(browser, credentials=None):
    context = browser.new_context(http_credentials=credentials, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    return context.new_page()


def test_the_ui_refuses_a_visitor_without_the_password(browser, mlflow_server):
    from playwright.sync_api import Error

    page = _page(browser)
    assert page.request.get(mlflow_server.uri).status == 401
    with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # headless Chromium: no login dialog
        page.goto(mlflow_server.uri)
    wrong = _page(browser, {"username": "admin", "password": "not-the-password"})
    assert wrong.request.get(mlflow_server.uri).status == 401
    page.context.close()
    wrong.context.close()


def test_the_ui_shows_the_sweep_runs_and_the_report(browser, mlflow_server, sweep_job, sweep_report):
    from playwright.sync_api import expect

    experiment = mlflow_api(mlflow_server, "GET", "experiments/get-by-name",
                            params={"experiment_name": EXPERIMENT}).json()["experiment"]["experiment_id"]
    user, password = mlflow_server.auth
    page = _page(browser, {"username": user, "password": password})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # The experiment's runs (the "Model training" view): the parent run, and its four trials once expanded.
    assert page.goto(f"{mlflow_server.uri}/#/experiments/{experiment}/runs?workflowType=machine_learning").ok
    parent = page.get_by_role("row").filter(has_text=sweep_job.name)
    try:
        expect(parent).to_have_count(1, timeout=30_000)  # the runs table renders slowly on a loaded machine
    finally:
        page.screenshot(path=str(ARTIFACTS / "mlflow-runs-first.png"))
    close_assistant = page.get_by_role("button", name="Close")
    if close_assistant.count():
        close_assistant.first.click()
    # Trials carry names a person can read (model, K, training method, seed), not Ray's trial ids.
    trials = page.get_by_role("row").filter(has_text=re.compile(r"preact_resnet18-K[01]-(natural|fgsm)-s0"))
    expect(trials).to_have_count(0)  # children are folded under the parent
    parent.locator("button").first.click()  # unfold
    expect(trials).to_have_count(4)
    expect(page.get_by_text("5 matching runs")).to_be_visible()
    for name in ("preact_resnet18-K0-natural-s0", "preact_resnet18-K1-fgsm-s0"):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    # The Dataset column: each trial's data (logged as MLflow dataset inputs: name, digest, context).
    expect(page.get_by_role("columnheader").filter(has_text="Dataset").first).to_be_visible()
    for i in range(4):  # a row is split in two (pinned name column, scrolled columns): join them by row-id
        row_id = trials.nth(i).get_attribute("row-id")
        expect(page.locator(f'[role="row"][row-id="{row_id}"]').filter(has_text="digits")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "mlflow-runs.png"))

    # The parent run's artifacts: the report that `ieskips report` logged, rendered.
    page.get_by_role("link", name=sweep_job.name, exact=True).click()
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("report", exact=True).click()
    page.get_by_text(sweep_report.name, exact=True).click()
    expect(page.get_by_text("IE-ResNet-1-18 natural").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "mlflow-report.png"))
    page.context.close()
