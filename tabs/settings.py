"""A generating tab's named controls (its ``Form``): its history, its Copy link button, and links opened.

A tab's ``build()`` makes a ``Form`` of its controls by key (the keys of
``tabs.links.KEYS``, diffusers' argument names, and a few more) and returns it; ``app.py`` hands the forms
to ``wire_links``. A settings dict, from a history entry or from a link, becomes
the controls' values through ``Form.updates``, which also applies what the tab's
own model (or sampler) handler would (ranges, notes): that handler listens to
``.input``, the user's choice, so a restored model does not reset the values
restored with it. Everything here runs outside the compute queue and loads no model.
"""

from collections.abc import Callable

import gradio as gr

from tabs import history as hist
from tabs import links

# The browser side of a link with run=1: once its tab shows, click the tab's own run button, so the run is the
# very event a click makes (same queue, Stop, history, seed box).
CLICK_JS = """(target) => {
  if (!target) return;
  let tries = 0;
  const go = () => {
    const button = document.getElementById(target);
    if (button && button.offsetParent !== null) { button.click(); return; }
    if (++tries < 50) setTimeout(go, 100);
  };
  setTimeout(go, 50);
}"""

# Presenter view: a class on <body>, no server round trip.
PRESENTER_JS = "(on) => { document.body.classList.toggle('presenter', Boolean(on)); }"


class Form:
    """A tab's controls by key; ``follow`` = (key, the tab's handler for that control, the components it
    updates): a model or a sampler whose choice sets the ranges and defaults of other controls."""

    def __init__(self, tab: str, controls: dict, run_id: str,
                 follow: tuple[str, Callable, list] | None = None):
        self.tab, self.controls, self.run_id, self.follow = tab, dict(controls), run_id, follow
        extra = [c for c in (follow[2] if follow else []) if all(c is not d for d in self.controls.values())]
        self.outputs = list(self.controls.values()) + extra
        self.history = self.history_gallery = None

    def _index(self, component) -> int:
        return next(i for i, c in enumerate(self.outputs) if c is component)

    def updates(self, values: dict) -> list:
        """The controls' updates (in ``outputs`` order) that show ``values``; keys not given are skipped."""
        result = [gr.skip() for _ in self.outputs]
        if self.follow and self.follow[0] in values:
            key, handler, components = self.follow
            for component, update in zip(components, handler(values[key])):
                result[self._index(component)] = update
        values = dict(values)
        if "seed" in values and "randomize_seed" in self.controls:
            values.setdefault("randomize_seed", False)  # a restored seed is meant to be used
        for key, value in values.items():
            if key in self.controls:
                i = self._index(self.controls[key])
                result[i] = {**(result[i] if isinstance(result[i], dict) else gr.skip()), "value": value}
        return result

    def add_history(self, elem_id: str) -> gr.Gallery:
        """The history gallery, here in the layout (shown from the first result on), and its clicks: a click
        restores that entry's settings."""
        self.history = gr.State([])
        gallery = gr.Gallery(label=f"Your last {hist.MAX_ENTRIES} results (click one to restore its settings)",
                             columns=6, height="auto", allow_preview=False, interactive=False, format="png",
                             object_fit="contain", visible=False, elem_id=elem_id, elem_classes=["history"])

        def restore(history, evt: gr.SelectData):
            settings = hist.settings_at(history, evt.index)
            return [gr.skip() for _ in self.outputs] if settings is None else self.updates(settings)

        gallery.select(restore, self.history, self.outputs, queue=False, api_visibility="private",
                       show_progress="hidden")
        self.history_gallery = gallery
        return gallery

    def record(self, events: list, images, info, caption: Callable[[dict], str]) -> None:
        """After each of ``events`` succeeds: its first image and the settings it ran with join the history
        (the seed actually used, from the run's JSON ``info``)."""
        keys = list(self.controls)

        def add(history, pictures, details, *values):
            settings = dict(zip(keys, values))
            if isinstance(details, dict) and "seed" in details:
                settings["seed"] = details["seed"]
            if "randomize_seed" in settings:
                settings["randomize_seed"] = False
            entries = hist.add_entry(history, hist.first_image(pictures), caption(settings), settings)
            return entries, gr.Gallery(hist.gallery_items(entries), visible=True)

        for event in events:
            event.success(add, [self.history, images, info, *self.controls.values()],
                          [self.history, self.history_gallery], queue=False, api_visibility="private",
                          show_progress="hidden")

    def add_link_button(self, prefix: str) -> None:
        """A Copy link button and the link it made (shown too: the clipboard needs https or localhost)."""
        keys = [k for k in links.KEYS[self.tab] if k in self.controls]
        with gr.Row(elem_classes=["link-row"]):
            button = gr.Button("Copy link", size="sm", scale=0, min_width=110, elem_id=f"{prefix}-copy-link")
            box = gr.Textbox(label="Link to these settings (opens this tab and runs them)", interactive=False,
                             max_lines=2, scale=4, min_width=160, elem_id=f"{prefix}-link", buttons=["copy"])
        button.click(None, [self.controls[k] for k in keys], box, js=links.copy_link_js(self.tab, keys),
                     api_visibility="private", queue=False)


def wire_links(demo: gr.Blocks, tabs: gr.Tabs, forms: list, note: gr.Markdown) -> None:
    """On page load: select the tab a link names, fill its form with the link's checked values, show a note
    for what was ignored, and with ``run=1`` (and nothing ignored) click the tab's run button."""
    run_target = gr.Textbox(visible=False, elem_id="link-run-target")
    outputs = [tabs, note, run_target] + [c for form in forms for c in form.outputs]

    def open_link(request: gr.Request):
        link = links.parse_link(dict(request.query_params) if request else {})
        text = links.note_markdown(link.notes)
        out = [gr.Tabs(selected=links.tab_of(link.tab)) if link.tab else gr.skip(),
               gr.update(value=text, visible=True) if text else gr.skip(), ""]
        for form in forms:
            if form.tab == link.tab:
                out += form.updates(link.values)
                out[2] = form.run_id if link.run else ""
            else:
                out += [gr.skip() for _ in form.outputs]
        return out

    demo.load(open_link, None, outputs, queue=False, api_visibility="private", show_progress="hidden").then(
        None, run_target, None, js=CLICK_JS, queue=False, api_visibility="private")
