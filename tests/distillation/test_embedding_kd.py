"""distill_embeddings / distill_text_classifier on tiny transformers and plain sentences.

The teacher is a random-weight tiny model; the student another random one, smaller (fewer
layers, half the MLP, or a narrower width). The held-out cosine is measured raw and
"centered" (the teacher's mean held-out embedding subtracted from both): random tiny
models give every sentence nearly the same direction, so the raw cosine rises to 0.97 by
learning that direction alone; the centered one only when the student tells sentences
apart as the teacher does.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchslim._record import record_of  # noqa: E402
from torchslim.distillation import (DistillConfig, EmbeddingDistillConfig,  # noqa: E402
                                    distill_embeddings, distill_text_classifier,
                                    hidden_state_loss, text_train_config, uniform_layer_map)
from torchslim.errors import ConfigError, DataFormatError, UnknownNameError  # noqa: E402
from torchslim.distillation.text import Shuffled  # noqa: E402
from torchslim.train import fit  # noqa: E402
from torchslim.transformers import TextModel, text_batches, tiny_model  # noqa: E402

SUBJECTS = ("the cat|a dog|my friend|the old man|a young girl|the teacher|our neighbour|"
            "the bird|a farmer|the child").split("|")
VERBS = "sees|likes|finds|carries|paints|follows|watches|hears|buys|sells|wants|loves".split("|")
ADJECTIVES = "red|small|big|quiet|happy|green|heavy|bright|cold|warm|strange|new".split("|")
OBJECTS = "house|ball|river|book|tree|garden|letter|boat|song|window|apple|road".split("|")
TAILS = ("today|at night|in the morning|again|slowly|near the sea|with care|"
         "every day").split("|")
WORDS = sorted({w for part in (*SUBJECTS, *VERBS, *ADJECTIVES, *OBJECTS, *TAILS, "the a and")
                for w in part.split()})


def sentences(n: int, seed: int) -> list[str]:
    """``n`` plain English sentences of 5 to 14 words from a small grammar."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} " \
            f"{rng.choice(OBJECTS)}"
        if rng.random() < 0.6:
            s += " " + rng.choice(TAILS)
        if rng.random() < 0.3:
            s += f" and {rng.choice(VERBS)} a {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}"
        out.append(s)
    return out


def word_tokenizer(*, bert: bool):  # type: ignore[no-untyped-def]
    """A word-level tokenizer over the grammar's words (ids < 128, the tiny vocabulary).
    BERT-style: [CLS] text [SEP] and a [PAD] token; decoder-style: no pad token, only an
    end-of-sequence one (as GPT-2's and Llama's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if bert else ["<unk>", "<eos>"]
    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1 if bert else 0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                eos_token="<eos>")


@pytest.fixture(scope="module")
def bert_tok():  # type: ignore[no-untyped-def]
    return word_tokenizer(bert=True)


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    return sentences(400, seed=0)


@pytest.fixture(scope="module")
def val_texts() -> list[str]:
    return sentences(100, seed=1)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# measured (seeds as here): raw 0.046 -> 0.991-0.995 for every loss; centered cosine
# 0.005 -> 0.37 (cosine), 0.90 (mse), 0.89 (cosine+mse)
@pytest.mark.parametrize("loss, centered_min", [("cosine", 0.25), ("mse", 0.75),
                                                ("cosine+mse", 0.75)])
def test_student_learns_the_teachers_embeddings(bert_tok, train_texts, val_texts, loss,
                                                centered_min) -> None:
    teacher = tiny_model("bert", seed=0)
    student = tiny_model("bert", seed=1, num_hidden_layers=1, intermediate_size=64)
    teacher_before, student_before = _state(teacher), _state(student)
    result = distill_embeddings(teacher, student, train_texts, tokenizer=bert_tok,
                                val_texts=val_texts, loss=loss, epochs=10, lr=3e-3,
                                max_length=32)
    assert result.val_cosine_before < 0.5 and result.val_cosine_centered_before < 0.2
    assert result.val_cosine > 0.95
    assert result.val_cosine_centered > centered_min
    curve = result.loss_curve
    assert len(curve) == 10 and curve[-1] < curve[0] / 5
    assert result.n_train == 400 and result.n_val == 100 and result.hidden_pairs == ()
    # the inputs are left alone; the trained copy is the student's type, widths unchanged
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    assert type(result.student) is type(student) and result.embedder.projection is None
    assert result.student.config.intermediate_size == 64
    done = record_of(result.student).distillation
    assert done is not None and len(done.history) == 10 and done.config["loss"] == loss


def test_embedder_matches_the_teacher_embedding_definition(bert_tok, train_texts,
                                                           val_texts) -> None:
    """result.embedder gives the student's pooled embedding (mean over the mask, as
    TextModel defines it), and the result's cosine is what one measures by hand."""
    teacher = tiny_model("bert", seed=0)
    student = tiny_model("bert", seed=1, num_hidden_layers=1, intermediate_size=64)
    result = distill_embeddings(teacher, student, train_texts[:64], tokenizer=bert_tok,
                                val_texts=val_texts, epochs=2, lr=3e-3, max_length=32)
    batch = text_batches(bert_tok, val_texts, model=teacher, batch_size=100).inputs()[0]
    with torch.no_grad():
        mine = result.embedder(batch)
        reference = TextModel(result.student.eval())(**batch)
        target = TextModel(teacher)(**batch)
    torch.testing.assert_close(mine, reference)
    by_hand = torch.nn.functional.cosine_similarity(mine, target).mean().item()
    assert abs(by_hand - result.val_cosine) < 1e-5


def test_hidden_state_matching_across_widths(bert_tok, train_texts, val_texts) -> None:
    """A student half as wide (32 vs 64) and half as deep: projections 32 -> 64 for its
    pooled output and its hidden states, trained with it; the hidden-state error falls."""
    teacher = tiny_model("bert", seed=0)
    student = tiny_model("bert", seed=1, num_hidden_layers=1, intermediate_size=64,
                         hidden_size=32, num_attention_heads=2)
    result = distill_embeddings(teacher, student, train_texts, tokenizer=bert_tok,
                                val_texts=val_texts, hidden_states={0: 0, 1: 2}, epochs=10,
                                lr=3e-3, max_length=32)
    assert result.hidden_pairs == ((0, 0), (1, 2))
    first, last = result.history[0], result.history[-1]
    # measured: hidden term 1.13 -> 0.18 (relative squared error), centered 0.00 -> 0.44
    assert last["train_hidden"] < 0.35 and last["train_hidden"] < first["train_hidden"] / 3
    assert result.val_cosine > 0.95 and result.val_cosine_centered > 0.25
    assert result.embedder.projection is not None
    assert tuple(result.embedder.projection.weight.shape) == (64, 32)
    assert result.student.config.hidden_size == 32      # the projection is not in the student
    assert record_of(result.student).distillation.adapters == ("hidden_0", "hidden_1")
    batch = text_batches(bert_tok, val_texts[:3], model=student).inputs()[0]
    assert result.embedder(batch).shape == (3, 64)


def test_uniform_layer_map_and_hidden_loss() -> None:
    assert uniform_layer_map(2, 4) == ((1, 2), (2, 4))
    assert uniform_layer_map(3, 12) == ((1, 4), (2, 8), (3, 12))
    t = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = t + torch.where(mask.bool().unsqueeze(-1), 0.0, 100.0)  # differs on padding only
    assert hidden_state_loss(noisy, t, mask).item() == 0.0
    assert hidden_state_loss(torch.zeros_like(t), t, mask).item() == pytest.approx(1.0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_teacher_with_mean_pooling(family, train_texts, val_texts) -> None:
    """A decoder teacher (no pad token: batches are padded with its end-of-sequence token,
    which the mask keeps out), a one-layer decoder student with half the MLP."""
    tok = word_tokenizer(bert=False)
    assert tok.pad_token is None
    small = {"gpt2": dict(n_layer=1, n_inner=128), "llama": dict(num_hidden_layers=1,
                                                                 intermediate_size=64)}
    teacher = tiny_model(family, seed=0)
    student = tiny_model(family, seed=1, **small[family])
    result = distill_embeddings(teacher, student, train_texts, tokenizer=tok,
                                val_texts=val_texts, loss="mse", epochs=10, lr=3e-3,
                                max_length=32)
    assert tok.pad_token is None                          # the user's tokenizer is untouched
    # measured: centered 0.02 -> 0.97 (GPT-2), -0.03 -> 0.98 (Llama); raw 0.02 -> 0.99
    assert result.val_cosine_centered_before < 0.3 and result.val_cosine_centered > 0.8
    assert result.val_cosine > max(0.9, result.val_cosine_before)
    # mean pooling honours the mask: a padded text embeds as it does alone
    padded = text_batches(tok, [val_texts[0], val_texts[0] + " and sees a red boat again"],
                          model=student).inputs()[0]
    alone = text_batches(tok, [val_texts[0]], model=student).inputs()[0]
    assert int(padded["attention_mask"][0].sum()) < padded["input_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(result.embedder(padded)[0], result.embedder(alone)[0],
                                   atol=1e-5, rtol=1e-5)


def object_group(sentence: str) -> int:
    """A label read off the text: which third of OBJECTS its first object comes from."""
    return next(OBJECTS.index(w) for w in sentence.split() if w in OBJECTS) // 4


def test_logits_kd_for_a_sequence_classifier(bert_tok, train_texts, val_texts) -> None:
    """A BERT classifier teacher fine-tuned on a task read off the text (a random one
    gives every sentence the same class), a one-layer student, KD without labels (soft
    targets plus the teacher's own top-1): agreement and held-out top-1 rise."""
    teacher = tiny_model("bert-cls", seed=0)
    labelled = text_batches(bert_tok, train_texts, model=teacher, batch_size=16,
                            targets=[object_group(s) for s in train_texts])
    fit(TextModel(teacher), Shuffled(labelled), config=text_train_config(epochs=3, lr=3e-3))
    teacher.eval()
    student = tiny_model("bert-cls", seed=1, num_hidden_layers=1, intermediate_size=64)
    config = DistillConfig(temperature=2.0, train=text_train_config(epochs=5, lr=3e-3))
    result = distill_text_classifier(teacher, student, train_texts, tokenizer=bert_tok,
                                     val_texts=val_texts, max_length=32, config=config,
                                     val_labels=[object_group(s) for s in val_texts])
    # measured: teacher top-1 1.0; student agreement and top-1 0.36 -> 0.99, loss 1.03 -> 0.035
    assert result.val_agreement_before < 0.6 and result.val_agreement > 0.9, result
    assert result.val_top1 is not None and result.val_top1 > 0.85
    assert result.loss_curve[-1] < result.loss_curve[0] / 5
    assert type(result.student) is type(student) and result.n_val == 100
    assert record_of(result.student).distillation is not None
    with pytest.raises(ConfigError, match="3 classes and the student 2"):
        distill_text_classifier(teacher, tiny_model("bert-cls", num_labels=2), train_texts,
                                tokenizer=bert_tok)
    with pytest.raises(ConfigError, match="2 labels for 400 texts"):
        distill_text_classifier(teacher, student, train_texts, tokenizer=bert_tok,
                                labels=[0, 1])


def test_refusals(bert_tok, train_texts, val_texts) -> None:
    teacher = tiny_model("bert", seed=0)
    student = tiny_model("bert", seed=1, num_hidden_layers=1)
    run = lambda texts=train_texts[:20], **kw: distill_embeddings(  # noqa: E731
        teacher, student, texts, **{"tokenizer": bert_tok, "epochs": 1, **kw})
    with pytest.raises(DataFormatError, match="no non-empty text"):
        run(["", "   "])
    with pytest.raises(ConfigError, match="one string"):
        run("the cat sees the red ball")
    with pytest.raises(ConfigError, match="pass tokenizer="):
        run(tokenizer=None)
    with pytest.raises(ConfigError, match="unknown option"):
        run(temperature=2.0)
    with pytest.raises(UnknownNameError, match="embedding loss"):
        run(loss="kl")
    with pytest.raises(ConfigError, match="out of range"):
        run(hidden_states=[(2, 2)])     # the student has hidden states 0..1
    with pytest.raises(ConfigError, match="no held-out text"):
        run(val_fraction=0.0)
    with pytest.raises(ConfigError, match="vocabulary has 16 entries"):
        distill_embeddings(teacher, tiny_model("bert", vocab_size=16), train_texts[:20],
                           tokenizer=bert_tok, epochs=1)
    bare = word_tokenizer(bert=False)
    bare.eos_token = bare.unk_token = None   # nothing to pad batches with
    with pytest.raises(ConfigError, match="set tokenizer.pad_token"):
        run(tokenizer=bare)
    with pytest.raises(ConfigError, match="transformers model"):
        distill_embeddings(teacher, torch.nn.Linear(4, 4), train_texts, tokenizer=bert_tok)
    with pytest.raises(ConfigError, match="hidden_states"):
        EmbeddingDistillConfig(hidden_states="1:2")
    assert EmbeddingDistillConfig(hidden_states=["1:2"]).hidden_states == ((1, 2),)


def test_a_pruned_copy_keeps_the_teachers_token_table(bert_tok, train_texts, val_texts
                                                     ) -> None:
    """token_embeddings="auto" freezes the student's token table when it is the teacher's
    (a head-pruned copy) and trains it otherwise; "frozen" / "trained" force either."""
    from torchslim.prune import HeadPruneConfig, prune_heads_

    teacher = tiny_model("bert", seed=0)
    pruned = copy.deepcopy(teacher)
    prune_heads_(pruned, HeadPruneConfig(heads=0.5, mlp=0.5))
    table = teacher.get_input_embeddings().weight.detach().clone()
    run = lambda student, **kw: distill_embeddings(  # noqa: E731
        teacher, student, train_texts[:64], tokenizer=bert_tok, val_texts=val_texts[:32],
        epochs=2, lr=3e-3, max_length=32, **kw)
    kept = run(pruned)
    assert kept.token_embeddings == "frozen" and "token embeddings frozen" in str(kept)
    assert torch.equal(kept.student.get_input_embeddings().weight, table)
    assert kept.student.get_input_embeddings().weight.requires_grad  # given back trainable
    assert not torch.equal(kept.student.encoder.layer[0].output.dense.weight,
                           pruned.encoder.layer[0].output.dense.weight)  # the rest trains
    trained = run(pruned, token_embeddings="trained")
    assert trained.token_embeddings == "trained"
    assert not torch.equal(trained.student.get_input_embeddings().weight, table)
    other = run(tiny_model("bert", seed=1, num_hidden_layers=1))  # a different table
    assert other.token_embeddings == "trained"
    forced = run(tiny_model("bert", seed=1, num_hidden_layers=1), token_embeddings="frozen")
    assert forced.token_embeddings == "frozen"
    with pytest.raises(ConfigError, match="token_embeddings='fixed'; choose one of auto, "
                                          "frozen, trained"):
        EmbeddingDistillConfig(token_embeddings="fixed")


RECIPE = """\
name: text
model: mylab.models:pruned_encoder
teacher: mylab.models:encoder
data: mylab.data:sentences
stages:
  - kind: distill_embeddings
    loss: mse
    epochs: 2
  - kind: export
"""


def test_recipe_stage(bert_tok, train_texts, val_texts, tmp_path) -> None:
    """A recipe's distill_embeddings stage: its options validate at their YAML line, and
    the stage trains the current model on the data's text batches and writes an ONNX
    artifact that takes token tensors of any batch and sequence length."""
    import onnxruntime as ort

    from torchslim.data import DataBundle, DatasetInfo
    from torchslim.pipeline.recipe import DistillEmbeddingsOptions, Target, parse_recipe
    from torchslim.pipeline.stages import StageContext, State, run_stage

    recipe = parse_recipe(RECIPE)
    assert [s.kind for s in recipe.stages] == ["distill_embeddings", "export"]
    assert recipe.stages[0].plan().loss == "mse" and recipe.stages[0].plan().train.epochs == 2
    with pytest.raises(ConfigError, match=r"<recipe>:7: stages\[0\].loss: .*embedding loss 'kl'"):
        parse_recipe(RECIPE.replace("loss: mse", "loss: kl"))

    teacher = tiny_model("bert", seed=0)
    student = tiny_model("bert", seed=1, num_hidden_layers=1, intermediate_size=64)
    train, val = (text_batches(bert_tok, t, model=student, batch_size=16, max_length=32)
                  for t in (train_texts, val_texts))
    info = DatasetInfo(name="sentences", num_classes=0, input_shape=(0, 0, 0), class_names=(),
                       mean=0.0, std=1.0)
    ctx = StageContext(data=DataBundle(train=train, val=val, test=val, info=info, seed=0),
                       teacher=teacher, target=Target(threads=1), seed=0)
    opts = DistillEmbeddingsOptions(kind="distill_embeddings", loss="mse", epochs=10, lr=3e-3)
    new = run_stage(State(model=student, artifact=tmp_path / "before.onnx"), opts, ctx,
                    tmp_path / "stage")
    assert new.record["val_cosine_centered"] > 0.75 and len(new.record["history"]) == 10
    assert type(new.model) is type(student) and new.artifact.is_file()
    session = ort.InferenceSession(str(new.artifact), providers=["CPUExecutionProvider"])
    for texts in (val_texts[:2], val_texts[10:15] + ["the cat sees the red ball and sees a "
                                                     "green boat near the sea again"]):
        batch = text_batches(bert_tok, texts, model=student, batch_size=8).inputs()[0]
        feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
        with torch.no_grad():
            expected = TextModel(new.model)(**batch).numpy()
        np_out = session.run(None, feed)[0]
        assert np_out.shape == expected.shape and abs(np_out - expected).max() < 1e-4
    wide = tiny_model("bert", seed=2, hidden_size=32, num_attention_heads=2)
    with pytest.raises(ConfigError, match="width 32 is not the teacher's 64"):
        run_stage(State(model=wide, artifact=tmp_path / "before.onnx"), opts, ctx, tmp_path / "w")
