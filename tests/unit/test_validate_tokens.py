"""Token lengths (TokenCounter: template skeletons, unit sums, the fallbacks) and the newer preference checks:
prompt_in_response, eval_overlap, double_bos, swapped pairs named; the tiny model's tokenizer alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.runtime.tiny_model import CHAT_TEMPLATE, corpus, train_tokenizer
from alignflow.tasks.validation.stage import validate_file, validate_pairs
from alignflow.tasks.validation.tokens import TokenCounter

TEXTS = [
    "Why is the sky blue?",
    "Rayleigh scattering: shorter wavelengths scatter more, 1234 times... or so.",
    "Two  spaces, a tab\there, and\n an indented line\n\n  - item one\n  - item two",
    " leading space and trailing spaces  ",
    "Ünïcödé: naïve café, 東京, emoji 🙂 and math ∑x².",
    "code:\n```python\ndef f(x):\n    return x  # four spaces\n```",
    "",
    "x",
]


def lenient(**kw) -> ValidationConfig:
    return ValidationConfig(**{"min_pairs": 1, "max_rejected_fraction": 1.0, **kw})


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tokenizer(corpus(), 512)


def _tokenizer(pre_tokenizer, normalizer=None, template: str = CHAT_TEMPLATE):
    """A small BPE tokenizer with a given pre-tokenizer (the shapes real models ship)."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    if pre_tokenizer is not None:
        bpe.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        bpe.normalizer = normalizer
    bpe.decoder = decoders.ByteLevel()
    special = ["<unk>", "<|bos|>", "<|end|>", "<|pad|>"]
    bpe.train_from_iterator([*corpus(), *TEXTS], trainers.BpeTrainer(vocab_size=600, special_tokens=special))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>")
    tok.chat_template = template
    return tok


def llama3_style():
    from tokenizers import Regex, pre_tokenizers

    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )
    return _tokenizer(
        pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), "isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
        )
    )


def sentencepiece_style():
    """No pre-tokenization at all (Llama 2 / Mistral conversions): the unit sums do not hold, whole texts do."""
    from tokenizers import normalizers

    return _tokenizer(None, normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]))


def exact(tokenizer, conversations: list[list[dict]]) -> np.ndarray:
    return np.array(
        [len(x) for x in tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True)["input_ids"]]
    )


def rows(n: int = 300) -> list[tuple[str, str, str]]:
    texts = [*TEXTS, *(t.split("<|end|>")[0] for t in corpus())]
    return [(texts[i % len(texts)], texts[(3 * i + 1) % len(texts)], texts[(7 * i + 2) % len(texts)]) for i in range(n)]


def check_exact(tokenizer, expect_additive: bool) -> TokenCounter:
    counter = TokenCounter(tokenizer)
    data = rows()
    counts, _ = counter.measure_strings(*map(list, zip(*data, strict=True)))
    convs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": side}] for p, c, r in data for side in (c, r)
    ]
    assert np.array_equal(counts.reshape(-1), exact(tokenizer, convs))
    assert counter.additive is expect_additive
    return counter


def test_counts_are_exact_for_the_tiny_tokenizer(tiny_tokenizer):
    counter = check_exact(tiny_tokenizer, expect_additive=True)
    assert counter.stats["whole"] > 0  # the texts with runs of whitespace were tokenized whole
    assert counter.skeletons[("user", "assistant")] is not None  # no Jinja per row


def test_counts_are_exact_for_a_llama3_style_pre_tokenizer():
    check_exact(llama3_style(), expect_additive=True)


def test_counts_fall_back_to_whole_texts_without_pre_tokenization():
    check_exact(sentencepiece_style(), expect_additive=False)


def test_templates_that_touch_the_content_are_rendered_by_jinja(tiny_tokenizer):
    tok = _tokenizer(
        tiny_tokenizer.backend_tokenizer.pre_tokenizer,
        template="{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}<|end|>{% endfor %}",
    )
    counter = check_exact(tok, expect_additive=True)
    assert not counter.opaque and counter.stats["jinja_rows"] > 0


def test_conversations_of_several_shapes(tiny_tokenizer):
    counter = TokenCounter(tiny_tokenizer)
    system, user = {"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXTS[0]}
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    conversations = [
        ([user], [{"role": "assistant", "content": t}], [{"role": "assistant", "content": "No."}]) for t in TEXTS
    ] + [
        ([system, *history, user], [{"role": "assistant", "content": t}], [{"role": "assistant", "content": "?"}])
        for t in TEXTS
    ]
    counts, double = counter.measure(conversations)
    flat = [p + side for p, c, r in conversations for side in (c, r)]
    assert np.array_equal(counts.reshape(-1), exact(tiny_tokenizer, flat)) and not double.any()
    assert len(counter.skeletons) == 2


# ---- the checks ---------------------------------------------------------------------------------------------


def test_double_bos(tiny_tokenizer):
    tok = _tokenizer(
        tiny_tokenizer.backend_tokenizer.pre_tokenizer,
        template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}",
    )
    frame = pd.DataFrame(
        [
            {"prompt": "<|bos|>A prompt that starts with a BOS.", "chosen": "Yes.", "rejected": "No."},
            {"prompt": "A clean prompt.", "chosen": "Yes.", "rejected": "No."},
        ]
    )
    _, quarantined, report = validate_pairs(frame, lenient(), tok)
    assert quarantined["row"].tolist() == [0] and quarantined["reasons"].tolist() == [["double_bos"]]
    _, quarantined, _ = validate_pairs(frame, lenient(), tiny_tokenizer)  # its template adds no BOS
    assert quarantined.empty
    _, _, report = validate_pairs(frame, lenient())
    assert report.checks["double_bos"].skipped == "no tokenizer (token lengths not measured)"


def test_prompt_in_response():
    frame = pd.DataFrame(
        [
            {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
            {
                "prompt": "What is the capital of France?",
                "chosen": "WHAT is the capital  of france? It is Paris.",
                "rejected": "Lyon.",
            },
            {"prompt": "Say hi.", "chosen": "Say hi. Hi!", "rejected": "No."},  # too short to tell
            {
                "prompt": "Name the largest planet we know",
                "chosen": "Jupiter.",
                "rejected": "We know: name the largest planet we know",
            },
        ]
    )
    _, quarantined, report = validate_pairs(frame, lenient())
    assert dict(zip(quarantined["row"], quarantined["reasons"], strict=True)) == {
        1: ["prompt_in_response"],
        3: ["prompt_in_response"],
    }


def test_eval_overlap_with_the_evaluation_set():
    from alignflow.tasks.generation.prompts import load_prompts

    evaluation = [r["prompt"] for r in load_prompts("builtin:eval")]
    frame = pd.DataFrame(
        [
            {"prompt": evaluation[0].upper() + "  ", "chosen": "An answer.", "rejected": "Another one."},
            {"prompt": "A prompt of our own, not in the set.", "chosen": "An answer.", "rejected": "Another one."},
        ]
    )
    _, quarantined, report = validate_pairs(frame, lenient(), eval_prompts=evaluation)
    assert quarantined["row"].tolist() == [0] and quarantined["reasons"].tolist() == [["eval_overlap"]]
    conversational = pd.DataFrame(
        [
            {
                "prompt": [{"role": "user", "content": "Something else entirely."}],
                "chosen": [{"role": "assistant", "content": "A."}],
                "rejected": [{"role": "assistant", "content": "B."}],
            },
            {
                "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": evaluation[5]}],
                "chosen": [{"role": "assistant", "content": "A."}],
                "rejected": [{"role": "assistant", "content": "B."}],
            },
        ]
    )
    _, quarantined, _ = validate_pairs(conversational, lenient(), eval_prompts=evaluation)
    assert quarantined["reasons"].tolist() == [["eval_overlap"]]  # the last user turn is what is compared
    _, quarantined, report = validate_pairs(frame, lenient())
    assert quarantined.empty and report.checks["eval_overlap"].skipped == "no evaluation prompt set given"


def test_swapped_pairs_are_named_in_the_quarantine_and_the_gate(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows.append({"prompt": "p2", "chosen": "bad 2", "rejected": "good 2"})
    rows.append(dict(rows[4]))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(path, lenient(), tmp_path / "o")
    entries = [json.loads(x) for x in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    assert [(e["row"], e["reasons"], e.get("reverses"), e.get("duplicate_of")) for e in entries] == [
        (6, ["contradiction"], 2, None),
        (7, ["duplicate_pair"], None, 4),
    ]
    from alignflow.tasks.validation.report import describe

    assert (
        describe("contradiction", report.checks["contradiction"])
        == "contradiction: 1 swapped pairs (row 6 reverses row 2)"
    )


# ---- the tiny model's tokenizer alone -----------------------------------------------------------------------


def test_tiny_models_tokenizer_is_built_alone(tmp_path):
    from alignflow.conf.training import TinyModelConfig
    from alignflow.tasks.validation.tokens import load_tokenizer

    tiny = TinyModelConfig(vocab_size=512)
    tokenizer = load_tokenizer("builtin:tiny-llama", tiny, tmp_path / "models")
    (folder,) = (tmp_path / "models").iterdir()
    assert folder.name.startswith("tiny-llama-tokenizer-")
    assert not any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir())  # no model
    reference = train_tokenizer(corpus(), 512)  # what build_tiny_model trains: the same vocabulary and merges
    assert tokenizer.get_vocab() == reference.get_vocab() and tokenizer.chat_template == reference.chat_template
    assert load_tokenizer("builtin:tiny-llama", tiny, tmp_path / "models").get_vocab() == tokenizer.get_vocab()
