"""Dynamic PTQ of nn.LSTM: s8 per-row weights, u8 activations quantized at run time as
ONNX Runtime's DynamicQuantizeLSTM does (layer input once per layer, h once per step)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant import DynamicQuantConfig
from torchslim.quant.affine import sqnr_db
from torchslim.quant.dynamic import DynamicQuantLinear, DynamicQuantLSTM, quantize_dynamic


BOTH = (nn.Linear, nn.LSTM)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_sqnr_and_input_untouched(tiny_lstm, bidirectional: bool, batch_first: bool) -> None:
    torch.manual_seed(0)
    model = tiny_lstm(bidirectional, batch_first).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_dynamic(model, DynamicQuantConfig(layers=BOTH))
    assert isinstance(q.lstm, DynamicQuantLSTM) and isinstance(q.head, DynamicQuantLinear)
    assert type(model.lstm) is nn.LSTM
    x = torch.randn(64, 12, 16)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert 25 <= sqnr_db(ref, out) < 80  # close, and really quantized
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_with_quantizers_off_it_is_exactly_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True, bidirectional=True).eval()
    sim = DynamicQuantLSTM(lstm)
    sim.act_quant = nn.Identity()
    for name in sim.weight_quant:
        sim.weight_quant[name] = nn.Identity()
    x, h, c = torch.randn(3, 12, 16), torch.randn(4, 3, 32), torch.randn(4, 3, 32)
    with torch.no_grad():
        for args in [(x,), (x, (h, c)), (x[0],), (x[0], (h[:, 0], c[:, 0]))]:
            ref, (ref_h, ref_c) = lstm(*args)
            out, (out_h, out_c) = sim(*args)
            for a, b in [(ref, out), (ref_h, out_h), (ref_c, out_c)]:
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_weights_are_s8_per_row_and_activation_grid_per_step() -> None:
    torch.manual_seed(0)
    sim = DynamicQuantLSTM(nn.LSTM(16, 32).eval())
    w = sim.quantized_weight("weight_ih_l0")  # (128, 16)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-3)
    calls: list[tuple[int, ...]] = []
    sim.act_quant.register_forward_hook(lambda m, a, o: calls.append(tuple(a[0].shape)))
    with torch.no_grad():
        sim(torch.randn(12, 3, 16))
    assert calls == [(12, 3, 16)] + [(3, 32)] * 12  # X once, h_{t-1} once per step


def test_layer_selection_skip_and_unsupported(tiny_lstm) -> None:
    model = tiny_lstm().eval()
    only_lstm = quantize_dynamic(model, DynamicQuantConfig(layers=(nn.LSTM,)))
    assert isinstance(only_lstm.lstm, DynamicQuantLSTM) and type(only_lstm.head) is nn.Linear
    default = quantize_dynamic(model)
    assert type(default.lstm) is nn.LSTM and isinstance(default.head, DynamicQuantLinear)
    skipped = quantize_dynamic(model, DynamicQuantConfig(layers=BOTH, skip=["lstm"]))
    assert type(skipped.lstm) is nn.LSTM
    with pytest.raises(ConfigError, match="GRU"):
        quantize_dynamic(model, DynamicQuantConfig(layers=(nn.GRU,)))
    with pytest.raises(ConfigError, match="proj_size"):
        quantize_dynamic(nn.Sequential(nn.LSTM(4, 8, proj_size=2)),
                         DynamicQuantConfig(layers=(nn.LSTM,)))
