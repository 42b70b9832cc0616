from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import ArtifactError
from torchslim.exporters import export_onnx
from torchslim.runtime import OnnxRuntimeSession, Session, TorchSession, load
from torchslim.zoo import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", input_shape=(1, 28, 28))
    return model, path


def test_onnxruntime_matches_pytorch_at_any_batch_size(exported) -> None:
    model, path = exported
    torch_session, ort_session = TorchSession(model, threads=1), load(path, threads=1)
    for n in (1, 3, 32):
        x = np.random.default_rng(n).standard_normal((n, 1, 28, 28)).astype(np.float32)
        a, b = torch_session.run(x), ort_session.run(x)
        assert a.shape == b.shape == (n, 10)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_sessions_share_one_interface(exported) -> None:
    model, path = exported
    for session, runtime in ((TorchSession(model, threads=2), "torch"),
                             (OnnxRuntimeSession(path, threads=2), "onnxruntime")):
        assert isinstance(session, Session)
        assert session.runtime == runtime and session.threads == 2
        assert session.precision == "fp32" and session.name == f"{runtime}-fp32"
    assert OnnxRuntimeSession(path).artifact == path


def test_torch_session_restores_the_thread_count(exported) -> None:
    before = torch.get_num_threads()
    TorchSession(exported[0], threads=1).run(np.zeros((1, 1, 28, 28), np.float32))
    assert torch.get_num_threads() == before


def test_export_is_atomic_and_leaves_no_temp_files(exported) -> None:
    _, path = exported
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize("content", [b"", b"\x00garbage that is not protobuf\xff" * 10])
def test_unreadable_onnx_is_an_artifact_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ArtifactError, match="bad.onnx"):
        OnnxRuntimeSession(bad)


def test_unknown_artifact_type_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no runtime"):
        load(tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match="not found"):
        load(tmp_path / "absent.onnx")
