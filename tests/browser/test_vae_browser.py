"""The VAE compression tab in a real browser: pick an example, run it, see the channels and the numbers."""

from playwright.sync_api import expect

from tests.conftest import open_tab


def test_vae_tab_opens_on_the_offline_mini_vae_at_64_px(page):
    open_tab(page, "VAE compression")
    assert page.get_by_label("VAE", exact=True).input_value() == "mini VAE (offline)"
    expect(page.get_by_label("64", exact=True)).to_be_checked()


def test_vae_tab_round_trip_of_an_example(page, artifacts):
    open_tab(page, "VAE compression")
    page.get_by_text("Geometric scene with text").click()
    page.locator("#vae-input img").wait_for()  # the example is in the upload box
    page.get_by_label("VAE", exact=True).click()
    page.get_by_role("option", name="tiny-VAE (test)").click()
    expect(page.get_by_label("512", exact=True)).to_be_checked()  # choosing a VAE sets its size (the mini VAE's is 64)
    page.get_by_label("256", exact=True).check()
    page.get_by_role("button", name="Encode and decode").click()

    # the example shown on arrival (the mini VAE at 64 px) is already there: wait for this run's own summary
    summary = page.get_by_text("input values (3 × 256 × 384)")
    summary.wait_for()
    assert summary.is_visible()
    channels = page.locator("#vae-channels img")
    channels.nth(3).wait_for()
    assert channels.count() == 4
    numbers = "".join(page.locator("#vae-numbers").inner_text().split())  # the viewer puts tokens on lines
    for text in ('"compression_ratio":48', '"psnr":', '"ssim":', '"latent_values":6144', '"tiny-VAE(test)"'):
        assert text in numbers
    page.get_by_text("alpha_bar").wait_for()  # the noise view ran after the round trip
    page.locator("#vae-noisy-latent").scroll_into_view_if_needed()  # its images load lazily
    page.locator("#vae-noisy-latent img").wait_for()
    page.locator("#vae-noisy-pixels img").wait_for()
    page.screenshot(path=str(artifacts / "vae_tab.png"), full_page=True)

    timestep = page.get_by_label("number input for Timestep t")  # the slider's number box
    timestep.fill("999")
    timestep.press("Enter")
    page.wait_for_function("""() => document.querySelector('#vae-noise-numbers').innerText
                               .replace(/\\s/g, '').includes('"timestep":999')""")
    page.screenshot(path=str(artifacts / "vae_tab_t999.png"), full_page=True)
