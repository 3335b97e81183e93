"""Tab placeholder: says plainly that this part is not built yet."""

from tabs.common import not_built_yet


def build() -> None:
    not_built_yet("The annotated text-to-image loop (SD 1.x/2.x, SDXL) comes in a later version.")
