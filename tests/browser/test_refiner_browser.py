"""The refiner hand-off view in a real browser (issue 23): opening its accordion under Text to image shows the
three pictures of the example and both models' steps; the switch-point slider spans 0.6-0.95."""

import re

from tests.conftest import open_tab


def test_opening_the_refiner_view_shows_the_hand_off(page, artifacts):
    open_tab(page, "Text to image")
    page.locator("#refiner").get_by_text("SDXL refiner: the hand-off").first.click()
    page.locator("#ref-info").get_by_text("refiner_steps").first.wait_for(timeout=240_000)
    for key in ("alone", "switch", "refined"):
        page.locator(f"#ref-{key} img").first.wait_for()
    slider = page.locator("#ref-switch input[type=range]")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("0.6", "0.95")
    page.locator("#refiner").screenshot(path=str(artifacts / "refiner_view.png"))

    # Compare runs the controls' values: a new seed and a later switch point reach the engine
    page.locator("#ref-seed input").fill("7")
    page.locator("#ref-switch input[type=number]").fill("0.9")
    page.locator("#ref-run").click()
    page.wait_for_function("/\"seed\"\\s*:\\s*7\\b/.test(document.querySelector('#ref-info').innerText)",
                           timeout=240_000)
    assert re.search(r'"denoising_end"\s*:\s*0\.9\b', page.locator("#ref-info").inner_text())
