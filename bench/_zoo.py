"""The models and the real inputs of the zoo sweep (bench/zoo_sweep.py).

Every torchvision classification model, built with random weights (no downloads ever)
and fed real photos (scikit-image ships them) through the transforms of its own
torchvision weights entry (224 crops where one exists, else the default, e.g. 299 for
Inception-v3); plus ``transformers`` encoders and decoders built from small configs with
random weights, fed real English text (the GPL-3 text Debian ships in
/usr/share/common-licenses) as UTF-8 bytes, one token per byte (no tokenizer file is
needed offline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Real photographs bundled with scikit-image: colour first, then greyscale ones (made RGB).
COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                 "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                 "retina.jpg", "ihc.png")
GREY_PHOTOS = ("camera.png", "moon.png", "coins.png", "brick.png", "grass.png", "gravel.png",
               "clock_motion.png")
TEXT_FILES = (Path("/usr/share/common-licenses/GPL-3"), Path("/usr/share/common-licenses/GPL-2"))
SEQ_LEN = 32            # tokens per text sample
TEXT_VOCAB = 256 + 4    # one id per byte, plus pad/bos/eos/unk
# peak process memory per fp32 weight byte (model, prepared copy, export graph, two ORT
# sessions, the pruned model); a model whose estimate exceeds the limit is skipped, saying so
MEMORY_PER_WEIGHT_BYTE = 7.0
TRANSFORMER_MODELS = ("bert-tiny", "distilbert-tiny", "roberta-tiny", "vit-tiny", "gpt2-tiny",
                      "llama-tiny")

Inputs = Any  # a tensor (images) or a tuple of tensors (input_ids, attention_mask)


@dataclass
class ModelSpec:
    """One model of the sweep: how to build it and the real inputs it takes."""

    name: str
    family: str                      # "torchvision" or "transformers"
    kind: str                        # "cnn", "vit" (attention on patches), "encoder", "decoder"
    build: Callable[[], nn.Module]
    samples: Callable[[int], Inputs]  # n real samples, in the model's input format
    input_names: tuple[str, ...]


def load_photos() -> list[np.ndarray]:
    """The bundled photos as HxWx3 uint8 arrays, colour ones first."""
    import skimage
    from skimage import io

    root = Path(skimage.__file__).parent / "data"
    photos = []
    for name in COLOUR_PHOTOS + GREY_PHOTOS:
        img = io.imread(root / name)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos


def _preset(name: str) -> Any:
    """The transforms of the model's own weights entry: one with 224 crops if any (a ViT
    built without weights takes 224), else the default one."""
    import torchvision

    entries = list(torchvision.models.get_model_weights(name))
    for entry in entries:
        if list(entry.transforms().crop_size) == [224]:
            return entry.transforms()
    return torchvision.models.get_model_weights(name).DEFAULT.transforms()


def _image_samples(transform: Any) -> Callable[[int], torch.Tensor]:
    def samples(n: int) -> torch.Tensor:
        photos = load_photos()
        images = [transform(torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1))
                  for i in range(n)]
        return torch.stack(images).contiguous()  # (n, 3, crop, crop), normalised
    return samples


def torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    def build() -> nn.Module:
        torch.manual_seed(0)
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3",
                                                                         "googlenet") else {}
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()

    kind = "vit" if name.startswith(("vit_", "swin", "maxvit")) else "cnn"
    return ModelSpec(name, "torchvision", kind, build, _image_samples(_preset(name)), ("input",))


def english_text() -> bytes:
    for path in TEXT_FILES:
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(f"no English text found at {', '.join(map(str, TEXT_FILES))}")


def text_samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` consecutive windows of ``SEQ_LEN`` bytes of real text: (ids, mask), int64."""
    data = np.frombuffer(english_text(), dtype=np.uint8).astype(np.int64) + 4
    stride = max(1, (len(data) - SEQ_LEN) // max(n, 1))
    ids = np.stack([data[i * stride: i * stride + SEQ_LEN] for i in range(n)])
    return torch.from_numpy(ids), torch.ones(n, SEQ_LEN, dtype=torch.int64)


class FirstOutput(nn.Module):
    """A transformers model behind a plain forward: positional inputs by name, the first
    output tensor (``last_hidden_state`` of an encoder, ``logits`` of a decoder) out."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, inputs)), return_dict=False)
        return out[0]


def _hf(config_name: str, model_name: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(**config)
        model = getattr(transformers, model_name)(cfg).eval()
        names = ("pixel_values",) if model_name == "ViTModel" else ("input_ids", "attention_mask")
        return FirstOutput(model, names).eval()
    return build


_ENCODER = dict(vocab_size=TEXT_VOCAB, hidden_size=128, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=512, max_position_embeddings=64)


def transformers_spec(name: str) -> ModelSpec:
    text = ("input_ids", "attention_mask")
    builders = {
        "bert-tiny": ("encoder", _hf("BertConfig", "BertModel", **_ENCODER)),
        "roberta-tiny": ("encoder", _hf("RobertaConfig", "RobertaModel", pad_token_id=1,
                                        **{**_ENCODER, "max_position_embeddings": 66})),
        "distilbert-tiny": ("encoder", _hf("DistilBertConfig", "DistilBertModel",
                                           vocab_size=TEXT_VOCAB, dim=128, n_layers=2, n_heads=2,
                                           hidden_dim=512, max_position_embeddings=64)),
        "gpt2-tiny": ("decoder", _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=TEXT_VOCAB,
                                     n_embd=128, n_layer=2, n_head=2, n_positions=64)),
        "llama-tiny": ("decoder", _hf("LlamaConfig", "LlamaForCausalLM", vocab_size=TEXT_VOCAB,
                                      hidden_size=128, intermediate_size=344,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)),
        "vit-tiny": ("vit", _hf("ViTConfig", "ViTModel", image_size=224, patch_size=16,
                                hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=512)),
    }
    kind, build = builders[name]
    if name == "vit-tiny":
        import torchvision.transforms.v2 as T

        preset = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224),
                            T.ToDtype(torch.float32, scale=True),
                            T.Normalize([0.5] * 3, [0.5] * 3)])
        return ModelSpec(name, "transformers", kind, build, _image_samples(preset),
                         ("pixel_values",))
    return ModelSpec(name, "transformers", kind, build, text_samples, text)


def all_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models)) + list(TRANSFORMER_MODELS)


def spec_for(name: str) -> ModelSpec:
    return transformers_spec(name) if name in TRANSFORMER_MODELS else torchvision_spec(name)


def param_count(spec: ModelSpec) -> int:
    """Parameters of the model, counted on the meta device (nothing allocated), or on the
    CPU for a builder that reads tensor values while it initialises (RegNet)."""
    try:
        with torch.device("meta"):
            model = spec.build()
    except (NotImplementedError, RuntimeError):
        model = spec.build()
    return sum(p.numel() for p in model.parameters())


def estimate_batchnorm_(model: nn.Module, inputs: Inputs) -> int:
    """Set every BatchNorm's running statistics to those of ``inputs`` (one forward in
    train mode, cumulative average); returns how many layers were set. With random weights
    and the initial statistics (mean 0, variance 1) activations shrink or grow layer after
    layer (EfficientNet-B0's logits come out near 1e-13), which no quantizer can represent
    and no cosine can judge; with statistics from real images every BatchNorm output is
    unit-scale, as in a trained network."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the forward passes
    model.train()
    try:
        with torch.no_grad():
            model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    finally:
        model.eval()
        for m, momentum in saved:
            m.momentum = momentum
    return len(norms)


def centered_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine after removing each output's mean over the samples: random
    weights make every output nearly alike, so the raw cosine flatters any model."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = den > 0
    return float(np.mean(num[ok] / den[ok])) if ok.any() else math.nan
