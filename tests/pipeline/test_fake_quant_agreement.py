"""fake_quant_agreement: the fake-quant model against the artifact, run again or read from
the outputs that ``evaluate`` already collected (the demo's PTQ candidate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.data import load_data
from torchslim.errors import ConfigError
from torchslim.pipeline.quantize import fake_quant_agreement
from torchslim.runtime import TorchSession


def test_given_outputs_give_the_agreement_of_running_the_artifact() -> None:
    data = load_data("digits", batch_size=64)
    torch.manual_seed(0)
    prepared, artifact = (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval() for _ in "ab")
    session = TorchSession(artifact, threads=1)
    ran = fake_quant_agreement(prepared, session, data)
    outputs = np.concatenate([session.run(x.numpy()) for x, _ in data.test])
    assert fake_quant_agreement(prepared, session, data, outputs=outputs) == ran
    assert 0.0 < ran < 0.5                  # two random models: agree on a few images only
    assert fake_quant_agreement(prepared, TorchSession(prepared, threads=1), data) == 1.0
    with pytest.raises(ConfigError, match="rows for"):
        fake_quant_agreement(prepared, session, data, outputs=outputs[:-1])
