"""CLI sub-commands that live outside ``cli.py``, one module per area.

Each module imports ``app``/``command`` from ``torchslim.cli`` and registers its commands
when imported; ``cli.py`` imports them all at its end.
"""
