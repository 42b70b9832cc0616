import json

import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation import EvalResult

CONTRACT_KEYS = {"name", "runtime", "precision", "top1", "top5", "per_class", "agreement",
                 "latency_ms", "items_per_s", "bytes", "params", "nonzero_params", "macs",
                 "peak_mem_bytes", "artifact"}


def make_result(**overrides) -> EvalResult:
    fields = dict(
        name="teacher-fp32-torch", runtime="torch", precision="fp32", threads=2,
        top1=0.923123456, top5=0.998, per_class=[0.87, None, 1 / 3], worst_class=0,
        confusion=[[87, 13, 0], [0, 0, 0], [1, 1, 1]], agreement=1.0, cosine=0.999999991234,
        latency_ms={"1": {"p50": 1.23456, "p90": 1.3, "p99": 1.6, "mean": 1.25},
                    "32": {"p50": 20.1, "p90": 21.0, "p99": 23.4, "mean": 20.5}},
        items_per_s={"1": 830.123, "32": 1590.0}, bytes=1085000, params=270000,
        nonzero_params=270000, macs=41000000, peak_mem_bytes=52000000,
        artifact="teacher.onnx", n=103, machine={"cpu": "x", "threads": 2},
        logits=np.zeros((3, 3)))
    fields.update(overrides)
    return EvalResult(**fields)


def test_to_dict_has_contract_keys_and_no_logits():
    d = make_result().to_dict()
    assert CONTRACT_KEYS <= d.keys()
    assert "logits" not in d
    assert d["top1"] == 0.923123 and d["per_class"][2] == 0.333333
    assert d["cosine"] == 0.99999999


def test_json_round_trip_is_equal():
    result = make_result()
    d = json.loads(json.dumps(result.to_dict()))
    back = EvalResult.from_dict(d)
    assert back == result
    assert back.to_dict() == result.to_dict()
    assert back.logits is None


def test_nan_per_class_becomes_null():
    d = make_result(per_class=[float("nan"), 0.5, 1.0]).to_dict()
    assert d["per_class"][0] is None
    json.dumps(d, allow_nan=False)


def test_unknown_keys_land_in_extra():
    d = make_result().to_dict()
    d["verdict"] = "pass"
    assert EvalResult.from_dict(d).extra == {"verdict": "pass"}


def test_from_dict_names_missing_keys():
    with pytest.raises(ConfigError, match="top1"):
        EvalResult.from_dict({"name": "a", "runtime": "torch", "precision": "fp32"})


def test_save_writes_json(tmp_path):
    path = make_result().save(tmp_path / "r.json")
    assert json.loads(path.read_text())["name"] == "teacher-fp32-torch"
