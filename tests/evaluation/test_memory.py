import numpy as np
import pytest
from torch import nn

from torchslim.evaluation import measure_peak_memory
from torchslim.exporters.onnx import export_onnx
from torchslim.runtime import OnnxRuntimeSession


class NoProbeSession:
    runtime, precision, threads, artifact, name = "openvino", "int8", 1, None, "ov"

    def run(self, batch):
        return batch


@pytest.mark.slow
def test_peak_memory_of_onnx_session(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    peak = measure_peak_memory(OnnxRuntimeSession(path, threads=1),
                               np.zeros((32, 1, 8, 8), np.float32))
    assert isinstance(peak, int)
    assert 0 < peak < 2 * 1024**3


def test_unknown_session_gives_none_and_warns(caplog):
    assert measure_peak_memory(NoProbeSession(), np.zeros((1, 2), np.float32)) is None
    assert "peak memory not measured" in caplog.text


@pytest.mark.slow
def test_a_module_planted_in_the_working_directory_is_never_imported(tmp_path, monkeypatch):
    """A file named like a runtime in the directory where torchslim runs must not be
    executed by the memory probe's child process (it was: ``-m`` puts cwd on sys.path)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "planted-code-ran"
    for name in ("onnxruntime", "numpy", "torchslim"):
        (work / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\n"
                                         "raise SystemExit(7)\n")
    monkeypatch.chdir(work)
    peak = measure_peak_memory(OnnxRuntimeSession(path, threads=1),
                               np.zeros((4, 1, 8, 8), np.float32))
    assert not marker.exists(), marker.read_text()
    assert isinstance(peak, int) and peak > 0


def test_an_artifact_given_by_a_relative_path_is_measured(tmp_path, monkeypatch):
    """The child starts in an empty directory: a relative path must still reach it (the
    demo's runs/demo/*.onnx were 'not found' there)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    monkeypatch.chdir(tmp_path)
    peak = measure_peak_memory(OnnxRuntimeSession("m.onnx", threads=1),
                               np.zeros((4, 1, 8, 8), np.float32))
    assert isinstance(peak, int) and peak > 0
