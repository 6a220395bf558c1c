"""Tokenizer vocabularies for the tiny checkpoints, trained on `tiny_corpus.txt`, one style per family.

Every trainer returns the same vocabulary on every run: where the `tokenizers` trainers order
their output by hash, the result is put in a canonical order (see `_canonical_scores` and
`train_wordpiece`), so that rebuilt checkpoints are byte-identical.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")

_ASCII_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation)
"""Characters a tokenizer knows even where the corpus lacks them, as the real vocabularies do."""


def _corpus() -> list[str]:
    return [line.strip() for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _trained_model(tokenizer: Tokenizer, trainer: trainers.Trainer) -> dict[str, Any]:
    """Train `tokenizer` on the corpus and return its serialised model (vocab, merges)."""
    tokenizer.train_from_iterator(_corpus(), trainer)
    return json.loads(tokenizer.to_str())["model"]


def train_byte_level_bpe(vocab_size: int, special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2/BART byte-level BPE: a 256-byte alphabet, `Ġ` marks a leading space."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model = _trained_model(tokenizer, trainer)
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def train_unigram(vocab_size: int, special_tokens: list[str], unk_token: str) -> list[tuple[str, float]]:
    """SentencePiece-style unigram pieces over `▁`-prefixed words, as XLM-RoBERTa has them."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        unk_token=unk_token,
        initial_alphabet=_ASCII_ALPHABET,
        show_progress=False,
    )
    learned = [
        (piece, score) for piece, score in _trained_model(tokenizer, trainer)["vocab"] if piece not in special_tokens
    ]
    return [(token, 0.0) for token in special_tokens] + _canonical_scores(learned)


def _canonical_scores(pieces: list[tuple[str, float]], tolerance: float = 1e-3) -> list[tuple[str, float]]:
    """Unigram pieces best first, the same on every run.

    The trainer's scores wobble in their last bits from run to run (hash-ordered sums), and the
    characters it appends last get evenly spaced made-up scores in hash order. Runs of scores
    closer than `tolerance` form a group whose (rounded) scores go to its pieces in sorted order.
    """
    ordered = sorted(pieces, key=lambda item: -item[1])
    groups = [[ordered[0]]]
    for previous, item in itertools.pairwise(ordered):
        if previous[1] - item[1] < tolerance:
            groups[-1].append(item)
        else:
            groups.append([item])
    canonical = []
    for group in groups:
        scores = sorted((round(score, 6) for _, score in group), reverse=True)
        canonical += zip(sorted(piece for piece, _ in group), scores, strict=True)
    return canonical


def train_gemma_bpe(vocab_size: int, special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Gemma-style BPE: spaces become `▁`, byte-fallback pieces `<0x00>`…`<0xFF>`; lowercased as in SigLIP2."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens + byte_tokens, show_progress=False
    )
    model = _trained_model(tokenizer, trainer)
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def train_wordpiece(vocab_size: int, special_tokens: list[str]) -> dict[str, int]:
    """BERT uncased WordPiece vocabulary: word-initial pieces and `##` continuation pieces.

    `tokenizers`' WordPieceTrainer numbers its `##` pieces in hash order, so its vocabulary changes
    from run to run. The pieces are learned instead with the (deterministic) BPE trainer on words
    marked with a leading `▁`: a piece with the mark starts a word, one without continues it.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=[char for char in _ASCII_ALPHABET if not char.isupper()],
        show_progress=False,
    )
    learned = [piece for piece in _trained_model(tokenizer, trainer)["vocab"] if piece not in special_tokens]
    alphabet = [piece for piece in learned if len(piece) == 1 and piece != "▁"]
    pieces = [*alphabet, *(f"##{char}" for char in alphabet)]
    pieces += [piece[1:] if piece.startswith("▁") else f"##{piece}" for piece in learned if len(piece) > 1]
    return {token: index for index, token in enumerate(dict.fromkeys([*special_tokens, *pieces]))}
