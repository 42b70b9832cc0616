from __future__ import annotations

import hashlib

import numpy as np
import torch

from torchslim.artifacts.digest import artifact_digest, data_digest
from torchslim.artifacts.schema import FileEntry


def test_artifact_digest_is_the_hash_of_sorted_file_lines() -> None:
    a = FileEntry(path="m.xml", size=3, sha256="a" * 64)
    b = FileEntry(path="m.bin", size=5, sha256="b" * 64)
    expected = hashlib.sha256(f"{'a' * 64} 3 m.xml\n{'b' * 64} 5 m.bin\n".encode()).hexdigest()
    assert artifact_digest([a, b]) == artifact_digest([b, a]) == "sha256:" + expected
    renamed = FileEntry(path="n.bin", size=5, sha256="b" * 64)
    assert artifact_digest([a, renamed]) != artifact_digest([a, b])


def test_data_digest_counts_samples_and_sees_every_value() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.ones(2))]
    digest, n = data_digest(batches)
    assert n == 6 and digest.startswith("sha256:")
    assert data_digest([(b[0].numpy(), b[1].numpy()) for b in batches]) == (digest, 6)
    changed = x.clone()
    changed[5, 3] += 1
    assert data_digest([(changed[:4], torch.zeros(4)), (changed[4:], torch.ones(2))])[0] != digest
    f32, f64 = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float64)
    assert data_digest([f32])[0] != data_digest([f64])[0]  # the dtype counts
