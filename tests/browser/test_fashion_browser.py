"""The class-conditional tab in a real browser: pick "Ankle boot", generate, see the samples."""

from tests.conftest import open_tab

TAB = "Class-conditional (Fashion-MNIST)"


def test_ankle_boots_appear_in_the_samples(page, artifacts):
    open_tab(page, TAB)
    page.locator("#fashion-class input").click()
    page.get_by_role("option", name="Ankle boot").click()
    page.locator("#fashion-count input[type=number]").fill("8")
    page.locator("#fashion-count input[type=number]").press("Enter")
    page.locator("#fashion-generate").click()
    samples = page.locator("#fashion-samples")
    # the example shown on arrival (16 sandals) is already there: wait for this run's own samples
    page.locator("#fashion-info").get_by_text("Ankle boot").wait_for(timeout=120_000)
    assert samples.locator("img").count() == 1  # one grid picture of the 8
    assert page.locator("#fashion-trajectory img").count() == 1
    page.screenshot(path=str(artifacts / "fashion_tab.png"), full_page=True)


def test_forward_process_view_is_there(page):
    open_tab(page, TAB)
    page.get_by_text("The forward process: what the model learned to undo").wait_for()
    page.get_by_text("t=999", exact=False).first.wait_for()
