"""The mini Stable Diffusion and mini SDXL: our own offline models, and the data they learn from.

Only training (``scripts/train_mini_sd.py``), evaluation (``scripts/eval_mini_sd.py``)
and tests import this package; the app loads the shipped pipelines through
``engine.loader`` like any other diffusers folder.

* ``data``: "Fashion-MNIST in colour", captioned 64x64 pictures, placed or centred.
* ``models``: the parts' configs, the mini CLIP, and saving in the diffusers layout.
"""
