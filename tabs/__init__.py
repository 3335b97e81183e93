"""One module per tab. Each has a ``build()`` that lays out components and wires events."""
