"""Issue 17's review workspace in a real headless Chromium, keyboard only after the upload: 128 Fashion-MNIST
test images predicted by a head trained in the fixture on other Fashion-MNIST images; corrections, a bulk
relabel and its undo, a similar-images offer accepted and undone, an HTML label, filters, a reload, the batch predicted again, the tab closed and the
server killed with SIGKILL; then MongoDB holds exactly the labels the person set and nothing else."""
from __future__ import annotations

import hashlib
import random
import shutil

import pytest

from test_app_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 120_000
HOSTILE = "<img src=x onerror=alert(1)>"


class Keys:
    """The keyboard, counting every key press."""

    def __init__(self, page):
        self.page, self.count = page, 0

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.count += 1


@pytest.fixture(scope="module")
def fashion(tmp_path_factory, backbone_dir):
    """A DATA_DIR with a head trained on 200 Fashion-MNIST training images, and 128 test images (sha256 →
    (path, true class)) in a shuffled upload order."""
    from bench.data import image_files, write_subset
    from classifier.registry import LocalRegistry
    from settings import load_settings
    from training.config import TrainConfig
    from training.data import load_samples
    from training.run import train_version

    root = tmp_path_factory.mktemp("review-fashion")
    data = root / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    trained = load_settings({"DATA_DIR": str(data)})
    train_version(load_samples(write_subset(root, "train", 0, 200)).samples, TrainConfig(mode="head"), trained,
                  LocalRegistry(trained.models_dir))
    files = image_files(write_subset(root, "test", 0, 128))
    random.Random(17).shuffle(files)
    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): p.parent.name for p in files}
    return {"data": data, "files": files, "truth": truth}


def cards(page) -> list[dict]:
    """The grid's cards in display order: sha256, state, save flag, prediction and human label."""
    return page.evaluate("""() => [...document.querySelectorAll('#review .rv-card')].map(c => ({
        sha256: c.dataset.sha256, state: c.dataset.state, save: c.dataset.save,
        pred: c.querySelector('.rv-pred-label').textContent,
        human: c.querySelector('.rv-human').textContent.replace(/^[\\u2713\\u2192] /, '')}))""")


def focused(page) -> str | None:
    return page.evaluate("document.activeElement && document.activeElement.dataset.sha256 || null")


def next_untouched(page) -> str:
    """Arrow right until the focused card is untouched; its sha256."""
    while page.evaluate("document.activeElement.dataset.state") != "untouched":
        page.keyboard.press("ArrowRight")
    return focused(page)


def wait_saved(page) -> None:
    page.wait_for_function("""() => document.querySelectorAll('#review .rv-card').length > 0 &&
        !document.querySelector('#review .rv-card[data-save="pending"], #review .rv-card[data-save="error"]')""",
                           timeout=TIMEOUT_MS)


def upload(page, files) -> None:
    """The one mouse action: the upload button and its file chooser."""
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(files)


def test_keyboard_review_loses_and_invents_nothing(fashion, launch_app, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    from labeling.store import open_store
    from settings import load_settings

    truth = fashion["truth"]
    app = launch_app(fashion["data"])
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    shot = lambda name: page.screenshot(path=str(artifacts_dir / f"review-{name}.png"))  # noqa: E731
    expected: dict[str, str] = {}
    try:
        page.goto(app.url)
        upload(page, fashion["files"])
        page.wait_for_function("document.querySelectorAll('#review .rv-card').length === 128", timeout=TIMEOUT_MS)
        shown = cards(page)
        assert sorted(c["sha256"] for c in shown) == sorted(truth)
        assert focused(page) == shown[0]["sha256"]  # no tabbing through 128 thumbnails
        legend = {e["label"]: e["key"] for e in page.evaluate(
            "[...document.querySelectorAll('#review-legend [data-key]')].map(e => ({key: e.dataset.key, label: e.dataset.label}))")}
        assert set(truth.values()) <= set(legend)
        wrong = [c for c in shown if c["pred"] != truth[c["sha256"]]]
        assert len(wrong) >= 10

        # 10 corrections: in the suggested order (least confident first), a class key corrects and moves on,
        # an arrow skips a right prediction
        keys = Keys(page)
        corrected = 0
        while corrected < 10:
            sha = focused(page)
            row = next(c for c in cards(page) if c["sha256"] == sha)
            if row["pred"] != truth[sha]:
                keys.press(legend[truth[sha]])
                expected[sha] = truth[sha]
                corrected += 1
            else:
                keys.press("ArrowRight")
        correction_keys = keys.count
        wait_saved(page)
        shot("corrections")
        assert correction_keys <= 25, correction_keys

        # label by cluster: a correction whose old prediction has close unreviewed neighbours offers them, the
        # focus staying on the next card; y relabels the group, and one u reverts all of it
        offer = None
        for _ in range(128):
            sha = focused(page)
            row = next(c for c in cards(page) if c["sha256"] == sha)
            if row["state"] != "untouched" or row["pred"] == truth[sha]:
                page.keyboard.press("ArrowRight")
                continue
            page.keyboard.press(legend[truth[sha]])
            expected[sha] = truth[sha]
            page.wait_for_function("document.querySelector('#review .rv-root').dataset.offer !== 'asking'", timeout=TIMEOUT_MS)
            if page.get_attribute("#review .rv-root", "data-offer") == "open":
                offer = row
                break
        assert offer, "no correction of this batch offered similar images"
        offered = page.evaluate("[...document.querySelectorAll('#review .rv-card.rv-offered')].map(c => c.dataset.sha256)")
        now = {c["sha256"]: c for c in cards(page)}
        assert offered and offer["sha256"] not in offered
        assert all(now[s]["state"] == "untouched" and now[s]["pred"] == offer["pred"] for s in offered)
        assert focused(page) not in (None, offer["sha256"])  # the next card, not the offer bar
        bar = page.inner_text("#review .rv-offer")
        assert f"{len(offered)} similar image" in bar and offer["pred"] in bar and truth[offer["sha256"]] in bar
        page.evaluate("""() => { const grid = document.querySelector('#review .rv-grid');  // ringed cards in view
            grid.scrollTop = document.querySelector('#review .rv-offered').offsetTop - grid.offsetTop - 8; }""")
        shot("offer")
        page.keyboard.press("y")
        now = {c["sha256"]: c for c in cards(page)}
        assert all(now[s]["human"] == truth[offer["sha256"]] for s in offered)
        assert page.get_attribute("#review .rv-root", "data-offer") is None
        wait_saved(page)
        page.keyboard.press("u")
        wait_saved(page)
        now = {c["sha256"]: c for c in cards(page)}
        assert all(now[s]["state"] == "untouched" for s in offered)
        assert now[offer["sha256"]]["human"] == truth[offer["sha256"]]

        # bulk: the focused card's predicted class as a filter, select all, a class key; one undo restores it
        before = {c["sha256"]: (c["state"], c["human"]) for c in cards(page)}
        keys = Keys(page)
        for key in ("p", "a", legend["Bag"]):
            keys.press(key)
        bulk_actions = keys.count
        filtered = cards(page)
        assert 0 < len(filtered) < 128 and all(c["human"] == "Bag" for c in filtered)
        wait_saved(page)
        shot("bulk")
        keys.press("u")
        wait_saved(page)
        assert {c["sha256"]: (c["state"], c["human"]) for c in cards(page)} == {s: before[s] for s in
                                                                                 (c["sha256"] for c in filtered)}
        keys.press("p")  # the filter off again: every card, edits intact
        assert {c["sha256"]: (c["state"], c["human"]) for c in cards(page)} == before
        assert bulk_actions <= 4

        # a confirmation and an HTML label typed in the type-ahead box: shown as text, nothing runs
        page.keyboard.press("End")
        confirmed = focused(page)
        page.keyboard.press("Enter")
        expected[confirmed] = next(c["pred"] for c in cards(page) if c["sha256"] == confirmed)
        page.keyboard.press("Home")
        hostile = focused(page)
        page.keyboard.press("/")
        page.keyboard.type(HOSTILE)
        page.keyboard.press("Enter")
        expected[hostile] = HOSTILE
        wait_saved(page)
        card = page.locator(f'#review .rv-card[data-sha256="{hostile}"] .rv-human')
        assert HOSTILE in card.inner_text()
        assert page.locator("#review img[src='x']").count() == 0 and not dialogs

        # a failed save shows on its card, and is retried until it lands
        flaky = next_untouched(page)
        page.route("**/component_server/**", lambda route: route.abort())
        # the route is live before the key is pressed: a probe to the same endpoint must fail first
        page.wait_for_function("""() => fetch(location.origin + location.pathname.replace(/\\/$/, '') +
            '/gradio_api/component_server/', {method: 'POST', body: '{}'}).then(() => false, () => true)""",
                               timeout=TIMEOUT_MS, polling=100)
        page.keyboard.press(legend["Sandal"])
        expected[flaky] = "Sandal"
        card = page.locator(f'#review .rv-card[data-sha256="{flaky}"]')
        expect(card).to_have_attribute("data-save", "error", timeout=TIMEOUT_MS)
        assert "not saved" in card.inner_text()
        page.unroute("**/component_server/**")
        expect(card).to_have_attribute("data-save", "saved", timeout=TIMEOUT_MS)

        # someone else labels the focused card meanwhile: this edit loses, and the card says so
        contested = next_untouched(page)
        app.client().predict([{"sha256": contested, "label": "Dress"}], api_name="/save_labels")
        page.keyboard.press(legend["Coat"])
        card = page.locator(f'#review .rv-card[data-sha256="{contested}"]')
        expect(card).to_have_attribute("data-save", "conflict", timeout=TIMEOUT_MS)
        assert "changed meanwhile by anonymous to Dress" in card.inner_text()
        expected[contested] = "Dress"
        shot("conflict")
        page.keyboard.press("u")  # undoes the last edit that landed (Sandal), never the other person's label
        expected.pop(flaky)
        wait_saved(page)
        assert page.get_attribute(f'#review .rv-card[data-sha256="{flaky}"]', "data-state") == "untouched"
        page.keyboard.press("Home")

        # filters: state cycle, predicted class, back to all; then the help and the detail view
        for key in ("s", "s", "s", "s", "p", "p"):
            page.keyboard.press(key)
        page.keyboard.press("?")
        shot("help")
        page.keyboard.press("Escape")
        page.keyboard.press("o")
        page.wait_for_selector("#review .rv-detail .rv-history td", timeout=TIMEOUT_MS)
        assert HOSTILE in page.locator("#review .rv-detail").inner_text()
        shot("detail")
        page.keyboard.press("Escape")
        assert {c["sha256"]: c["human"] for c in cards(page) if c["state"] != "untouched"} == expected

        # reload: the last batch comes back from the store, with its labels
        first_batch = page.get_attribute("#review .rv-root", "data-batch")
        page.reload()
        page.wait_for_function("document.querySelectorAll('#review .rv-card').length === 128", timeout=TIMEOUT_MS)
        assert page.get_attribute("#review .rv-root", "data-batch") == first_batch
        assert {c["sha256"]: c["human"] for c in cards(page) if c["state"] != "untouched"} == expected
        shot("reloaded")
        # predict the batch again: the store's labels are on the cards; untouched ones stay untouched
        upload(page, fashion["files"])
        page.wait_for_function(f"""() => {{ const root = document.querySelector('#review .rv-root');
            return root.dataset.batch && root.dataset.batch !== {first_batch!r} &&
                   document.querySelectorAll('#review .rv-card').length === 128; }}""", timeout=TIMEOUT_MS)
        page.wait_for_function("document.querySelectorAll('#review .rv-card').length === 128", timeout=TIMEOUT_MS)
        again = cards(page)
        assert {c["sha256"]: c["human"] for c in again if c["state"] != "untouched"} == expected
        assert page.locator("#review img[src='x']").count() == 0 and not dialogs
        shot("predicted-again")
    finally:
        page.close()  # closing the tab
        browser.close()
        playwright.stop()
        app.process.kill()  # SIGKILL, once every card showed saved
        app.process.wait(timeout=30)

    store = open_store(load_settings({"DATA_DIR": str(fashion["data"])}))
    try:
        stored = store.current_labels()
        reverted = {sha for sha, row in store.label_states(include_reverted=True).items() if row["label"] is None}
    finally:
        store.close()
    assert stored == expected  # nothing lost or overwritten, and no untouched prediction stored
    assert reverted and not reverted & set(expected)  # the undone bulk labels: reverted, with their history
    print(f"10 corrections: {correction_keys} keys; bulk relabel: {bulk_actions} actions + 1 undo")
