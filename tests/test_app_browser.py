"""The whole loop in a real headless Chromium: upload, predict, correct a label, save, retrain, predict again."""
from __future__ import annotations

import re
import shutil

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
CAPTION = re.compile(r"(?:⚠ )?(\w+) · (\d+)%")
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


def captions(page) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in CAPTION.finditer(page.locator("#gallery").inner_text())]


def test_predict_correct_save_retrain_and_predict_again(served, page, dataset_dir, artifacts_dir):
    from playwright.sync_api import expect

    files = [path for folder in sorted(dataset_dir.iterdir()) for path in sorted(folder.glob("*.jpg"))[:10:5]]
    screenshot = artifacts_dir / "app-e2e.png"
    try:
        page.goto(served.url)
        expect(page.locator("#status")).to_contain_text("v1", timeout=TIMEOUT_MS)

        # 1. predict: captions "label · NN%" in the gallery, one per image
        page.locator("#upload input[type=file]").set_input_files(files)
        expect(page.locator("#upload")).to_contain_text(files[-1].stem, timeout=TIMEOUT_MS)
        expect(page.locator("#upload")).not_to_contain_text("Uploading", timeout=TIMEOUT_MS)
        page.click("#predict-btn")
        expect(page.locator("#batch-summary")).to_contain_text("6 images predicted by v1", timeout=TIMEOUT_MS)
        expect(page.locator("#gallery")).to_contain_text(" · ", timeout=TIMEOUT_MS)
        assert [label for label, _ in captions(page)] == [p.parent.name for p in files]
        assert all(0 <= percent <= 100 for _, percent in captions(page))

        # 2. correct the first row's label to a new class in the editor: select the cell, Enter opens its
        #    text box, type, Enter commits
        cell = page.locator('#editor [data-testid="cell-0-6"]')
        expect(cell).to_have_text("circles")
        cell.click()
        page.keyboard.press("Enter")
        box = cell.locator("textarea")
        expect(box).to_be_visible()
        box.fill("blobs")
        box.press("Enter")
        expect(cell).to_contain_text("blobs")  # a selected cell also shows its menu button "⋮"
        expect(cell).not_to_contain_text("circles")

        # 3. save
        page.click("#save-btn")
        expect(page.locator("#save-msg")).to_contain_text("Saved", timeout=TIMEOUT_MS)
        expect(page.locator("#save-msg")).to_contain_text("New classes: blobs")

        # 4. retrain from the Train tab with its default fields
        page.get_by_role("tab", name="Train").click()
        page.click("#train-btn")
        expect(page.locator("#train-result")).to_contain_text("is live", timeout=180_000)
        expect(page.locator("#train-result")).to_contain_text("v2 is live")

        # 5. the next prediction (the same files are still in the upload box) uses v2
        page.get_by_role("tab", name="Predict & label").click()
        page.click("#predict-btn")
        expect(page.locator("#batch-summary")).to_contain_text("6 images predicted by v2", timeout=TIMEOUT_MS)
        assert len(captions(page)) == 6
        expect(page.locator("#editor [data-testid='cell-5-1']")).to_have_text(files[-1].name)
        page.wait_for_timeout(1000)  # let the plots' images paint before the screenshot
        page.screenshot(path=str(screenshot), full_page=True)
    except Exception:
        page.screenshot(path=str(screenshot), full_page=True)
        raise

    status = served.client().predict(api_name="/status")
    assert status["active_version"] == "v2" and "blobs" in status["classes"]
    assert status["labelled_images"] == 6  # the edited row and the five confirmed predictions
