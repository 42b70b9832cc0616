"""Plain English text for the distillation of bench/transformer_peers.py's head-pruned
student (``--kd-text``), none of it the held-out sentences the rows are scored on.

- ``austen:N``: N sentences of 4-40 words of Jane Austen's six novels (``make llm-data``:
  the Debian package r-cran-janeaustenr), in a seeded random order.
- ``wordnet:N``: N of WordNet 3.0's usage examples (about 35,000 present-day English
  phrases and sentences of 4 or more words, e.g. "he owns a controlling share of the
  company's stock"), from the Debian package wordnet-base (``apt-get install
  wordnet-base``, or ``apt-get download wordnet-base`` + ``dpkg -x`` into
  ``<cache>/llm/deb``), in a seeded random order.
- a path: a UTF-8 file, one text per line (blank lines skipped).

Sources combine with commas (``austen:8000,wordnet:8000``). Austen alone is 19th-century
prose; the held-out sentences are present-day, and the student's cosine on them follows
the text it was distilled on (see the README's transformers section).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def wordnet_dir() -> Path | None:
    """WordNet's database files: the system install, else the cache's unpacked package."""
    from torchslim import config

    for d in (Path("/usr/share/wordnet"), config.cache_dir() / "llm" / "deb" / "usr/share/wordnet"):
        if all((d / f).is_file() for f in WORDNET_FILES):
            return d
    return None


def wordnet_examples(n: int) -> list[str]:
    """``n`` WordNet usage examples of 4 or more words (the quoted parts of the glosses)."""
    d = wordnet_dir()
    if d is None:
        raise SystemExit("error: --kd-text wordnet:N needs WordNet's files: apt-get install "
                         "wordnet-base (or apt-get download wordnet-base and dpkg -x it into "
                         "~/.cache/torchslim/llm/deb)")
    found: set[str] = set()
    for name in WORDNET_FILES:
        for line in (d / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            found.update(e.strip() for e in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]))
    examples = sorted(e for e in found if len(e.split()) >= 4)
    random.Random(0).shuffle(examples)
    return examples[:n]


def austen_sentences(n: int) -> list[str]:
    """``n`` sentences of 4-40 words from Jane Austen's novels (``make llm-data``), in a
    seeded random order."""
    from torchslim.llm.data import load_austen

    found = [s for text in load_austen().values()
             for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
             if 4 <= len(s.split()) <= 40 and not s.isupper()]
    random.Random(0).shuffle(found)
    return found[:n]


SOURCES = {"austen": austen_sentences, "wordnet": wordnet_examples}


def kd_texts(spec: str) -> list[str]:
    """The texts of a ``--kd-text`` value: comma-separated ``source:N`` items or paths."""
    texts: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        source, _, count = item.partition(":")
        if source in SOURCES:
            if not count.isdigit() or int(count) < 1:
                raise SystemExit(f"error: --kd-text {item}: write {source}:N with N >= 1 "
                                 "texts")
            texts += SOURCES[source](int(count))
        elif Path(item).is_file():
            texts += [line.strip() for line in Path(item).read_text(encoding="utf-8")
                      .splitlines()]
        else:
            raise SystemExit(f"error: --kd-text {item} is not a file nor one of "
                             f"{', '.join(f'{s}:N' for s in SOURCES)}; pass a UTF-8 text file")
    return [t for t in texts if t]
