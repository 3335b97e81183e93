"""The first visit and the live demo (issue 14), in a real browser: the history under a tab, links that
reproduce a result, the presenter view, and the page on a phone. Mini models, 64 px, a few steps."""

from urllib.parse import parse_qs, urlsplit

from tests.conftest import open_tab

T2I = "Text to image"
FASHION = "Class-conditional (Fashion-MNIST)"


def _set_number(page, selector: str, value) -> None:
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")


def _generate(page, seed: int, runs_before: int) -> None:
    """Text to image with ``seed`` and 3 steps; waits until the history holds ``runs_before + 1`` entries."""
    _set_number(page, "#t2i-seed input", seed)
    _set_number(page, "#t2i-steps input[type=number]", 3)
    page.locator("#t2i-generate").click()
    page.locator("#t2i-history img").nth(runs_before).wait_for()


def test_history_restores_the_settings_of_an_older_result(page, artifacts):
    open_tab(page, T2I)
    page.locator("#t2i-prompt textarea").fill("a red sneaker on the left")
    _generate(page, 11, 0)
    page.locator("#t2i-prompt textarea").fill("a blue bag")
    _generate(page, 22, 1)
    history = page.locator("#t2i-history")
    assert history.locator("img").count() == 2
    assert "seed 22" in history.inner_text() and "seed 11" in history.inner_text()  # newest first
    _set_number(page, "#t2i-steps input[type=number]", 9)

    history.locator("img").nth(1).click()  # the older one
    page.wait_for_function("document.querySelector('#t2i-seed input').value === '11'")
    assert page.locator("#t2i-prompt textarea").input_value() == "a red sneaker on the left"
    assert page.locator("#t2i-steps input[type=number]").input_value() == "3"
    page.screenshot(path=str(artifacts / "history_restored.png"), full_page=True)


def test_a_copied_link_opens_the_same_settings_and_runs_them(page, browser):
    open_tab(page, T2I)
    page.locator("#t2i-prompt textarea").fill("a green bag in the top right corner")
    _set_number(page, "#t2i-seed input", 5)
    _set_number(page, "#t2i-steps input[type=number]", 4)
    page.locator("#t2i-copy-link").click()
    link_box = page.locator("#t2i-link textarea")
    page.wait_for_function("document.querySelector('#t2i-link textarea').value.includes('tab=txt2img')")
    url = link_box.input_value()
    query = parse_qs(urlsplit(url).query)
    assert query["prompt"] == ["a green bag in the top right corner"] and query["seed"] == ["5"]
    assert query["num_inference_steps"] == ["4"] and query["run"] == ["1"] and query["model"] == ["mini-SD (offline)"]

    other = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    other.set_default_timeout(60_000)
    try:
        other.goto(url)
        other.locator("#t2i-history img").first.wait_for()  # run=1: the Generate button's own event ran
        assert other.get_by_role("tab", name=T2I).get_attribute("aria-selected") == "true"
        assert other.locator("#t2i-prompt textarea").input_value() == "a green bag in the top right corner"
        assert other.locator("#t2i-seed input").input_value() == "5"
        assert other.locator("#t2i-steps input[type=number]").input_value() == "4"
        assert "seed 5" in other.locator("#t2i-history").inner_text()
        assert other.locator("#link-note").count() == 0 or not other.locator("#link-note").is_visible()
    finally:
        other.context.close()


def test_a_hostile_link_is_ignored_with_a_note_and_the_page_still_works(page, app_url):
    page.goto(app_url + "?tab=txt2img&model=../../etc/passwd&num_inference_steps=99999&seed=-3&x=%3Cscript%3E&run=1")
    note = page.locator("#link-note")
    note.get_by_text("Part of this link was not used").wait_for()
    text = note.inner_text()
    assert "model" in text and "num_inference_steps" in text and "seed" in text and "passwd" not in text
    assert page.locator("#link-note script").count() == 0
    assert page.get_by_role("tab", name=T2I).get_attribute("aria-selected") == "true"  # the valid part
    assert page.locator("#t2i-model input").input_value() == "mini-SD (offline)"
    assert page.locator("#t2i-steps input[type=number]").input_value() == "25"  # the model's default
    assert page.locator("#t2i-history img").count() == 0  # nothing ran
    _generate(page, 3, 0)  # the page still works


def test_a_class_link_keeps_its_steps_with_its_sampler(page, app_url):
    """An old link's short keys (steps, guidance) still open: read as num_inference_steps and guidance_scale."""
    page.goto(app_url + "?tab=class&class=Bag&sampler=DDIM&steps=7&count=4&guidance=3&seed=9")
    page.locator("#fashion-class input").wait_for()
    page.wait_for_function("document.querySelector('#fashion-count input[type=number]').value === '4'")
    assert page.get_by_role("tab", name=FASHION).get_attribute("aria-selected") == "true"
    assert page.locator("#fashion-class input").input_value() == "Bag"
    assert page.get_by_label("DDIM").is_checked()
    assert page.locator("#fashion-steps input[type=number]").input_value() == "7"


def test_presenter_view_folds_the_explanations_and_enlarges_type(page, artifacts):
    open_tab(page, T2I)
    intro = page.locator(".explain").first  # the page's introduction
    assert intro.is_visible() and page.locator("#t2i-intro").is_visible()
    font = "parseFloat(getComputedStyle(document.querySelector('#t2i-prompt textarea')).fontSize)"
    size = page.evaluate(font)
    page.locator("#presenter-view input[type=checkbox]").check()
    page.wait_for_function("document.body.classList.contains('presenter')")
    assert not intro.is_visible() and not page.locator("#t2i-intro").is_visible()
    assert page.evaluate(font) > size
    page.screenshot(path=str(artifacts / "presenter_view.png"))
    page.locator("#presenter-view input[type=checkbox]").uncheck()
    page.wait_for_function("!document.body.classList.contains('presenter')")
    assert intro.is_visible() and page.evaluate(font) == size


PHONE_CONTROLS = {
    FASHION: ["#fashion-class", "#fashion-steps", "#fashion-generate", "#fashion-copy-link", "#fashion-samples"],
    T2I: ["#t2i-model", "#t2i-prompt", "#t2i-seed", "#t2i-generate", "#t2i-copy-link", "#t2i-gallery"],
    "VAE compression": ["#vae-input"],
    "Tokenizer": ["#tok-chips"],
    "Inside the UNet": ["#unet-prompt", "#unet-attention-run"],
    "Guidance": ["#guide-run", "#gt2i-prompt", "#gt2i-run", "#gt2i-copy-link", "#gt2i-panels", "#guide-sweep",
                 "#neg-run"],
}


def test_a_phone_has_no_sideways_scroll_and_reaches_every_control(browser, app_url, tmp_path, artifacts):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app_url)
        page.wait_for_selector("button[role=tab]")
        for tab, selectors in PHONE_CONTROLS.items():
            open_tab(page, tab)
            for selector in selectors:
                control = page.locator(selector).first
                control.scroll_into_view_if_needed()
                assert control.is_visible(), (tab, selector)
                box = control.bounding_box()
                assert box["x"] >= -1 and box["x"] + box["width"] <= 391, (tab, selector, box)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, (tab, width)
            page.screenshot(path=str(tmp_path / f"phone-{tab.split()[0]}.png"), full_page=True)
        page.screenshot(path=str(artifacts / "phone_width.png"))
    finally:
        context.close()


def test_enter_in_the_prompt_runs_text_to_image(page):
    open_tab(page, T2I)
    page.locator("#t2i-info").get_by_text("unet_calls").wait_for(timeout=120_000)  # the example on arrival
    _set_number(page, "#t2i-seed input", 5)
    _set_number(page, "#t2i-steps input[type=number]", 3)
    prompt = page.locator("#t2i-prompt textarea")
    prompt.fill("a green bag")
    prompt.press("Enter")  # no click: Enter submits
    page.wait_for_function(
        "document.querySelector('#t2i-info').innerText.replace(/\\s/g, '').includes('\"seed\":5')", timeout=120_000)
    assert page.locator("#t2i-gallery img").count() == 1


def test_stop_cancels_a_long_run_and_the_next_run_starts_at_once(page):
    open_tab(page, FASHION)
    info = page.locator("#fashion-info")
    info.get_by_text("images_per_s").wait_for(timeout=120_000)  # the example on arrival: 16 sandals
    example = page.locator("#fashion-samples img").get_attribute("src")
    trajectory = page.locator("#fashion-trajectory img").get_attribute("src")
    page.get_by_label("DDPM", exact=True).check()
    _set_number(page, "#fashion-steps input[type=number]", 1000)  # 16 images x 1000 steps: minutes on a CPU
    page.locator("#fashion-generate").click()
    # it is running: its progress shows, and its trajectory picture has started to grow
    page.get_by_text("DDPM: denoising").first.wait_for(timeout=60_000)
    grown = f"document.querySelector('#fashion-trajectory img').getAttribute('src') !== {trajectory!r}"
    page.wait_for_function(grown, timeout=60_000)
    # Stop is answered once the running step yields (at most ~0.5 s, the sampler's heartbeat); until then gradio's
    # page ignores another click on Generate, and once answered it sends /reset. Wait for that, as a user waits
    # for the run to stop, so the next click is never dropped.
    with page.expect_response(lambda r: r.url.endswith("/gradio_api/reset"), timeout=30_000):
        page.locator("#fashion-stop").click()
    # the cancelled run leaves the previous result, not half a result
    assert page.locator("#fashion-samples img").get_attribute("src") == example
    assert '"count":16' in "".join(info.inner_text().split())
    page.get_by_label("DPM-Solver++", exact=True).check()
    _set_number(page, "#fashion-steps input[type=number]", 4)
    _set_number(page, "#fashion-count input[type=number]", 2)
    page.locator("#fashion-generate").click()
    # far sooner than the 1000-step run could have ended: the queue was freed
    page.wait_for_function(
        "document.querySelector('#fashion-info').innerText.replace(/\\s/g, '').includes('\"count\":2')", timeout=90_000)
    assert page.locator("#fashion-samples img").get_attribute("src") != example
