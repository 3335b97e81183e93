"""Tokenizer tab placeholder (being built)."""

from tabs.common import not_built_yet


def build() -> None:
    not_built_yet("Tokenizer inspector.")
