"""The PET-style cloze protocol on tiny random masked LMs built from configs (nothing downloaded).

Tokenizers are built offline: a WordPiece ``BertTokenizerFast`` from a vocabulary file written here,
and an ALBERT-style ``AlbertTokenizerFast`` over a SentencePiece-like Unigram model (lower-casing,
``▁`` word prefixes, ALBERT's special tokens); their vocabularies come from the real FewGLUE texts
when the local data folder is present. They are not the pretrained vocabularies; what is checked is
the mechanics: pattern, mask position, truncation, verbalizer tokens, logits at the mask, the losses,
methods inside the masked LM, what trains, and a run that fits a toy task.
"""

from __future__ import annotations

import collections
import re

import pytest
import torch
import torch.nn.functional as F
from tokenizers import (
    ByteLevelBPETokenizer,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertTokenizerFast,
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
)

from tinyattn.cloze import (
    ClozeModel,
    ClozeTrainConfig,
    build_cloze_model,
    cloze_loss,
    collate,
    load_masked_lm,
    predict,
    run_cloze,
    train_cloze,
    trainable_counts,
)
from tinyattn.fewglue import ClozePattern, VerbalizerError, load_fewglue
from tinyattn.inject import PREFIX, TinyAttnConfig, expected_adapter_params

KINDS = ("bert", "albert", "roberta")
PUNCT = list(".,?!;:'\"()-$%&/0123456789")
TOY = "the movie was good bad fine it is a film plot story actor yes no maybe question answer"


def _words(texts) -> list[str]:
    counts = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    return [w for w, _ in counts.most_common()]


def make_tokenizer(kind: str, texts, tmp_path):
    """A small offline tokenizer of the family's kind; every word it lacks is spelled in letters."""
    words = list(dict.fromkeys(["yes", "no", "maybe", *TOY.split(), *_words(texts)]))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + PUNCT
    if kind == "bert":
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters]
        vocab += [f"##{c}" for c in letters]
        (tmp_path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
        # from the folder: transformers 5 reads ``vocab_file`` only there, not in the constructor
        return BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True)
    if kind == "roberta":  # byte-level BPE (cased) trained here on the texts
        bpe = ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bpe.train_from_iterator([*texts, *[TOY] * 20], vocab_size=30_000, special_tokens=specials)
        bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        return RobertaTokenizerFast(
            tokenizer_object=bpe._tokenizer,
            **dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>"),
            **dict(unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"),
        )
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -2.0) for w in words] + [("▁", -4.0)]
    pieces += [(c, -6.0) for c in letters] + [("▁" + c, -6.0) for c in letters]
    unique: dict[str, float] = {}
    for piece, score in pieces:  # one entry per piece, in first-seen order (specials keep 0-4)
        unique.setdefault(piece, score)
    pieces = list(unique.items())
    backend = Tokenizer(models.Unigram(pieces, unk_id=1, byte_fallback=False))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return AlbertTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )


def tiny_mlm(kind: str, vocab_size: int, seed: int = 0, max_positions: int = 128, init=0.02):
    """A 2-layer, 32-wide random masked LM; ``init`` is the weights' standard deviation."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        initializer_range=init,
    )
    if kind == "albert":
        return AlbertForMaskedLM(AlbertConfig(**common, embedding_size=16))
    if kind == "roberta":  # RoBERTa's positions start after the padding id
        common.update(pad_token_id=1, max_position_embeddings=max_positions + 2)
        return RobertaForMaskedLM(RobertaConfig(**common))
    return BertForMaskedLM(BertConfig(**common))


def toy_examples(n: int = 8) -> list[dict]:
    """RTE-shaped examples whose label is readable from the premise (good -> yes, bad -> no)."""
    out = []
    for i in range(n):
        label, word = i % 2, ("good", "bad")[i % 2]
        premise = f"{word} {word} the {'movie' if i % 4 < 2 else 'film'} was {word}"
        hypothesis = "it is a film" if i % 3 else "the plot"
        out.append({"premise": premise, "hypothesis": hypothesis, "label": label, "idx": i})
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fewglue_data(request):
    """{(task, split): examples} of RTE and CB from the local folder, or None when it is absent."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("TINYATTN_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    if not (root / "fewglue" / "RTE" / "train.jsonl").is_file():
        return None
    return {
        (task, split): load_fewglue(task, split, root)
        for task in ("rte", "cb")
        for split in ("train", "val")
    }


@pytest.fixture(scope="module")
def tokenizers_(fewglue_data, tmp_path_factory):
    texts = [TOY]
    for examples in (fewglue_data or {}).values():
        texts += [e["premise"] + " " + e["hypothesis"] for e in examples]
    folder = tmp_path_factory.mktemp("tok")
    return {kind: make_tokenizer(kind, texts, folder) for kind in KINDS}


def _pattern_parts(pattern, tokenizer, row, example):
    """The ids before and after the mask, and what the untruncated parts tokenise to."""
    ids, m = row["input_ids"], row["mask_index"]
    before = tokenizer(example["premise"] + "?", add_special_tokens=False)["input_ids"]
    after = tokenizer(". " + example["hypothesis"], add_special_tokens=False)["input_ids"]
    return ids[1:m], ids[m + 1 : -1], before, after


# ----------------------------------------------------------------------------- pattern
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", ("rte", "cb"))
def test_pattern_and_mask_position_for_every_example(kind, task, fewglue_data, tokenizers_):
    if fewglue_data is None:
        pytest.skip("no local FewGLUE data (set TINYATTN_DATA_DIR)")
    tokenizer = tokenizers_[kind]
    full = ClozePattern(task, tokenizer, max_length=100_000)
    short = ClozePattern(task, tokenizer, max_length=64)
    truncated = 0
    for split in ("train", "val"):
        for example in fewglue_data[(task, split)]:
            mask = tokenizer.mask_token
            text = example["premise"] + "?" + mask + ". " + example["hypothesis"]
            row = full.encode(example)
            assert row["text"] == text == full.render(example)
            ids = row["input_ids"]
            assert ids == tokenizer(text)["input_ids"]
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
            assert ids.count(tokenizer.mask_token_id) == 1
            assert ids[row["mask_index"]] == tokenizer.mask_token_id
            got_before, got_after, before, after = _pattern_parts(full, tokenizer, row, example)
            assert (got_before, got_after) == (before, after)
            assert row["label"] == example["label"]

            cut = short.encode(example)  # truncation: premise words go, mask and hypothesis stay
            assert len(cut["input_ids"]) <= 64
            assert cut["input_ids"].count(tokenizer.mask_token_id) == 1
            premise = cut["text"][: cut["text"].rindex("?" + mask)]
            assert example["premise"].startswith(premise)
            assert cut["text"] == premise + "?" + mask + ". " + example["hypothesis"]
            got_before, got_after, _, after = _pattern_parts(short, tokenizer, cut, example)
            assert got_after == after
            if len(ids) <= 64:
                assert cut["input_ids"] == ids
            else:
                truncated += 1
                # the longest word prefix that fits: one more word would not
                longer = example["premise"][: len(premise) + 1 :]
                rest = example["premise"][len(longer) :].split(maxsplit=1)
                if rest:
                    grown = short.render(example, premise=longer + rest[0])
                    assert len(tokenizer(grown)["input_ids"]) > 64
    assert truncated > 10  # the long premises of both tasks were exercised


def test_boolq_pattern_keeps_the_question(tokenizers_):
    tokenizer = tokenizers_["bert"]
    example = {"passage": "a story " * 80 + "end", "question": "is it a film", "label": 1, "idx": 7}
    pattern = ClozePattern("boolq", tokenizer, max_length=40)
    row = pattern.encode(example)
    assert len(row["input_ids"]) <= 40
    assert row["text"].endswith(". Question: is it a film? Answer: [MASK].")
    assert ("a story " * 80 + "end").startswith(row["text"].split(". Question:")[0])
    assert row["label"] == 1
    assert pattern.label_token_ids == tokenizer.convert_tokens_to_ids(["no", "yes"])


def test_pattern_too_long_even_without_the_premise_is_an_error(tokenizers_):
    example = {"premise": "a film", "hypothesis": "the plot " * 50, "label": 0, "idx": 3}
    with pytest.raises(ValueError, match="example 3: even with the premise removed"):
        ClozePattern("rte", tokenizers_["bert"], max_length=20).encode(example)


# ----------------------------------------------------------------------------- verbalizers
@pytest.mark.parametrize(
    ("kind", "tokens"), [("bert", "yes"), ("albert", "▁yes"), ("roberta", "Ġyes")]
)
def test_verbalizers_are_word_initial_single_tokens(kind, tokens, tokenizers_):
    tokenizer = tokenizers_[kind]
    pattern = ClozePattern("cb", tokenizer)
    names = tokenizer.convert_ids_to_tokens(pattern.label_token_ids)
    prefix = tokens[:-3]
    assert names == [prefix + w for w in ("yes", "no", "maybe")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_verbalizer_that_is_not_one_token_is_an_error(kind, tokenizers_):
    from tinyattn.fewglue import verbalizer_ids

    tokenizer = type(tokenizers_[kind]).__name__  # ...TokenizerFast; ...Tokenizer on transformers 5
    message = rf"verbalizer 'qzxv' is not a single token .*\({tokenizer}\): ' qzxv' becomes"
    with pytest.raises(VerbalizerError, match=message):
        verbalizer_ids(tokenizers_[kind], ["yes", "qzxv"])
    with pytest.raises(VerbalizerError, match="share a token"):
        verbalizer_ids(tokenizers_[kind], ["yes", "yes"])


# ----------------------------------------------------------------------------- model and losses
def _batch(pattern, examples):
    return collate([pattern.encode(e) for e in examples], pattern.pad_token_id)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_at_the_mask_and_losses_match_a_hand_computation(kind, tokenizers_):
    tokenizer = tokenizers_[kind]
    pattern = ClozePattern("cb", tokenizer, max_length=64)
    examples = toy_examples(3)
    examples[2]["label"] = 2
    batch = _batch(pattern, examples)
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # rows are padded differently
    mlm = tiny_mlm(kind, len(tokenizer)).eval()
    model = build_cloze_model("tinyattn", mlm, pattern).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        vocab = model(**inputs, mask_index=batch["mask_index"])
        found = model(**inputs)  # mask positions found from the ids
        full = mlm(**inputs).logits  # the library's own MLM forward, adapters hooked in
    rows = torch.arange(3)
    assert torch.allclose(vocab, full[rows, batch["mask_index"]], atol=1e-5)
    assert torch.equal(vocab, found)
    ids = torch.tensor(pattern.label_token_ids)
    assert torch.equal(model.verbalizer_logits(vocab), vocab[:, ids])
    logits, labels = predict(model, [pattern.encode(e) for e in examples], pattern.pad_token_id, 2)
    assert torch.allclose(logits, vocab[:, ids], atol=1e-5) and labels.tolist() == [0, 1, 2]

    y = batch["labels"]
    targets = torch.full_like(batch["input_ids"], -100)
    targets[rows, batch["mask_index"]] = ids[y]
    with torch.no_grad():
        library = mlm(**inputs, labels=targets).loss  # HF's MLM loss, labels -100 but at the mask
    by_hand = -F.log_softmax(vocab, -1)[rows, ids[y]].mean()
    assert torch.allclose(cloze_loss(vocab, y, ids, "mlm"), library, atol=1e-5)
    assert torch.allclose(cloze_loss(vocab, y, ids), by_hand, atol=1e-6)
    pet = -F.log_softmax(vocab[:, ids], -1)[rows, y].mean()
    assert torch.allclose(cloze_loss(vocab, y, ids, "verbalizer"), pet, atol=1e-6)
    with pytest.raises(ValueError, match="unknown cloze loss"):
        cloze_loss(vocab, y, ids, "hinge")


# ----------------------------------------------------------------------------- methods inside
METHOD_PARAMS = {
    "tinyattn": lambda n: n.startswith(f"{PREFIX}."),
    "lora": lambda n: "lora_" in n,
    "ia3": lambda n: "ia3_" in n,
    "bitfit": lambda n: n.startswith("encoder.") and n.endswith("bias"),
    "pfeiffer": lambda n: ".adapters." in n,
    "full_ft": lambda n: True,
    "head_only": lambda n: False,
}


def _authors_extra(name: str) -> bool:
    head = name.startswith("head.mlm_head.") and not name.endswith("decoder.weight")
    return head or "embedding_hidden_mapping_in" in name


@pytest.mark.parametrize("variant", ("authors", "adapter_only"))
@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
@pytest.mark.parametrize("kind", KINDS)
def test_methods_inside_the_masked_lm_train_only_the_intended_parameters(
    kind, method, variant, tokenizers_
):
    tokenizer = tokenizers_[kind]
    pattern = ClozePattern("rte", tokenizer, max_length=64)
    mlm = tiny_mlm(kind, len(tokenizer))
    if method == "head_only" and variant == "adapter_only":
        with pytest.raises(ValueError, match="leaves nothing to train"):
            build_cloze_model(method, mlm, pattern, variant=variant)
        return
    model = build_cloze_model(method, mlm, pattern, variant=variant)
    assert isinstance(model.base_encoder, type(mlm.base_model))
    names = dict(model.named_parameters())
    wanted = {
        n for n in names if METHOD_PARAMS[method](n) or (variant == "authors" and _authors_extra(n))
    }
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert trainable == wanted, sorted(trainable ^ wanted)[:5]
    assert any("embedding_hidden_mapping_in.weight" in n for n in wanted) == (
        kind == "albert" and (variant == "authors" or method == "full_ft")
    )

    counts = trainable_counts(model)
    method_count = sum(p.numel() for n, p in names.items() if METHOD_PARAMS[method](n))
    hidden, emb, vocab = 32, (16 if kind == "albert" else 32), len(tokenizer)
    extra = hidden * emb + emb + 2 * emb + vocab  # head dense, LayerNorm, output bias
    extra += emb * hidden + hidden if kind == "albert" else 0  # embedding_hidden_mapping_in
    if method == "bitfit" and kind == "albert":  # BitFit trains the projection's bias already
        extra -= hidden
    if method == "full_ft":
        extra = 0
    assert counts["method"] == counts["adapter_only"] == method_count
    assert counts["authors_extra"] == extra
    assert counts["authors"] == method_count + extra
    assert counts["trainable"] == counts[variant]
    if method == "tinyattn":
        assert method_count == expected_adapter_params(model.base_encoder, TinyAttnConfig())
    if method == "lora" and variant == "adapter_only":  # peft counts what is trainable inside it
        assert method_count == model.encoder.get_nb_trainable_parameters()[0]

    model.train()
    assert model.head.training
    assert model.encoder.training == (method == "full_ft")


@pytest.mark.parametrize("method", ("tinyattn", "lora", "pfeiffer"))
@pytest.mark.parametrize("kind", KINDS)
def test_the_method_is_in_the_masked_lm_path(kind, method, tokenizers_):
    tokenizer = tokenizers_[kind]
    pattern = ClozePattern("rte", tokenizer, max_length=64)
    model = build_cloze_model(method, tiny_mlm(kind, len(tokenizer)), pattern).eval()
    batch = _batch(pattern, toy_examples(2))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "mask_index")}
    with torch.no_grad():
        before = model(**inputs)
        for name, param in model.named_parameters():
            if METHOD_PARAMS[method](name):
                param.add_(0.5 * torch.randn_like(param))
        after = model(**inputs)
    assert not torch.allclose(before, after, atol=1e-4)


def test_unsupported_backbones_are_refused(tmp_path):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2)
    ).save_pretrained(tmp_path / "distil")
    with pytest.raises(ValueError, match="'distilbert' model; the cloze protocol supports"):
        load_masked_lm(str(tmp_path / "distil"))
    with pytest.raises(ValueError, match="minilm-l6.*no pretrained masked-LM head"):
        load_masked_lm("minilm-l6")  # the packaged backbone's checkpoint has no MLM head


def test_a_saved_masked_lm_loads_with_its_head(tmp_path):
    mlm = tiny_mlm("albert", 90)
    mlm.save_pretrained(tmp_path / "albert")
    loaded = load_masked_lm(str(tmp_path / "albert"))
    assert torch.equal(loaded.predictions.dense.weight, mlm.predictions.dense.weight)
    assert loaded.config.tinyattn_backbone == str(tmp_path / "albert")
    assert isinstance(load_masked_lm(str(tmp_path / "albert"), weights=False), AlbertForMaskedLM)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ("bert", "albert"))
def test_training_fits_a_toy_task(kind, tmp_path):
    """Tiny attention (authors' variant, whole-vocabulary loss, batch 1) learns yes/no from one word.

    The random backbone gets weights of std 0.2: at BERT's 0.02 a 2-layer random network maps every
    input to nearly the same hidden state, and what is tested is the training path, not the backbone.
    """
    tokenizer = make_tokenizer(kind, [TOY], tmp_path)
    pattern = ClozePattern("rte", tokenizer, max_length=64)
    examples = toy_examples(8)
    model = build_cloze_model("tinyattn", tiny_mlm(kind, len(tokenizer), init=0.2), pattern)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = ClozeTrainConfig(learning_rate=1e-2, epochs=12, weight_decay=0.0, seed=3)
    record = train_cloze(model, pattern, examples, {"toy": examples}, config)
    assert record["final"]["metrics"]["toy"]["accuracy"] == 1.0
    losses = [e["train_loss"] for e in record["evaluations"]]
    assert len(losses) == 12 and losses[-1] < 0.25 * losses[0]
    assert record["steps"] == 12 * 8 and record["kept_weights"] == "last epoch"
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], value) for n, value in frozen.items())
    assert all(not torch.equal(params[n], value) for n, value in start.items())
    assert record["trainable"]["trainable"] == record["trainable"]["authors"]


def test_selection_keeps_the_best_epoch_and_checks_its_set(tokenizers_):
    tokenizer = tokenizers_["bert"]
    pattern = ClozePattern("rte", tokenizer, max_length=64)
    examples = toy_examples(4)
    model = build_cloze_model("lora", tiny_mlm("bert", len(tokenizer)), pattern)
    with pytest.raises(ValueError, match="select_on='dev32' is not one of the eval sets"):
        train_cloze(
            model, pattern, examples, {"val": examples}, ClozeTrainConfig(select_on="dev32")
        )
    config = ClozeTrainConfig(epochs=3, select_on="dev32", loss="verbalizer", batch_size=2)
    record = train_cloze(model, pattern, examples, {"dev32": examples, "val": examples}, config)
    scores = [e["metrics"]["dev32"]["accuracy"] for e in record["evaluations"]]
    assert record["best"]["metrics"]["dev32"]["accuracy"] == max(scores)
    assert record["best"]["epoch"] == 1 + scores.index(max(scores))
    assert record["kept_weights"] == "best dev32 epoch" and record["steps"] == 6


def test_training_runs_through_the_shared_loop_and_accelerate(tokenizers_, monkeypatch):
    """``train_cloze`` has no loop of its own: it trains through ``train.fit``, whose Accelerator
    prepares the model, the optimiser and the schedule, and back-propagates and clips every step."""
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler

    calls, prepared = collections.Counter(), []

    def spy(name):
        original = getattr(Accelerator, name)

        def counted(self, *args, **kwargs):
            calls[name] += 1
            if name == "prepare":
                prepared.extend(args)
            return original(self, *args, **kwargs)

        return counted

    for name in ("prepare", "backward", "clip_grad_norm_"):
        monkeypatch.setattr(Accelerator, name, spy(name))
    tokenizer = tokenizers_["bert"]
    pattern = ClozePattern("rte", tokenizer, max_length=64)
    examples = toy_examples(4)
    model = build_cloze_model("tinyattn", tiny_mlm("bert", len(tokenizer)), pattern)
    config = ClozeTrainConfig(epochs=2, batch_size=2, decay_all=False)
    record = train_cloze(model, pattern, examples, {"toy": examples}, config)
    assert record["steps"] == 4 and calls["backward"] == calls["clip_grad_norm_"] == 4
    assert calls["prepare"] == 1 and prepared[0] is model
    assert isinstance(prepared[1], torch.optim.AdamW) and isinstance(prepared[2], LRScheduler)
    assert len(prepared[1].param_groups) == 2  # decay_all=False: train.decay_groups' two groups


def test_run_cloze_end_to_end_on_the_real_files(fewglue_data, tokenizers_):
    if fewglue_data is None:
        pytest.skip("no local FewGLUE data (set TINYATTN_DATA_DIR)")
    import os
    from pathlib import Path

    root = Path(os.environ.get("TINYATTN_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    tokenizer = tokenizers_["albert"]
    config = ClozeTrainConfig(epochs=1, eval_batch_size=64)
    model, record = run_cloze(
        "rte",
        tiny_mlm("albert", len(tokenizer)),
        "tinyattn",
        tokenizer=tokenizer,
        config=config,
        eval_splits=("val", "dev32"),
        data_dir=root,
        max_length=128,
    )
    assert isinstance(model, ClozeModel)
    assert record["train_examples"] == 32 and record["eval_examples"] == {"val": 277, "dev32": 32}
    assert record["steps"] == 32 and record["variant"] == "authors"
    # train: 19 not_entailment / 13 entailment -> majority "not_entailment"; val has 131 of them
    assert record["baselines"]["majority"]["accuracy"] == pytest.approx(131 / 277)
    assert record["baselines"]["random"]["accuracy"] == 0.5
    assert set(record["final"]["metrics"]) == {"val", "dev32"}


# ----------------------------------------------------------------------------- through experiment.run
def test_a_cloze_run_through_the_study_writes_an_ordinary_record(fewglue_data, tmp_path):
    """``RunParams(protocol="cloze")``: a saved masked LM (a folder, as a Hub id would be), the real
    FewGLUE files, and the record in the format every other run has (its id reproduces)."""
    if fewglue_data is None:
        pytest.skip("no local FewGLUE data (set TINYATTN_DATA_DIR)")
    import json
    import os
    from pathlib import Path

    from tinyattn.experiment import RunParams, run
    from tinyattn.records import read_record

    texts = [TOY] + [e["premise"] + " " + e["hypothesis"] for e in fewglue_data[("cb", "train")]]
    tokenizer = make_tokenizer("albert", texts, tmp_path)
    folder = tmp_path / "albert"
    tiny_mlm("albert", len(tokenizer), max_positions=256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    root = Path(os.environ.get("TINYATTN_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    params = RunParams(
        task="fewcb", method="tinyattn", backbone=str(folder), seed=5, epochs=2, batch_size=8,
        learning_rate=1e-3, scheduler="constant", weight_decay=0.02, max_length=128,
        protocol="cloze", protocol_options={"select_on": "dev32"}, data_dir=str(root),
        out_dir=str(tmp_path / "runs"), progress=False,
    )  # fmt: skip
    record, model = run(params)
    assert isinstance(model, ClozeModel) and model.variant == "authors"
    saved = read_record(tmp_path / "runs" / f"{params.run_id}.json")
    assert saved["status"] == "done" and saved["protocol"] == "cloze"
    assert RunParams.from_dict(saved["params"]).run_id == saved["run_id"] == params.run_id
    assert saved["select_metric"] == "combined" and saved["eval_split"] == "val"
    assert saved["train_examples"] == 32 and saved["eval_examples"] == 56
    assert [e["epoch"] for e in saved["evaluations"]] == [1, 2] and saved["steps"] == 8
    for entry in saved["evaluations"]:
        assert entry["metrics"] == entry["metrics_by_split"]["val"]
        assert set(entry["metrics"]) == {"accuracy", "f1_macro", "combined"}
    dev32 = [e["metrics_by_split"]["dev32"]["combined"] for e in saved["evaluations"]]
    assert saved["best"] in saved["evaluations"] and saved["kept_weights"] == "best dev32 epoch"
    assert saved["best"]["metrics_by_split"]["dev32"]["combined"] == max(dev32)
    assert saved["final"] == saved["evaluations"][-1]
    counts = saved["params_count"]
    assert counts["trainable_params"] == counts["cloze"]["authors"] > counts["cloze"]["method"] > 0
    assert saved["baselines"]["majority"]["accuracy"] == pytest.approx(23 / 56)  # entailment
    assert saved["config"]["weight_decay"] == 0.02 and saved["config"]["loss"] == "mlm"
    json.dumps(saved)  # the record is plain JSON
    from tinyattn.study.rows import load_records

    row = load_records(tmp_path / "runs").iloc[0]  # the tables read it like any other run
    assert row["score"] == pytest.approx(100 * saved["best"]["metrics"]["combined"])
    assert row["task"] == "fewcb" and row["metric"] == "combined" and row["epochs"] == 2
