"""The public surface is deliberate: adding or removing a name is a visible change here."""

import torchslim

EXPECTED = {
    "__version__",
    "DataBundle", "load_data", "calibration_subset", "build_model", "list_models",
    "TrainConfig", "Callback", "fit", "save_checkpoint", "load_checkpoint", "load",
    "ChannelPruneConfig", "SparsityConfig", "PruneResult", "prune_",
    "DistillConfig", "distill",
    "QuantSpec", "QuantConfig", "LayerOverride", "quantize", "qat",
    "Session", "TorchSession", "OnnxRuntimeSession", "load_session", "export",
    "export_onnx", "export_qdq",
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


def test_export_function_does_not_break_the_subpackage() -> None:
    from torchslim.export import export_qdq

    assert callable(torchslim.export) and torchslim.export_qdq is export_qdq
