"""Class-conditional diffusion on Fashion-MNIST (the book's first model).

* ``data``: the idx files read with numpy, model space [-1, 1], shipped examples.
* ``configs``: the UNet configurations and the book's noise schedule.
* ``sampling``: requests, schedulers, the sampler generator, the forward process, the UNet loader.
* ``judge``: the small CNN classifier that measures class fidelity and features for the Fréchet distance.
"""
