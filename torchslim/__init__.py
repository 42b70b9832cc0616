"""torchslim: make trained PyTorch models smaller and faster, with measured accuracy."""
from torchslim.config import VERSION as __version__

__all__ = ["__version__"]
