"""CLI sub-commands that live outside ``cli.py``, one module per area.

Each module imports ``app``/``command`` from ``torchslim.cli`` and registers its commands
when imported; ``cli.py`` imports them all at its end.
"""

# Registered here rather than in cli.py's import line: `run` and `search` (recipes).
from torchslim._commands import run as _run  # noqa: E402,F401
