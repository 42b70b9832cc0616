from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import ArtifactError
from torchslim.exporters import export_onnx
from torchslim.runtime import OnnxRuntimeSession, Session, TorchSession
from torchslim.runtime import open as open_session
from torchslim.zoo import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", input_shape=(1, 28, 28))
    return model, path


def test_onnxruntime_matches_pytorch_at_any_batch_size(exported) -> None:
    model, path = exported
    torch_session, ort_session = TorchSession(model, threads=1), open_session(path, threads=1)
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


def test_torch_session_sets_threads_once_not_per_call(exported) -> None:
    before = torch.get_num_threads()
    try:
        session = TorchSession(exported[0], threads=1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        session.run(np.zeros((1, 1, 28, 28), np.float32))
        assert torch.get_num_threads() == 2   # a call never touches the process-wide pool
    finally:
        torch.set_num_threads(before)


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
        open_session(tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match="not found"):
        open_session(tmp_path / "absent.onnx")


def _sessions(model: torch.nn.Module, path: Path) -> list[Session]:
    sessions: list[Session] = [TorchSession(model, threads=2), open_session(path, threads=2)]
    pytest.importorskip("openvino")
    sessions.append(open_session(path, "openvino", threads=2))
    return sessions


def test_eight_threads_at_once_give_the_single_threaded_outputs(exported) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model, path = exported
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 1, 28, 28)).astype(np.float32) for n in (1, 2, 5, 8) * 6]
    for session in _sessions(model, path):
        alone = [session.run(x) for x in batches]
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(session.run, batches))
        for a, b in zip(alone, together):
            np.testing.assert_array_equal(a, b, err_msg=session.name)
        session.close()


def test_sessions_report_their_signature(exported) -> None:
    model, path = exported
    ort_session = open_session(path, threads=1)
    (spec,) = ort_session.inputs
    assert spec.dtype == "float32" and spec.shape[1:] == (1, 28, 28)
    assert isinstance(spec.shape[0], str)            # the batch axis is a named dynamic dim
    assert ort_session.outputs[0].shape[-1] == 10
    out = ort_session.infer({spec.name: np.zeros((3, 1, 28, 28), np.float32)})
    assert list(out) == [o.name for o in ort_session.outputs] and out[spec.name.replace(
        spec.name, ort_session.outputs[0].name)].shape == (3, 10)
    example = torch.zeros(2, 1, 28, 28)
    torch_session = TorchSession(model, threads=1, example_inputs=example)
    assert torch_session.inputs[0].shape == ("batch", None, None, None)
    assert torch_session.outputs[0].shape == (2, 10)


class TwoInputs(torch.nn.Module):
    """A float feature vector and integer ids, as an embedding model takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 4)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x, self.embed(ids).mean(1)], dim=1))


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    example = (torch.randn(2, 4), torch.randint(0, 50, (2, 7)))
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    torch.onnx.export(model, example, str(path), input_names=["x", "ids"],
                      output_names=["logits"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "ids": {0: "batch", 1: "sequence"}})
    return model, example, path


def test_integer_inputs_keep_their_dtype_and_match_torch(two_inputs) -> None:
    model, example, path = two_inputs
    session = open_session(path, threads=1)
    assert [(s.name, s.dtype) for s in session.inputs] == [("x", "float32"), ("ids", "int64")]
    x, ids = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32), \
        np.arange(33).reshape(3, 11) % 50
    want = model(torch.from_numpy(x), torch.from_numpy(ids)).detach().numpy()
    for feeds in ((x, ids), {"ids": ids.astype(np.int32), "x": x.astype(np.float64)}):
        np.testing.assert_allclose(session.run(feeds), want, rtol=1e-4, atol=1e-5)
    torch_session = TorchSession(model, threads=1, example_inputs=example)
    np.testing.assert_allclose(torch_session.run((x, ids)), want, rtol=1e-6)


@pytest.mark.parametrize("feeds, match", [
    (lambda x, ids: x, "one array for a model with 2 inputs"),
    (lambda x, ids: {"x": x}, "missing \\['ids'\\]"),
    (lambda x, ids: {"x": x, "ids": ids, "mask": ids}, "unknown \\['mask'\\]"),
    (lambda x, ids: (x, ids.astype(np.float32)), "takes int64 .* got float32"),
    (lambda x, ids: (x[:, :3], ids), "expects shape \\(batch, 4\\), got \\(3, 3\\)"),
    (lambda x, ids: (x, ids[0]), "expects shape"),
])
def test_inputs_that_do_not_fit_the_signature_are_one_clear_error(two_inputs, feeds, match) -> None:
    from torchslim.errors import InvalidInputError

    session = open_session(two_inputs[2], threads=1)
    x, ids = np.zeros((3, 4), np.float32), np.zeros((3, 5), np.int64)
    with pytest.raises(InvalidInputError, match=match):
        session.run(feeds(x, ids))


def test_open_picks_the_runtime_from_the_file_and_refuses_a_wrong_one(exported, tmp_path) -> None:
    from torchslim.errors import UnknownNameError
    from torchslim.train import save_checkpoint

    model, path = exported
    assert open_session(path).runtime == "onnxruntime"
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    torch_session = open_session(ckpt, threads=1)
    assert torch_session.runtime == "torch" and torch_session.artifact == ckpt
    with pytest.raises(ArtifactError, match="cannot read"):
        open_session(ckpt, "onnxruntime")
    with pytest.raises(UnknownNameError, match="known: onnxruntime, openvino, torch"):
        open_session(path, "tensorrt")
    with pytest.raises(ArtifactError, match="holds 2 artifacts"):
        (tmp_path / "x.onnx").write_bytes(path.read_bytes())
        open_session(tmp_path)


def test_spin_sets_onnxruntimes_busy_wait_and_not_the_result(exported) -> None:
    _, path = exported
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    default = open_session(path, threads=2)
    for spin, entry in ((False, "0"), (True, "1")):
        session = open_session(path, threads=2, spin=spin)
        options = session._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
        np.testing.assert_array_equal(session.run(x), default.run(x))
