"""bench/_kd_text.py: the --kd-text sources of transformer_peers (WordNet usage examples
read from the database files, comma-separated sources, files, one-line errors)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "_kd_text.py"


@pytest.fixture()
def kd_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_kd_text_under_test", PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    wn = tmp_path / "wordnet"
    wn.mkdir()
    header = "  1 This software and database is being provided\n"
    entries = {  # WordNet's data.* line format: offset ... | gloss; "example"; "example"
        "data.noun": '00001 03 n 01 dog 0 000 | a domestic animal; "the dog barked all '
                     'night"; "two dogs"\n',
        "data.verb": '00002 29 v 01 run 0 000 | move fast; "he runs to the station every '
                     'morning"\n',
        "data.adj": '00003 00 a 01 red 0 000 | of the colour of blood; "a red ball on the '
                    'lawn"\n',
        "data.adv": '00004 02 r 01 fast 0 000 | quickly; "she \'s too tired"\n'}
    for name, line in entries.items():
        (wn / name).write_text(header + line, encoding="latin-1")
    monkeypatch.setattr(module, "wordnet_dir", lambda: wn)
    return module


def test_wordnet_examples_of_four_words_or_more(kd_text) -> None:  # type: ignore[no-untyped-def]
    got = kd_text.wordnet_examples(10)
    assert sorted(got) == ["a red ball on the lawn", "he runs to the station every morning",
                           "she 's too tired", "the dog barked all night"]
    assert len(kd_text.wordnet_examples(2)) == 2


def test_sources_combine_with_commas(kd_text, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    own = tmp_path / "own.txt"
    own.write_text("first line\n\nsecond line\n", encoding="utf-8")
    assert kd_text.kd_texts(f"wordnet:1,{own}")[1:] == ["first line", "second line"]


@pytest.mark.parametrize("spec, match", [("wordnet:0", "wordnet:N with N >= 1"),
                                         ("wordnet:x", "wordnet:N with N >= 1"),
                                         ("gutenberg:5", "not a file nor one of austen:N, "
                                                         "wordnet:N")])
def test_bad_specs_say_what_to_write(kd_text, spec: str, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match=match):
        kd_text.kd_texts(spec)


def test_missing_wordnet_names_the_package(kd_text, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(kd_text, "wordnet_dir", lambda: None)
    with pytest.raises(SystemExit, match="apt-get install wordnet-base"):
        kd_text.kd_texts("wordnet:5")
