"""The default teacher: trained once on Fashion-MNIST, then reused from the cache."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.config import cache_dir
from torchslim.data import DataBundle
from torchslim.train import TrainConfig, accuracy, fit, load_checkpoint, save_checkpoint
from torchslim.zoo import build_model, model_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TeacherRecipe:
    """How the default teacher is built. The cache key is a hash of all of it."""

    model: str = "resnet14"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=0.1))
    dataset: str = "fashion-mnist"
    train_limit: int | None = None   # quick mode trains on a prefix of the training split

    def key(self) -> str:
        fields = asdict(self)
        # Options added to TrainConfig later with a default that changes nothing for a
        # teacher stay out of the key, so cached teachers remain valid.
        if fields["train"].get("keep_masks", True):
            fields["train"].pop("keep_masks", None)
        blob = json.dumps(fields, sort_keys=True, default=str)
        return f"{self.dataset}-{self.model}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# Teachers trained once by ``get_teacher`` with their recipe and shipped with the package
# (the default one: 0.7 MB), so a fresh machine does not spend 6 epochs on it. The file name
# is the recipe's key: a changed recipe misses it and trains its own.
SHIPPED = Path(__file__).resolve().parents[1] / "zoo" / "pretrained"

QUICK_TEACHER = TeacherRecipe(model="resnet8", model_kwargs={"width": 8},
                              train=TrainConfig(epochs=1, lr=0.05), train_limit=2000)


def get_teacher(recipe: TeacherRecipe, data: DataBundle, *,
                cache: Path | None = None) -> tuple[nn.Module, dict[str, Any], bool]:
    """Return (model, sidecar, was_cached). Trains (resumably) when the cache has none."""
    root = (cache or cache_dir()) / "teachers"
    weights = root / f"{recipe.key()}.safetensors"
    if weights.is_file():
        model, meta = load_checkpoint(weights)
        logger.info("reusing cached teacher %s", weights)
        return _nhwc(model), meta, True
    shipped = SHIPPED / f"{recipe.key()}.safetensors"
    if shipped.is_file():
        model, meta = load_checkpoint(shipped)
        logger.info("using the shipped teacher %s (trained by this recipe; put a checkpoint "
                    "at %s to use another)", shipped.name, weights)
        return _nhwc(model), {**meta, "shipped": True}, True
    model = build_model(recipe.model, num_classes=data.info.num_classes,
                        in_channels=data.info.input_shape[0], **recipe.model_kwargs)
    logger.info("training teacher %s on %s (%d epochs); cached afterwards in %s",
                recipe.model, recipe.dataset, recipe.train.epochs, root)
    history = fit(model, data.train, config=recipe.train, val=data.val,
                  checkpoint_dir=root / f"{recipe.key()}.partial",
                  checkpoint_meta={"dataset": recipe.dataset})
    metrics = {"val_top1": accuracy(model, data.val), "history": history}
    save_checkpoint(weights, model, spec=model_spec(model), dataset=recipe.dataset,
                    metrics=metrics, recipe=json.loads(json.dumps(asdict(recipe), default=str)))
    model, meta = load_checkpoint(weights)
    return _nhwc(model), meta, False


def _nhwc(model: nn.Module) -> nn.Module:
    """The teacher in channels_last, the layout oneDNN's CPU convolutions run fastest in:
    its inference (a KD stage's logits over the training set, PTQ calibration) is about a
    quarter faster than in NCHW. Only the strides change; the weights are the same values."""
    return model.to(memory_format=torch.channels_last)
