"""torchslim: make trained PyTorch models smaller and faster, with measured accuracy.

>>> import torchslim
>>> data = torchslim.load_data("fashion-mnist")
>>> model = torchslim.build_model("resnet14", width=16)
>>> torchslim.fit(model, data.train, val=data.val, config=torchslim.TrainConfig(epochs=6))
"""

from torchslim.config import VERSION as __version__
from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.errors import (ArchitectureMismatchError, ArtifactError, CheckpointError,
                              ConfigError, DataFormatError, DataNotFoundError,
                              MissingDependencyError, TorchslimError, UnknownNameError,
                              UnsupportedModelError)
from torchslim.evaluate import EvalResult, evaluate
from torchslim.export import export_onnx
from torchslim.pipeline import DemoOptions, run_demo
from torchslim.report import write_report
from torchslim.runtime import OnnxRuntimeSession, Session, TorchSession
from torchslim.runtime import load as load_session
from torchslim.train import (Callback, TrainConfig, fit, load_checkpoint, save_checkpoint)
from torchslim.zoo import build_model, list_models

__all__ = [
    "__version__",
    # data and models
    "DataBundle", "load_data", "calibration_subset", "build_model", "list_models",
    # training and checkpoints
    "TrainConfig", "Callback", "fit", "save_checkpoint", "load_checkpoint",
    # runtimes and artifacts
    "Session", "TorchSession", "OnnxRuntimeSession", "load_session", "export_onnx",
    # measuring and reporting
    "EvalResult", "evaluate", "write_report",
    # jobs
    "DemoOptions", "run_demo",
    # errors
    "TorchslimError", "ConfigError", "UnknownNameError", "DataNotFoundError",
    "DataFormatError", "CheckpointError", "ArchitectureMismatchError", "ArtifactError",
    "UnsupportedModelError", "MissingDependencyError",
]
