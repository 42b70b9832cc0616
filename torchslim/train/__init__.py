"""One training loop with callbacks, and checkpoints that rebuild their model."""

from torchslim.train.checkpoint import (load_checkpoint, load_weights_, read_checkpoint,
                                        save_checkpoint)
from torchslim.train.loop import Callback, TrainConfig, TrainState, accuracy, fit

__all__ = ["Callback", "TrainConfig", "TrainState", "accuracy", "fit", "load_checkpoint",
           "load_weights_", "read_checkpoint", "save_checkpoint"]
