from __future__ import annotations

import builtins
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import ArtifactError, MissingDependencyError
from torchslim.exporters import export_onnx, export_openvino
from torchslim.runtime import OnnxRuntimeSession, OpenVinoSession, Session
from torchslim.runtime import open as open_session
from torchslim.zoo import build_model

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    root = tmp_path_factory.mktemp("ov")
    onnx_path = export_onnx(model, root / "m.onnx", input_shape=(1, 28, 28))
    return onnx_path, export_openvino(onnx_path, root / "ir" / "m.xml")


def _batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, 28, 28)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 5, 32])
def test_ir_agrees_with_onnxruntime_at_any_batch_size(artifacts, n: int) -> None:
    onnx_path, xml = artifacts
    ov_session = OpenVinoSession(xml, threads=1)
    ort_session = OnnxRuntimeSession(onnx_path, threads=1)
    x = _batch(n)
    a, b = ov_session.run(x), ort_session.run(x)
    assert a.shape == b.shape == (n, 10) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_session_interface_and_fp32_precision(artifacts) -> None:
    onnx_path, xml = artifacts
    for path in (xml, onnx_path):   # OpenVINO reads the ONNX file directly too
        session = OpenVinoSession(path, threads=2)
        assert isinstance(session, Session)
        assert (session.runtime, session.precision, session.threads) == ("openvino", "fp32", 2)
        assert session.name == "openvino-fp32" and session.artifact == path


def test_outputs_are_not_overwritten_by_the_next_call(artifacts) -> None:
    session = OpenVinoSession(artifacts[1], threads=1)
    first = session.run(_batch(5))
    kept = first.copy()
    session.run(_batch(1))
    np.testing.assert_array_equal(first, kept)


def test_load_dispatches_xml_to_openvino(artifacts) -> None:
    session = open_session(artifacts[1], threads=1)
    assert isinstance(session, OpenVinoSession) and session.threads == 1


def test_export_keeps_fp32_weights_and_leaves_no_temp_files(artifacts) -> None:
    onnx_path, xml = artifacts
    assert sorted(p.name for p in xml.parent.iterdir()) == ["m.bin", "m.xml"]
    # fp32 weights, not compressed to fp16: the .bin is about the size of the ONNX file
    assert xml.with_suffix(".bin").stat().st_size > 0.8 * onnx_path.stat().st_size


def test_int8_is_guessed_from_quantize_ops(tmp_path: Path, artifacts) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"input": _batch(4)}])

        def get_next(self):
            return next(self._batches, None)

    qdq = tmp_path / "q.onnx"
    quantize_static(str(artifacts[0]), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    assert OpenVinoSession(qdq, threads=1).precision == "int8"
    assert OpenVinoSession(export_openvino(qdq, tmp_path / "q.xml"), threads=1).precision == "int8"


@pytest.mark.parametrize("content", [b"", b"<net>not a model</nt>", b"\x00\xff garbage" * 10])
def test_unreadable_model_is_a_one_line_artifact_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(content)
    with pytest.raises(ArtifactError, match="bad.xml") as info:
        OpenVinoSession(bad)
    assert "\n" not in str(info.value)


def test_missing_files_are_artifact_errors(tmp_path: Path, artifacts) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        open_session(tmp_path / "absent.xml")
    with pytest.raises(ArtifactError, match="not found"):
        export_openvino(tmp_path / "absent.onnx", tmp_path / "m.xml")
    with pytest.raises(ArtifactError, match=r"\.xml"):
        export_openvino(artifacts[0], tmp_path / "m.ir")
    lonely = tmp_path / "lonely.xml"   # an .xml whose .bin is gone
    lonely.write_bytes(artifacts[1].read_bytes())
    with pytest.raises(ArtifactError, match="lonely.xml"):
        OpenVinoSession(lonely)


def test_missing_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch, artifacts) -> None:
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    module = importlib.import_module("torchslim.runtime.openvino")
    with pytest.raises(MissingDependencyError, match=r"pip install 'torchslim\[openvino\]'"):
        module.OpenVinoSession(artifacts[1])
    with pytest.raises(MissingDependencyError, match="openvino"):
        export_openvino(artifacts[0], artifacts[1].parent / "other.xml")
