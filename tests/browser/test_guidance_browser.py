"""The Guidance tab in a real browser: it opens on finished comparisons, Fashion-MNIST's four panels and the
text-to-image ones (none, classifier-free, CLIP, colour guidance) with the negative-prompt pair."""

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

    # the text-to-image panels, computed on arrival too (mini-SD, CLIP guidance at 10, colour towards blue)
    page.locator("#gt2i-info").get_by_text("clip_score").first.wait_for(timeout=420_000)
    assert page.locator("#gt2i-panels img").count() == 4
    t2i_table = page.locator("#gt2i-table")
    for panel in ("none", "classifier-free", "CLIP guidance", "colour guidance"):
        assert t2i_table.get_by_role("cell", name=panel, exact=True).count() == 1
    assert page.locator("#gt2i-clip-scale input[type=number]").input_value() == "10"
    page.locator("#neg-info").get_by_text("with the negative prompt").first.wait_for(timeout=240_000)
    page.locator("#neg-gallery img").nth(1).wait_for()
    assert page.locator("#neg-gallery img").count() == 2
    assert page.locator("#guide-sweep").is_visible()  # the guidance sweep moved here
    page.screenshot(path=str(artifacts / "guidance_tab.png"), full_page=True)


def test_a_link_to_the_text_to_image_panels_opens_the_guidance_tab_and_fills_them(page, app_url):
    page.goto(app_url + "?tab=guidance_t2i&prompt=a+blue+bag&clip_guidance_scale=12&colour=%23d62828")
    prompt = page.locator("#gt2i-prompt textarea")
    prompt.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#gt2i-prompt textarea').value === 'a blue bag'")
    assert page.locator("#gt2i-clip-scale input[type=number]").input_value() == "12"
    assert page.locator("#link-note").is_hidden()
