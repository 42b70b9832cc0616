"""The YAML model-repository file: relative sources, repository + defaults, CLI overrides,
and every error naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import serve_helpers as h

from torchslim.errors import ConfigError
from torchslim.serve.config_file import config_for_source, load_config, parse_config

GOOD = """\
http_port: 9000
grpc_port: null
models:
  fashion:
    source: artifacts/fashion
    version_policy: [1, 3]
    instances: 2
    max_batch_size: 16
    preferred_batch_sizes: [8, 4]
    default_timeout_ms: null
  remote:
    source: fashion@prod
"""


def test_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "repo.yaml"
    path.write_text(GOOD)
    config, template = load_config(path)
    assert (config.http_port, config.grpc_port, template) == (9000, None, None)
    fashion, remote = config.models
    assert fashion.source == str(tmp_path / "artifacts" / "fashion")   # relative to the file
    assert fashion.version_policy.versions == ("1", "3") and fashion.instances == 2
    assert fashion.batching.max_batch_size == 16
    assert fashion.batching.preferred_batch_sizes == (4, 8)
    assert fashion.batching.default_timeout_ms == 30_000.0   # null: the default
    assert remote.source == "fashion@prod" and remote.batching.max_batch_size == 32


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    config, _ = parse_config(GOOD, base=tmp_path, overrides={"max_batch_size": 8,
                                                             "http_port": 0})
    assert config.http_port == 0
    assert [m.batching.max_batch_size for m in config.models] == [8, 8]
    with pytest.raises(ConfigError, match=r"<config>:9: models.fashion.preferred_batch_sizes: "
                                          r"\[8, 4\] must lie in \[1, max_batch_size=4\]"):
        parse_config(GOOD, base=tmp_path, overrides={"max_batch_size": 4})


def test_a_repository_with_defaults(tmp_path: Path) -> None:
    h.linear(tmp_path / "models" / "a" / "1" / "model.onnx")
    h.linear(tmp_path / "models" / "b" / "model.onnx")
    text = "repository: models\ndefaults:\n  max_batch_size: 4\nmodels:\n  b:\n    source: models/b\n"
    config, template = parse_config(text, base=tmp_path)
    assert [m.name for m in config.models] == ["a", "b"]
    assert config.models[0].batching.max_batch_size == 4
    assert config.models[1].batching.max_batch_size == 32   # listed: its own options
    assert template is not None and template.batching.max_batch_size == 4
    assert config.repository == str(tmp_path / "models")


@pytest.mark.parametrize("text, where", [
    ("models:\n  m:\n    source: x\n    max_batch_size: 0\n",
     "repo.yaml:4: models.m.max_batch_size: 0 must be >= 1"),
    ("models:\n  m:\n    source: x\n    batch: 4\n", "repo.yaml:4: models.m.batch: unknown option"),
    ("models:\n  m:\n    source: x\n    instances: many\n",
     "repo.yaml:4: models.m.instances: Input should be a valid integer"),
    ("http_port: 8000\nmodels:\n  m:\n    source: x\n    version_policy: latest:x\n",
     "repo.yaml:5: models.m.version_policy:"),
    ("models:\n  m:\n    max_batch_size: 4\n", "repo.yaml:2: models.m.source: Field required"),
    ("models:\n  m/x:\n    source: x\n", "repo.yaml:2: models.m/x:"),
    ("http_port: 99999\n", "repo.yaml:1: http_port: 99999 is not a port"),
    ("models: [\n", "repo.yaml:2: invalid YAML"),
    ("- a\n- b\n", "repo.yaml:1: (top level): a server config is a mapping"),
])
def test_errors_name_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="repo.yaml")
    assert str(caught.value).startswith(where), str(caught.value)
    assert "\n" not in str(caught.value)


def test_one_path_on_the_command_line(tmp_path: Path) -> None:
    single = h.linear(tmp_path / "student-int8.onnx")
    config, template = config_for_source(str(single), overrides={"max_batch_size": 8})
    assert [m.name for m in config.models] == ["student-int8"] and template is None
    assert config.models[0].batching.max_batch_size == 8
    h.linear(tmp_path / "repo" / "a" / "1" / "model.onnx")
    h.linear(tmp_path / "repo" / "b" / "1" / "model.onnx")
    config, template = config_for_source(str(tmp_path / "repo"))
    assert [m.name for m in config.models] == ["a", "b"] and template is not None
    with pytest.raises(ConfigError, match="--max-batch-size: 0 must be >= 1"):
        config_for_source(str(single), overrides={"max_batch_size": 0})
