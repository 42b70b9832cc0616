"""One training loop with callbacks, and checkpoints that rebuild their model."""

from torchslim.train.checkpoint import (load, load_checkpoint, load_weights_, read_checkpoint,
                                        save_checkpoint)
from torchslim.train.distributed import DistributedConfig
from torchslim.train.loop import Callback, TrainConfig, TrainState, accuracy, fit
from torchslim.train.masks import KeepMasks
from torchslim.runtime import register_model_loader

# torchslim.runtime.open("x.safetensors") rebuilds the model through the checkpoint loader
register_model_loader(".safetensors", load)

__all__ = ["Callback", "DistributedConfig", "KeepMasks", "TrainConfig", "TrainState", "accuracy",
           "fit", "load", "load_checkpoint",
           "load_weights_", "read_checkpoint", "save_checkpoint"]
