"""Dynamic PTQ: s8 per-channel weights, u8 activations quantized from each input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant import DynamicQuantConfig
from torchslim.quant.affine import QuantSpec, calc_qparams_for, fake_quantize, sqnr_db
from torchslim.quant.dynamic import DynamicActivationQuant, DynamicQuantLinear, quantize_dynamic


class TinyTransformer(nn.Module):
    """Where torch.ao's quantize_dynamic fails (DESIGN.md): encoder + Linear head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))  # (B, T, 10)


def test_per_tensor_activation_matches_dynamic_quantize_linear_grid() -> None:
    x = torch.randn(4, 8, 16) * 3
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    scale, zp = calc_qparams_for(x, spec)
    assert torch.equal(DynamicActivationQuant()(x), fake_quantize(x, scale, zp, spec))


def test_per_token_uses_one_grid_per_row() -> None:
    x = torch.randn(3, 5, 16)
    x[0, 0] *= 1000  # an outlier token must not coarsen the other tokens' grid
    out = DynamicActivationQuant(per_token=True)(x)
    assert sqnr_db(x[1:], out[1:]) > 40
    assert sqnr_db(x[1:], DynamicActivationQuant()(x)[1:]) < 20


@pytest.mark.parametrize("per_token", [False, True])
def test_transformer_sqnr_and_input_untouched(per_token: bool) -> None:
    model = TinyTransformer().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_dynamic(model, DynamicQuantConfig(per_token=per_token))
    x = torch.randn(4, 8, 32)
    with torch.no_grad():
        ref, out = model(x), q(x)
        enc_sqnr = sqnr_db(model.enc(x), q.enc(x))
    assert sqnr_db(ref, out) >= 25
    assert enc_sqnr < 80  # the encoder's linears really ran quantized (no fused fast path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, DynamicQuantLinear) for m in model.modules())
    kinds = {n: type(m) for n, m in q.named_modules()}
    assert kinds["enc.layers.0.linear1"] is DynamicQuantLinear and kinds["head"] is DynamicQuantLinear
    assert kinds["enc.layers.0.self_attn.out_proj"] is not DynamicQuantLinear  # kept float


def test_skip_keeps_layer_float_and_unknown_name_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    q = quantize_dynamic(model, DynamicQuantConfig(skip=["2"]))
    assert isinstance(q[0], DynamicQuantLinear) and type(q[2]) is nn.Linear
    with pytest.raises(ConfigError, match="'fc9'"):
        quantize_dynamic(model, DynamicQuantConfig(skip=["fc9"]))
    with pytest.raises(ConfigError, match="LSTM"):
        quantize_dynamic(model, DynamicQuantConfig(layers=(nn.LSTM,)))
