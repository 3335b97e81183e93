"""Tab 4: the tokenizer inspector. Type a prompt, see the tokens and ids a text encoder gets."""

from __future__ import annotations

import html

import gradio as gr

from engine import tokenizer as tokenizer_engine
from tabs.common import user_errors

EXAMPLES = [
    ["A photograph of a puppy"],
    ["An oil painting of a collie in a top hat"],
    ["photograph photography photographer Photographs PHOTOGRAPH"],
    ["a red sneaker, 4k, trending on artstation, highly detailed, sharp focus, octane render, "
     "studio lighting, by greg rutkowski and alphonse mucha, masterpiece, award winning, "
     "intricate, elegant, volumetric light, bokeh, 35mm film, golden hour, cinematic composition, "
     "ultra realistic, concept art, unreal engine 5, symmetrical, ray tracing, hdr"],
    ["café ☕ 東京 🐶"],
]

CSS = """
.tok-chips {display:flex; flex-wrap:wrap; gap:4px; font-family:ui-monospace,monospace;}
.tok-chip {display:inline-flex; flex-direction:column; align-items:center; padding:2px 6px;
  border-radius:6px; background:#e0ecff; color:#123; border:1px solid #9bb8e8; line-height:1.2;}
.tok-chip small {opacity:.75; font-size:.75em;}
.tok-chip.special {background:#ffe7b3; border-color:#e0a100;}
.tok-chip.cut {background:#ffd6d6; border-color:#d33; text-decoration:line-through;}
.tok-chip.pad {background:#eee; border-color:#aaa; border-style:dashed;}
.tok-legend {font-size:.85em; margin-top:6px;}
"""
MAX_CUT_CHIPS = 200
PAD_TABLE = """**Same vocabulary, different padding.** Both CLIP tokenizers share one byte-pair vocabulary,
so a prompt gets the same ids; only the filler after `<|endoftext|>` differs:

| Tokenizer | Used by | Pad token (id) |
|---|---|---|
| CLIP ViT-L/14 | SD 1.x, SDXL `tokenizer` | `<\\|endoftext\\|>` (49407) |
| OpenCLIP ViT-bigG/14 | SDXL `tokenizer_2` | `!` (0) |

Pick the other tokenizer above and watch the grey padding chip change."""


def _chip(token: str, token_id: int, kind: str, piece: str | None = None) -> str:
    """One token as a chip: its text on top, its id below; the raw vocabulary entry as tooltip.

    Byte-level entries (emoji, accents, CJK) are shown decoded, since "ðŁĺĢ" teaches nothing.
    """
    shown = token if piece is None or token.isascii() else (piece.strip() or token)
    title = {"special": "special token", "cut": "past the 77-token window: never seen",
             "pad": "padding"}.get(kind, "vocabulary entry")
    return (f'<span class="tok-chip {kind}" title="{html.escape(title)}: {html.escape(token)}">'
            f"{html.escape(shown)}<small>{token_id}</small></span>")


def chips_html(view: dict) -> str:
    """Every token as a chip with its id; special tokens, cut tokens and padding marked."""
    specials = {view["special_tokens"]["bos"][1], view["special_tokens"]["eos"][1]}
    chips = [_chip(t, i, "special" if i in specials else "token", piece)
             for t, i, piece in zip(view["tokens"], view["ids"], view["pieces"])]
    cut = list(zip(view["truncated_tokens"], view["truncated_ids"]))
    chips += [_chip(t, i, "cut") for t, i in cut[:MAX_CUT_CHIPS]]
    if len(cut) > MAX_CUT_CHIPS:
        chips.append(f'<span class="tok-chip cut">… {len(cut) - MAX_CUT_CHIPS} more cut</span>')
    n_pad = view["window"] - len(view["ids"])
    if n_pad:
        chips.append(_chip(f'{view["pad_token"]} × {n_pad}', view["pad_token_id"], "pad"))
    legend = ('<div class="tok-legend">Blue: tokens · Orange: special tokens · Red, struck out: cut (past the '
              f'window) · Grey: padding up to {view["window"]} with <code>{html.escape(view["pad_token"])}</code> '
              f'(id {view["pad_token_id"]}). <code>&lt;/w&gt;</code> marks the end of a word.</div>')
    return f'<div class="tok-chips" id="tok-chips">{"".join(chips)}</div>{legend}'


def summary_markdown(view: dict) -> str:
    used = min(view["count"], view["window"])
    lines = [f"**{view['count']} tokens** (with the 2 special ones) · the window holds **{view['window']}** · "
             f"{used}/{view['window']} used, {view['window'] - used} padding."]
    if view["truncated_ids"]:
        lines.append(f"⚠️ **{len(view['truncated_ids'])} tokens are cut.** The model will never see: "
                     f"*“{view['truncated_text'][:500]}”*")
    lines += [f"ℹ️ {n}" for n in view["notes"] if "window" not in n]
    lines.append(f"Pad token of this tokenizer: `{view['pad_token']}` (id {view['pad_token_id']}).")
    return "\n\n".join(lines)


def shapes_markdown(view: dict) -> str:
    rows = [f"| {encoder} | `{name}` | `{list(shape)}` |"
            for encoder, outs in view["shapes"].items() for name, shape in outs.items()]
    return ("**Tensor shapes the text encoders make of this prompt** (batch 1; always 77 positions, "
            "whatever the prompt's length):\n\n| Text encoder | Output | Shape |\n|---|---|---|\n" + "\n".join(rows))


@user_errors
def tokenize(prompt: str, tokenizer: str):
    """Event handler: returns the chips, the summary, the shapes, the round trip and the JSON."""
    view = tokenizer_engine.token_view(prompt, tokenizer)
    return chips_html(view), summary_markdown(view), shapes_markdown(view), view["decoded"], view


def build() -> None:
    gr.HTML(f"<style>{CSS}</style>", padding=False)
    gr.Markdown(
        "### What the text encoder reads\n"
        "Stable Diffusion never sees your words: CLIP's tokenizer cuts the prompt into byte-pair pieces, "
        "each with an id in a 49,408-entry vocabulary, between `<|startoftext|>` (49406) and "
        "`<|endoftext|>` (49407), and pads or cuts it to a 77-token window.",
        elem_classes=["explain"],
    )
    names = tokenizer_engine.tokenizer_names()
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="A photograph of a puppy", lines=2, scale=3,
                            placeholder="Type a prompt…")
        tokenizer = gr.Dropdown(names, value=names[0] if names else None, label="Tokenizer", scale=2,
                                info="SDXL's second tokenizer pads with '!' (id 0) instead of <|endoftext|>.")
    chips = gr.HTML(label="Tokens")
    summary = gr.Markdown()
    decoded = gr.Textbox(label="Round trip: the ids the model sees, decoded back to text", interactive=False)
    gr.Examples(EXAMPLES, inputs=[prompt], label="Examples")
    with gr.Row():
        shapes = gr.Markdown()
        gr.Markdown(PAD_TABLE)
    with gr.Accordion("As JSON (what the /tokenize API returns)", open=False):
        as_json = gr.JSON(show_label=False)

    outputs = [chips, summary, shapes, decoded, as_json]
    # triggers=None: on page load (the book's example is shown at once) and on every edit. It needs no model
    # and takes milliseconds: the page calls it outside the queue, and API clients (which always join the queue)
    # get its own group of 8; the compute bound (tabs.common.compute_has_room) never refuses it.
    # preprocess=False: the engine checks the tokenizer's name, with a message that names the input.
    gr.on(None, tokenize, inputs=[prompt, tokenizer], outputs=outputs, api_name="tokenize",
          trigger_mode="always_last", queue=False, concurrency_limit=8, show_progress="hidden", preprocess=False)
