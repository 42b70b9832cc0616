"""The configs validate themselves; version policies pick the right versions."""

from __future__ import annotations

import pytest

from torchslim.serve.config import (BatchingConfig, FieldError, ModelConfig, ServerConfig,
                                    VersionPolicy, version_key)


@pytest.mark.parametrize("text, available, picked", [
    ("latest", ["1", "2", "10"], ["10"]), ("latest:2", ["1", "2", "10"], ["2", "10"]),
    ("all", ["3", "1"], ["1", "3"]), ("1,3", ["1", "2", "3"], ["1", "3"]),
    ("7", ["1", "2"], []),
])
def test_version_policies_select(text: str, available: list[str], picked: list[str]) -> None:
    policy = VersionPolicy.parse(text)
    assert policy.select(available) == picked
    assert VersionPolicy.parse(policy.describe()) == policy


def test_versions_sort_by_number() -> None:
    assert sorted(["10", "9", "1.10.0", "1.9.2", "beta"], key=version_key) == [
        "1.9.2", "1.10.0", "9", "10", "beta"]


@pytest.mark.parametrize("kwargs, field", [
    ({"max_batch_size": 0}, "max_batch_size"), ({"max_queue_delay_ms": -1}, "max_queue_delay_ms"),
    ({"max_queue_size": 0}, "max_queue_size"), ({"default_timeout_ms": 0}, "default_timeout_ms"),
    ({"max_batch_size": 8, "preferred_batch_sizes": (4, 16)}, "preferred_batch_sizes"),
])
def test_batching_options_are_checked(kwargs: dict, field: str) -> None:
    with pytest.raises(FieldError) as caught:
        BatchingConfig(**kwargs)
    assert caught.value.field == field


def test_warmup_covers_one_every_preferred_size_and_the_largest() -> None:
    assert BatchingConfig(max_batch_size=32, preferred_batch_sizes=(16, 8)).warmup_sizes() == (
        1, 8, 16, 32)


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "a/b", "source": "x"}, "name"), ({"name": "m", "source": " "}, "source"),
    ({"name": "m", "source": "x", "instances": 0}, "instances"),
    ({"name": "m", "source": "x", "threads": 0}, "threads"),
])
def test_model_options_are_checked(kwargs: dict, field: str) -> None:
    with pytest.raises(FieldError) as caught:
        ModelConfig(**kwargs)
    assert caught.value.field == field


def test_server_options_are_checked() -> None:
    model = ModelConfig(name="m", source="x")
    with pytest.raises(FieldError, match="share a name"):
        ServerConfig(models=(model, model))
    with pytest.raises(FieldError, match="not a port"):
        ServerConfig(models=(model,), http_port=70000)
    assert ServerConfig(models=(model,)).host == "127.0.0.1"   # loopback unless told
    assert ModelConfig(name="m", source="x", instances=2).session_threads() >= 1
