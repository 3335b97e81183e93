"""Results on arrival: every tab shows a finished example before any click, and its controls hold its settings."""

from tests.conftest import open_tab


def test_every_tab_shows_its_example_result_without_a_click(page, artifacts):
    # Class-conditional (the tab that opens first): 16 sandals, the trajectory and the run's JSON
    samples = page.locator("#fashion-samples")
    info = page.locator("#fashion-info")
    info.get_by_text("images_per_s").wait_for(timeout=120_000)
    assert samples.locator("img").count() == 1  # one grid picture of the 16
    assert page.locator("#fashion-trajectory img").count() == 1
    assert '"count":16' in "".join(info.inner_text().split())
    assert "DPM-Solver++" in info.inner_text()
    assert page.locator("#fashion-count input[type=number]").input_value() == "16"  # the example's settings

    open_tab(page, "Text to image")
    page.locator("#t2i-info").get_by_text("unet_calls").wait_for(timeout=120_000)
    assert page.locator("#t2i-gallery img").count() == 1
    assert "mini-SD (offline)" in page.locator("#t2i-info").inner_text()
    assert page.locator("#t2i-prompt textarea").input_value() == "a blue sneaker"

    open_tab(page, "VAE compression")
    page.locator("#vae-numbers").get_by_text("psnr").first.wait_for(timeout=120_000)
    assert page.locator("#vae-channels img").count() == 4

    open_tab(page, "Tokenizer")
    page.locator("#tok-chips").wait_for()

    open_tab(page, "Inside the UNet")
    page.locator("#unet-heatmaps img").first.wait_for(timeout=120_000)
    assert page.locator("#unet-heatmaps img").count() >= 3  # start, item words, end
    page.screenshot(path=str(artifacts / "arrival_unet_tab.png"), full_page=True)
