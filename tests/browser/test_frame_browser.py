"""The page in a real browser (Debian's chromium, driven by Playwright)."""

from tests.conftest import open_tab

TABS = ["Class-conditional (Fashion-MNIST)", "Text to image", "VAE compression", "Tokenizer"]


def test_four_tabs_in_order(page):
    labels = [t.inner_text().strip() for t in page.get_by_role("tab").all()]
    assert labels[:4] == TABS
    assert page.title() == "Stable Diffusion Explorer"


def test_tokenizer_tab_shows_the_books_ids(page, artifacts):
    open_tab(page, "Tokenizer")
    box = page.get_by_label("Prompt", exact=True)
    box.fill("A photograph of a puppy")
    chips = page.locator("#tok-chips")
    chips.get_by_text("8853").wait_for()
    text = chips.inner_text()
    for token_id in ("49406", "320", "8853", "539", "6829", "49407"):
        assert token_id in text
    page.screenshot(path=str(artifacts / "tokenizer_tab.png"), full_page=True)


def test_tokenizer_tab_warns_about_cut_tokens(page, artifacts):
    open_tab(page, "Tokenizer")
    page.get_by_label("Prompt", exact=True).fill("a cat " * 60)
    page.get_by_text("tokens are cut").wait_for()
    assert page.locator(".tok-chip.cut").count() == 45
    page.screenshot(path=str(artifacts / "tokenizer_tab_truncated.png"), full_page=True)
