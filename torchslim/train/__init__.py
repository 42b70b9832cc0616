"""One training loop with callbacks, and checkpoints that rebuild their model."""

from torchslim.train.checkpoint import (load, load_checkpoint, load_weights_, read_checkpoint,
                                        save_checkpoint)
from torchslim.train.loop import Callback, TrainConfig, TrainState, accuracy, fit
from torchslim.train.masks import KeepMasks

__all__ = ["Callback", "KeepMasks", "TrainConfig", "TrainState", "accuracy", "fit", "load",
           "load_checkpoint",
           "load_weights_", "read_checkpoint", "save_checkpoint"]
