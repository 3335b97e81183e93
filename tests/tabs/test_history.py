"""A visitor's history under a generating tab (``tabs.history``): newest first, at most 12, settings kept."""

from tabs import history


def test_entries_are_newest_first_and_capped_at_twelve():
    entries = []
    for seed in range(15):
        entries = history.add_entry(entries, f"/tmp/{seed}.png", f"seed {seed}", {"seed": seed})
    assert len(entries) == history.MAX_ENTRIES == 12
    assert [e["settings"]["seed"] for e in entries] == list(range(14, 2, -1))
    assert history.gallery_items(entries)[0] == ("/tmp/14.png", "seed 14")


def test_adding_leaves_the_old_list_alone_and_no_image_adds_nothing():
    first = history.add_entry(None, "a.png", "a", {"seed": 1})
    second = history.add_entry(first, "b.png", "b", {"seed": 2})
    assert len(first) == 1 and len(second) == 2
    assert history.add_entry(second, None, "none", {"seed": 3}) == second


def test_settings_at_a_gallery_index():
    entries = history.add_entry(history.add_entry([], "old.png", "old", {"seed": 1}), "new.png", "new", {"seed": 2})
    assert history.settings_at(entries, 1) == {"seed": 1}
    assert history.settings_at(entries, 0) == {"seed": 2}
    for bad in (2, -1, None, True, "0"):
        assert history.settings_at(entries, bad) is None
    settings = history.settings_at(entries, 0)
    settings["seed"] = 99
    assert entries[0]["settings"]["seed"] == 2  # a copy


def test_first_image_and_captions():
    assert history.first_image([("x.png", "cap"), ("y.png", None)]) == "x.png"
    assert history.first_image(["x.png"]) == "x.png"
    assert history.first_image("grid.png") == "grid.png"  # one picture (the Fashion samples grid)
    assert history.first_image(None) is None and history.first_image([]) is None and history.first_image("") is None
    assert history.shorten("a\n  b") == "a b"
    assert len(history.shorten("x" * 100)) == history.CAPTION_CHARS
