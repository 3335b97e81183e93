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
