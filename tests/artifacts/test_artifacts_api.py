"""The subpackage's public surface resolves and documents the wiring a stage needs."""

import torchslim.artifacts as artifacts


def test_every_exported_name_resolves() -> None:
    assert len(set(artifacts.__all__)) == len(artifacts.__all__)
    for name in artifacts.__all__:
        assert getattr(artifacts, name) is not None, name
    assert artifacts.RELATIONS == ("trained", "distilled", "pruned", "quantized", "exported",
                                   "finetuned")
    assert artifacts.SCHEMA_VERSION == 1
