"""The text-to-image tab in a real browser: pick the tiny SD preset, generate, see the image and the details."""

from tests.conftest import open_tab


def test_generate_with_the_tiny_preset_shows_a_gallery_image(page, artifacts):
    open_tab(page, "Text to image")
    model = page.locator("#t2i-model input")
    assert model.input_value() == "tiny-SD (test)"  # local presets come first
    steps = page.locator("#t2i-steps input[type=number]")
    steps.fill("3")
    steps.press("Enter")
    page.locator("#t2i-generate").click()

    page.locator("#t2i-gallery img").first.wait_for()
    page.locator("#t2i-info").get_by_text("unet_calls").wait_for()
    assert page.locator("#t2i-gallery img").count() >= 1
    assert page.locator("#t2i-preview img").count() == 1  # the last step's live preview stays
    info = page.locator("#t2i-info").inner_text()
    assert "tiny-SD (test)" in info and "num_inference_steps" in info
    page.screenshot(path=str(artifacts / "txt2img_tab.png"), full_page=True)


def test_sdxl_accordion_appears_for_sdxl_presets(page):
    open_tab(page, "Text to image")
    assert page.get_by_text("SDXL micro-conditioning").count() == 0 or not page.get_by_text(
        "SDXL micro-conditioning").first.is_visible()
    page.locator("#t2i-model input").click()
    page.get_by_role("option", name="tiny-SDXL (test)").click()
    page.get_by_text("SDXL micro-conditioning").first.wait_for(state="visible")
