"""The engine: models and maths for Stable Diffusion Explorer.

Nothing here imports gradio. Functions take plain values and return tensors,
PIL images and dicts; they raise ``ValueError`` with a message a user can act
on, and the tabs turn those into ``gr.Error``.
"""
