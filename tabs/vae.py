"""Tab placeholder: says plainly that this part is not built yet."""

from tabs.common import not_built_yet


def build() -> None:
    not_built_yet("The VAE compression viewer comes in a later version.")
