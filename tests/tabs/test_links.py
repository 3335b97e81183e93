"""Links that reproduce a result (``tabs.links``): every query value is checked like an input, or dropped
with a note; nothing from a link becomes a path or a model id. No gradio, no model loads."""

from urllib.parse import parse_qsl

from engine.fashion import sampling
from engine.presets import presets_for
from engine.txt2img import request as t2i
from tabs import links


def query(text: str) -> dict:
    return dict(parse_qsl(text, keep_blank_values=True))


def first_model() -> str:
    return t2i.pipeline_presets()[0].name


def test_a_good_txt2img_link_gives_typed_values_and_runs():
    model = first_model()
    low, _ = t2i.size_limits(t2i.get_pipeline_preset(model))
    link = links.parse_link({"tab": "txt2img", "prompt": "a blue sneaker", "negative_prompt": "red", "model": model,
                             "guidance_scale": "2.5", "num_inference_steps": "12", "scheduler": "DDIM", "seed": "7",
                             "width": str(low), "height": str(low), "num_images_per_prompt": "2", "run": "1"})
    assert link.notes == []
    assert link.tab == "txt2img" and link.run is True
    assert link.values == {"model": model, "prompt": "a blue sneaker", "negative_prompt": "red", "guidance_scale": 2.5,
                           "num_inference_steps": 12, "scheduler": "DDIM", "seed": 7, "width": low, "height": low,
                           "num_images_per_prompt": 2}


def test_the_keys_are_diffusers_names_and_old_links_still_open():
    """Issue 24: a link's keys (and a form's, and a history entry's) are diffusers' argument names; a link copied
    before, with the short keys, reads the same (a new key given too wins)."""
    every_key = {key for keys in links.KEYS.values() for key in keys}
    assert not every_key & set(links.OLD_KEYS) and set(links.OLD_KEYS.values()) <= every_key
    model = first_model()
    old = links.parse_link({"tab": "txt2img", "model": model, "prompt": "a bag", "negative": "red", "guidance": "2",
                            "steps": "12", "images": "2", "run": "1"})
    new = links.parse_link({"tab": "txt2img", "model": model, "prompt": "a bag", "negative_prompt": "red",
                            "guidance_scale": "2", "num_inference_steps": "12", "num_images_per_prompt": "2",
                            "run": "1"})
    assert old == new and old.run and old.notes == []
    both = links.parse_link({"tab": "guidance_t2i", "clip_scale": "3", "clip_guidance_scale": "12"})
    assert both.values == {"clip_guidance_scale": 12.0} and both.notes == []
    class_link = links.parse_link({"tab": "class", "sampler": "DDIM", "steps": "7", "guidance": "3"})
    assert class_link.values == {"sampler": "DDIM", "num_inference_steps": 7, "guidance_scale": 3.0}


def test_a_hostile_link_is_ignored_with_notes_and_does_not_run():
    link = links.parse_link(query("tab=txt2img&model=../../etc/passwd&num_inference_steps=99999&seed=-1&prompt="
                                  + "x" * 600
                                  + "&evil=<script>alert(1)</script>&run=1"))
    assert link.tab == "txt2img"
    assert link.values == {}
    assert link.run is False  # something was ignored: the visitor reads the note first
    text = " ".join(link.notes)
    for key in ("`model`", "`num_inference_steps`", "`seed`", "`prompt`", "evil"):
        assert key in text
    assert "<script>" not in text and "passwd" not in text  # the model's note does not echo the value


def test_steps_and_size_follow_the_links_model():
    turbo = next((p for p in t2i.pipeline_presets() if t2i.max_steps(p) < 30), None)
    model = turbo.name if turbo else first_model()
    high = t2i.max_steps(t2i.get_pipeline_preset(model))
    link = links.parse_link({"tab": "txt2img", "model": model, "num_inference_steps": str(high + 1), "width": "100"})
    assert link.values == {"model": model}
    assert any("`num_inference_steps`" in n for n in link.notes) and any("multiple of 8" in n for n in link.notes)


def test_a_class_link_checks_the_steps_against_its_sampler():
    good = links.parse_link({"tab": "class", "class": "ankle boot", "count": "8", "sampler": "DDIM",
                             "num_inference_steps": "300", "guidance_scale": "3", "seed": "1234"})
    assert good.notes == [] and good.run is False
    assert good.values == {"sampler": "DDIM", "class": "Ankle boot", "count": 8, "num_inference_steps": 300,
                           "guidance_scale": 3.0, "seed": 1234}
    bad = links.parse_link({"tab": "class", "num_inference_steps": "300", "count": "65", "sampler": "PLMS",
                            "class": "Dog"})
    assert bad.values == {}  # 300 is too many for DPM-Solver++, the default sampler
    assert len(bad.notes) == 4


def test_the_class_model_must_be_a_preset():
    names = [p.name for p in presets_for("class-unet")]
    assert links.parse_link({"tab": "class", "model": "/etc/passwd"}).values == {}
    if names:
        assert links.parse_link({"tab": "class", "model": names[0]}).values == {"model": names[0]}


def test_tabs_unknown_keys_and_gradios_own_parameters():
    assert links.parse_link({}) == links.Link()
    assert links.parse_link({"__theme": "dark", "__sign": "abc", "view": "api"}) == links.Link()
    other = links.parse_link({"tab": "vae", "prompt": "x"})
    assert other.tab == "vae" and other.values == {} and "prompt" in other.notes[0]
    unknown = links.parse_link({"tab": "../../etc", "seed": "1"})
    assert unknown.tab is None and len(unknown.notes) == 2
    assert links.parse_link({"tab": "txt2img", "run": "yes"}).notes  # only run=1 runs
    many = links.parse_link({f"k{i}": "1" for i in range(100)})
    assert "first 40" in many.notes[0]


def test_notes_escape_markdown_and_html():
    link = links.parse_link({"tab": "class", "class": "[click](javascript:alert(1)) <b>"})
    assert "[click]" not in link.notes[0] and "<b>" not in link.notes[0]
    assert links.note_markdown([]) == ""
    assert links.note_markdown(["x"]).startswith("**Part of this link was not used.**")


def test_copy_link_js_names_the_tab_and_keys():
    js = links.copy_link_js("class", ["class", "seed"])
    assert js.startswith("(...values) =>")
    assert '"class"' in js and '["class", "seed"]' in js and 'params.set("run", "1")' in js


def test_every_link_key_of_the_class_tab_is_a_sampling_input():
    assert set(links.KEYS["class"]) == {"class", "count", "sampler", "num_inference_steps", "guidance_scale",
                                        "classifier_scale", "seed", "model"}
    assert set(links.KEYS["guidance"]) == set(links.KEYS["class"]) - {"model"}  # the Guidance tab's panels


def test_a_classifier_scale_in_a_link_is_checked():
    good = links.parse_link({"tab": "guidance", "class": "Shirt", "classifier_scale": "7.5", "run": "1"})
    assert good.values == {"class": "Shirt", "classifier_scale": 7.5} and good.run
    bad = links.parse_link({"tab": "class", "classifier_scale": "99"})
    assert "classifier_scale" not in bad.values and "between 0 and 50" in bad.notes[0]
    assert max(hi for _, hi, _ in sampling.SAMPLER_STEPS.values()) == 1000


def test_the_guidance_tabs_text_to_image_sections_have_their_own_checked_links():
    """The Guidance tab's text-to-image panels and negative-prompt pair: ``tab=guidance_t2i`` / ``guidance_neg``
    open the Guidance tab, CLIP and colour guidance are checked like /generate's inputs."""
    model = first_model()
    good = links.parse_link({"tab": "guidance_t2i", "model": model, "prompt": "a red sneaker", "guidance_scale": "2",
                             "clip_guidance_scale": "10", "colour": "#1f4fd1", "colour_scale": "400",
                             "colour_every": "5", "num_inference_steps": "20", "seed": "42", "run": "1"})
    assert good.notes == [] and good.run and links.tab_of(good.tab) == "guidance"
    assert good.values == {"model": model, "prompt": "a red sneaker", "guidance_scale": 2.0,
                           "clip_guidance_scale": 10.0, "colour": "#1f4fd1", "colour_scale": 400.0, "colour_every": 5,
                           "num_inference_steps": 20, "seed": 42}
    bad = links.parse_link({"tab": "guidance_t2i", "colour": "url(x)", "clip_guidance_scale": "-3",
                            "colour_scale": "1e9", "run": "1"})
    assert bad.values == {} and not bad.run and len(bad.notes) == 3
    assert "clip\\_guidance\\_scale must be between 0 and 1000" in " ".join(bad.notes)  # escaped for Markdown
    neg = links.parse_link({"tab": "guidance_neg", "prompt": "a sneaker", "negative_prompt": "red",
                            "clip_guidance_scale": "3"})
    assert neg.values == {"prompt": "a sneaker", "negative_prompt": "red"}
    assert links.tab_of("guidance_neg") == "guidance"
    assert "clip\\_guidance\\_scale" in neg.notes[0]
    assert links.tab_of("txt2img") == "txt2img"
