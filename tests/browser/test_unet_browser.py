"""The "Inside the UNet" tab in a real browser: a mini-model prompt gives one heatmap per token."""

from tests.conftest import open_tab


def test_attention_heatmaps_for_the_default_positioned_prompt(page, artifacts):
    open_tab(page, "Inside the UNet")
    assert page.locator("#unet-prompt textarea").input_value() == "a red sneaker on the left"
    page.locator("#unet-attention-run").click()
    heatmaps = page.locator("#unet-heatmaps")
    heatmaps.locator("img").nth(4).wait_for(timeout=180_000)
    # <start> a red sneaker on the left <end>: 8 tokens, each with a heatmap captioned by its token
    assert heatmaps.locator("img").count() == 8
    text = heatmaps.inner_text()
    assert "sneaker</w>" in text and "(special)" in text
    page.screenshot(path=str(artifacts / "unet_tab.png"), full_page=True)


def test_anatomy_table_of_sd15(page):
    open_tab(page, "Inside the UNet")
    page.get_by_role("tab", name="Anatomy: latent vs pixel").click()
    page.locator("#unet-anatomy-run").click()
    page.locator("#unet-anatomy-table").get_by_text("859,520,964").first.wait_for(timeout=120_000)


def test_small_pictures_are_enlarged_with_nearest_neighbours(page):
    """A 64 px mini-model picture fills its 256 px box, scaled with nearest neighbours (sharp on a projector)."""
    open_tab(page, "Inside the UNet")
    img = page.locator("#unet-image img").first
    img.wait_for(timeout=180_000)
    page.wait_for_function("el => el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
    natural, shown = img.evaluate("el => [el.naturalWidth, el.getBoundingClientRect().width]")
    assert natural == 64 and shown >= 3 * natural, (natural, shown)
    assert img.evaluate("el => getComputedStyle(el).imageRendering") == "pixelated"
