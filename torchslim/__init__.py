"""torchslim: make trained PyTorch models smaller and faster, with measured accuracy.

>>> import torchslim
>>> data = torchslim.load_data("fashion-mnist")
>>> model = torchslim.build_model("resnet14", width=16)
>>> torchslim.fit(model, data.train, val=data.val, config=torchslim.TrainConfig(epochs=6))
>>> int8 = torchslim.quantize(model, torchslim.QuantConfig(), calibration=data.val)
>>> torchslim.export(int8, "model-int8.onnx", input_shape=(1, 28, 28))
"""

from torchslim._record import record_of
from torchslim.config import VERSION as __version__
from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.errors import (ArchitectureMismatchError, ArtifactError, CheckpointError,
                              ConfigError, DataFormatError, DataNotFoundError,
                              MissingDependencyError, TorchslimError, UnknownNameError,
                              UnsupportedModelError)
from torchslim.evaluation import EvalResult, evaluate
from torchslim.exporters import export, export_onnx, export_qdq
from torchslim.pipeline import DemoOptions, Recipe, load_recipe, run_demo, run_recipe
from torchslim.report import write_report
from torchslim.runtime import OnnxRuntimeSession, Session, TorchSession
from torchslim.runtime import open as load_session
from torchslim.prune import ChannelPruneConfig, PruneResult, SparsityConfig, prune_
from torchslim.train import Callback, TrainConfig, fit, load, load_checkpoint, save_checkpoint
from torchslim.quant import QuantSpec
from torchslim.quant.api import qat, quantize
from torchslim.quant.config import DynamicQuantConfig, LayerOverride, QuantConfig, WeightOnlyConfig
from torchslim.zoo import build_model, list_models
from torchslim.distillation import DistillConfig, distill

__all__ = [
    "__version__",
    # data and models
    "DataBundle", "load_data", "calibration_subset", "build_model", "list_models",
    # training and checkpoints
    "TrainConfig", "Callback", "fit", "save_checkpoint", "load_checkpoint", "load",
    # pruning
    "ChannelPruneConfig", "SparsityConfig", "PruneResult", "prune_",
    # distillation
    "DistillConfig", "distill",
    # quantization
    "QuantSpec", "QuantConfig", "DynamicQuantConfig", "WeightOnlyConfig", "LayerOverride",
    "quantize", "qat",
    # runtimes and artifacts
    "Session", "TorchSession", "OnnxRuntimeSession", "load_session", "export",
    "export_onnx", "export_qdq",
    # what was done to a model (architecture, pruning, masks, quantization, distillation)
    "record_of",
    # measuring and reporting
    "EvalResult", "evaluate", "write_report",
    # jobs
    "DemoOptions", "run_demo", "Recipe", "load_recipe", "run_recipe",
    # errors
    "TorchslimError", "ConfigError", "UnknownNameError", "DataNotFoundError",
    "DataFormatError", "CheckpointError", "ArchitectureMismatchError", "ArtifactError",
    "UnsupportedModelError", "MissingDependencyError",
]
