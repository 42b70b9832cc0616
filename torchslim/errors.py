"""Every exception torchslim raises on purpose.

Each one carries a message that says what was wrong, the value received and how to fix
it. The CLI prints ``TorchslimError`` messages on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "TorchslimError",
    "ConfigError",
    "UnknownNameError",
    "DataNotFoundError",
    "DataFormatError",
    "CheckpointError",
    "ArchitectureMismatchError",
    "ArtifactError",
    "InvalidInputError",
    "UnsupportedModelError",
    "MissingDependencyError",
    "ManifestError",
    "RegistryError",
    "UnknownVersionError",
    "VersionConflictError",
    "IntegrityError",
    "OutputLockedError",
    "TrainingDivergedError",
    "EntryPointError",
]


class TorchslimError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(TorchslimError, ValueError):
    """An option has a value outside what it accepts."""


class EntryPointError(ConfigError):
    """A user's ``package.module:function`` (a recipe's model or data) that cannot be
    imported, or that raised when it ran; the message says which and where it was named."""


class OutputLockedError(TorchslimError):
    """An output directory another torchslim run is writing (its lock is held)."""


class TrainingDivergedError(TorchslimError, FloatingPointError):
    """The training loss became inf or NaN (usually a learning rate that is too high)."""


class UnknownNameError(ConfigError):
    """A name (model, dataset, observer, ...) that no registry knows."""


class DataNotFoundError(TorchslimError, FileNotFoundError):
    """A dataset file is missing."""


class DataFormatError(TorchslimError, ValueError):
    """A dataset file exists but cannot be parsed."""


class CheckpointError(TorchslimError):
    """A checkpoint is missing, unreadable or incomplete."""


class ArchitectureMismatchError(CheckpointError):
    """A checkpoint's weights do not fit the model it is loaded into."""


class ArtifactError(TorchslimError):
    """An exported artifact (ONNX, OpenVINO IR) cannot be read or run."""


class InvalidInputError(TorchslimError, ValueError):
    """Inputs that do not match an artifact's signature (names, dtype kind, shape)."""


class UnsupportedModelError(TorchslimError):
    """A model (or part of it) that an operation cannot handle."""


class MissingDependencyError(TorchslimError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class ManifestError(ArtifactError):
    """A path that is not a torchslim artifact, or a manifest that is invalid or does not
    match the files beside it."""


class RegistryError(TorchslimError):
    """The model registry cannot do what was asked."""


class UnknownVersionError(RegistryError, LookupError):
    """A model name, version or alias that the registry does not hold."""


class VersionConflictError(RegistryError):
    """A version that exists with other bytes (versions are immutable), or a registry
    another process keeps busy."""


class IntegrityError(RegistryError):
    """Stored bytes that do not match their digest, a missing blob, or a corrupt index."""
