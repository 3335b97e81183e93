"""Footer panel: which models this server has loaded, on which device, and the memory they hold."""

from __future__ import annotations

import gradio as gr

from engine.device import layout_device
from engine.imports import lazy

loader = lazy("engine.loader")


def loaded_models() -> dict:
    """Event handler: the cached loader's report (nothing is loaded by asking)."""
    return loader.memory_report()


def build() -> None:
    with gr.Accordion(f"Loaded models (device: {layout_device()})", open=False):
        gr.Markdown("Each model loads once per server process, on first use, and stays loaded for every visitor.")
        report = gr.JSON(show_label=False)
        refresh = gr.Button("Refresh", size="sm")
    refresh.click(loaded_models, outputs=report, api_name="loaded_models", queue=False)
