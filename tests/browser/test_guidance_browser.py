"""The Guidance tab in a real browser: it opens on a finished comparison of the four panels."""

from tests.conftest import open_tab


def test_guidance_tab_opens_on_a_finished_comparison(page, artifacts):
    open_tab(page, "Guidance")
    info = page.locator("#guide-info")
    info.get_by_text("seconds_per_image").first.wait_for(timeout=240_000)
    assert page.locator("#guide-panels img").count() == 4  # none, classifier-free, classifier, both
    table = page.locator("#guide-table")
    for mode in ("none", "classifier-free", "classifier", "both"):
        assert table.get_by_role("cell", name=mode, exact=True).count() == 1
    assert page.locator("#guide-classifier-scale input[type=number]").input_value() != "0"
    assert page.locator("#weights-gallery").is_visible()
    page.screenshot(path=str(artifacts / "guidance_tab.png"), full_page=True)
