"""The whole loop in a real headless Chromium: upload (predicted at once), correct a label, retrain, predict again."""
from __future__ import annotations

import re
import shutil

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def served(tmp_path_factory, head_version, dataset_dir, launch_app):
    """The app serving a copy of the session's trained v1, over DATASET = the three-class dataset."""
    data = tmp_path_factory.mktemp("app-browser") / "data"
    shutil.copytree(head_version.data_dir, data)
    app = launch_app(data, DATASET=str(dataset_dir))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
    finally:
        browser.close()
        playwright.stop()


def cards(page) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('#review .rv-card')].map(c => ({
        sha256: c.dataset.sha256, state: c.dataset.state, save: c.dataset.save, file: c.querySelector('img').alt,
        pred: c.querySelector('.rv-pred-label').textContent, conf: c.querySelector('.rv-conf').textContent}))""")


def test_predict_correct_retrain_and_predict_again(served, page, dataset_dir, artifacts_dir):
    from playwright.sync_api import expect

    files = [path for folder in sorted(dataset_dir.iterdir()) for path in sorted(folder.glob("*.jpg"))[:10:5]]
    screenshot = artifacts_dir / "app-e2e.png"
    try:
        page.goto(served.url)
        expect(page.locator("#status")).to_contain_text("v1", timeout=TIMEOUT_MS)

        # 1. upload: predicted at once, a count instead of a file list, one card per image
        with page.expect_file_chooser() as chooser:
            page.click("#upload")
        chooser.value.set_files(files)
        expect(page.locator("#batch-summary")).to_contain_text("6 images predicted by v1", timeout=TIMEOUT_MS)
        expect(page.locator("#upload-count")).to_contain_text("6 files")
        expect(page.locator("#review .rv-card")).to_have_count(6)
        shown = cards(page)
        assert sorted((c["file"], c["pred"]) for c in shown) == sorted((p.name, p.parent.name) for p in files)
        assert all(c["state"] == "untouched" and re.fullmatch(r"\d+%", c["conf"]) for c in shown)

        # 2. correct the focused (first) card to a new class: '/' opens the type-ahead box
        page.keyboard.press("/")
        page.keyboard.type("blobs")
        page.keyboard.press("Enter")
        first = page.locator(f'#review .rv-card[data-sha256="{shown[0]["sha256"]}"]')
        expect(first).to_have_attribute("data-save", "saved", timeout=TIMEOUT_MS)
        expect(first).to_have_attribute("data-state", "corrected")
        expect(first.locator(".rv-human")).to_contain_text("blobs")

        # 3. retrain from the Train tab with its default fields
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#status")).to_contain_text("labelled images: 1")  # the header counts the saved label
        page.click("#train-btn")
        expect(page.locator("#train-result")).to_contain_text("is live", timeout=180_000)
        expect(page.locator("#train-result")).to_contain_text("v2 is live")

        # 4. the next prediction of the same files uses v2 and still shows the human label
        page.get_by_role("tab", name="Predict & label").click()
        page.click("#predict-btn")
        expect(page.locator("#batch-summary")).to_contain_text("6 images predicted by v2", timeout=TIMEOUT_MS)
        expect(page.locator("#review .rv-card")).to_have_count(6)
        expect(page.locator(f'#review .rv-card[data-sha256="{shown[0]["sha256"]}"] .rv-human')).to_contain_text("blobs")
        page.wait_for_timeout(500)
        page.screenshot(path=str(screenshot), full_page=True)
    except Exception:
        page.screenshot(path=str(screenshot), full_page=True)
        raise

    status = served.client().predict(api_name="/status")
    assert status["active_version"] == "v2" and "blobs" in status["classes"]
    assert status["labelled_images"] == 1  # the corrected card only: untouched predictions are not labels


def test_first_model_from_an_imported_zip_in_four_actions(tmp_path, backbone_dir, dataset_dir, launch_app, page,
                                                          artifacts_dir):
    """An empty app (no model, no DATASET): import a .zip of class folders as labels, train: 4 actions."""
    import zipfile

    from playwright.sync_api import expect

    data = tmp_path / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    archive = tmp_path / "labelled.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dataset_dir.rglob("*.jpg")):
            zf.write(path, f"shapes/{path.parent.name}/{path.name}")
    app = launch_app(data)
    try:
        page.goto(app.url)
        expect(page.locator("#status")).to_contain_text("none trained yet", timeout=TIMEOUT_MS)
        actions = 0
        with page.expect_file_chooser() as chooser:
            page.click("#import-zip")
        chooser.value.set_files(archive)
        actions += 2
        expect(page.locator("#import-msg")).to_contain_text("Imported 30 label(s)", timeout=TIMEOUT_MS)
        page.get_by_role("tab", name="Train").click()
        page.click("#train-btn")
        actions += 2
        expect(page.locator("#train-result")).to_contain_text("v1 is live", timeout=180_000)
        page.screenshot(path=str(artifacts_dir / "app-import-train.png"), full_page=True)
        assert actions <= 5
        status = app.client().predict(api_name="/status")
        assert status["active_version"] == "v1" and status["labelled_images"] == 30
        assert status["classes"] == ["circles", "squares", "stripes"]
    finally:
        app.stop()
