"""The public surface is deliberate: adding or removing a name is a visible change here."""

import importlib
import pkgutil
import types

import pytest

import torchslim

EXPECTED = {
    "__version__",
    "DataBundle", "load_data", "calibration_subset", "build_model", "list_models",
    "TrainConfig", "Callback", "fit", "save_checkpoint", "load_checkpoint", "load",
    "ChannelPruneConfig", "SparsityConfig", "PruneResult", "prune_",
    "DistillConfig", "distill",
    "QuantSpec", "QuantConfig", "DynamicQuantConfig", "WeightOnlyConfig", "LayerOverride",
    "quantize", "qat",
    "Session", "TorchSession", "OnnxRuntimeSession", "load_session", "export",
    "export_onnx", "export_qdq",
    "record_of",
    "EvalResult", "evaluate", "write_report",
    "DemoOptions", "run_demo", "Recipe", "load_recipe", "run_recipe",
    "TorchslimError", "ConfigError", "UnknownNameError", "DataNotFoundError",
    "DataFormatError", "CheckpointError", "ArchitectureMismatchError", "ArtifactError",
    "UnsupportedModelError", "MissingDependencyError",
}


def test_all_is_exactly_the_curated_surface() -> None:
    assert set(torchslim.__all__) == EXPECTED
    assert len(torchslim.__all__) == len(EXPECTED), "duplicate names in __all__"


def test_every_public_name_resolves() -> None:
    for name in torchslim.__all__:
        assert getattr(torchslim, name) is not None, name


def test_errors_share_one_base() -> None:
    for name in torchslim.__all__:
        obj = getattr(torchslim, name)
        if name.endswith("Error"):
            assert issubclass(obj, torchslim.TorchslimError), name


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    assert torchslim.__version__ == version("torchslim")


def _public_subpackages() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(torchslim.__path__)
                  if info.ispkg and not info.name.startswith("_"))


@pytest.mark.parametrize("name", _public_subpackages())
def test_every_public_subpackage_imports_by_its_dotted_path(name: str) -> None:
    module = importlib.import_module(f"torchslim.{name}")
    assert isinstance(module, types.ModuleType) and module.__name__ == f"torchslim.{name}"
    # after the import, the attribute of the package is that subpackage, not a function
    assert getattr(torchslim, name) is module


def test_no_public_name_is_both_a_function_and_a_subpackage() -> None:
    clashes = [n for n in torchslim.__all__ if n in _public_subpackages()]
    assert clashes == []
    for name in ("export", "evaluate", "distill", "quantize"):
        assert callable(getattr(torchslim, name)), name
        assert not isinstance(getattr(torchslim, name), types.ModuleType), name
