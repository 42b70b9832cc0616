"""Artifacts written before manifests load as manifest views; writing one then wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchslim.artifacts.digest import sha256_file
from torchslim.artifacts.manifest import read_manifest, write_manifest
from torchslim.artifacts.registry import ModelRegistry

transformers = pytest.importorskip("transformers")


def test_checkpoint_sidecar_becomes_a_view(copy_of) -> None:
    path = copy_of("checkpoint")
    view = read_manifest(path)
    assert view.provenance.legacy == "model.json"
    assert (view.kind, view.format, view.precision) == ("checkpoint", "safetensors", "fp32")
    assert [f.path for f in view.files] == ["model.json", "model.safetensors"]
    assert view.files[1].sha256 == sha256_file(path)[0]
    assert view.config["dataset"] == "digits" and view.config["architecture"]["name"] == "resnet8"
    [m] = view.metrics
    assert (m.runtime, m.top1, m.dataset.name, m.dataset.split) == ("torch", 0.5, "digits", "test")
    assert view.provenance.versions == {"torchslim": "0.1.0"}
    assert read_manifest(path.with_suffix(".json")) == view  # the sidecar path works too
    written = write_manifest(path, relation="trained")
    assert read_manifest(path).provenance.legacy is None and written.digest == view.digest


@pytest.mark.slow
def test_llm_quantized_directory_becomes_a_view(tmp_path: Path) -> None:
    from torchslim.llm import LLMQuantConfig, quantize_llm, save_quantized

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    q = quantize_llm(model, LLMQuantConfig(method="rtn", bits=4, group_size=32))
    out = save_quantized(q, tmp_path / "llm")
    view = read_manifest(out)
    assert (view.kind, view.format, view.precision, view.entry) == (
        "llm-quantized", "llm-weight-only", "int4-weight-only", ".")
    assert {f.path for f in view.files} == {"config.json", "model.safetensors",
                                            "torchslim_quant.json"}
    assert view.config["bits"] == 4 and view.config["group_size"] == 32
    assert view.signature.outputs[0].shape == ["batch", "sequence", 96]
    assert view.provenance.legacy == "torchslim_quant.json"
    info = ModelRegistry(tmp_path / "reg").push(out, "tiny-llm")
    pulled = ModelRegistry(tmp_path / "reg").pull(info.ref, tmp_path / "pulled")
    assert pulled == tmp_path / "pulled" and read_manifest(pulled).digest == view.digest
    assert (pulled / "torchslim.manifest.json").is_file()
