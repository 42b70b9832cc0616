"""Structured pruning of torchvision models with random weights: they run, export to ONNX
(ONNX Runtime agrees with PyTorch) and their MACs drop as requested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from torchslim.evaluation.model_stats import count_macs
from torchslim.exporters import export_onnx
from torchslim.prune import ChannelPruneConfig, prune_channels_
from torchslim.runtime import OnnxRuntimeSession

SHAPE = (3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small",
                                  "densenet121", "efficientnet_b0"])
def test_torchvision_model_prunes_runs_and_exports(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(2, *SHAPE)
    before = count_macs(model, SHAPE)
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5), example_inputs=x)
    assert abs(count_macs(model, SHAPE) / before - 0.5) <= 0.03 * 0.5
    with torch.no_grad():
        expected = model(x).numpy()
    session = OnnxRuntimeSession(export_onnx(model, tmp_path / f"{name}.onnx", input_shape=SHAPE),
                                 threads=1)
    np.testing.assert_allclose(session.run(x.numpy()), expected, rtol=1e-3, atol=1e-4)
