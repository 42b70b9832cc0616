"""CLI sub-commands that live outside ``cli.py``, one module per area.

Each module takes ``app``/``command`` from ``torchslim._commands._app`` and registers its
commands when imported; ``cli.py`` imports them all at its end.
"""
