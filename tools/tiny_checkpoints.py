"""Tiny, randomly initialised checkpoints of the served architectures, built offline.

Each checkpoint is a native transformers model with a complete processor, written with
`save_pretrained`, so it loads with the same `from_pretrained` code as the hub weights:

    AutoProcessor + AutoModelForImageTextToText   florence-2-large, florence-2-base, kosmos-2, blip
    AutoProcessor + AutoModel                     siglip2

Configurations start from the published configs (`tools/real_configs`, see its SOURCES.md)
with the sizes shrunk; what is not a size (activations, norms, token layout, the kind of image
preprocessing, generation settings) is kept. Tokenizers are trained with the `tokenizers` library
on `tiny_corpus.txt`, one per family in the style of the real one. The output text is
meaningless; shapes, token layouts and post-processing are real.

Builds are deterministic (fixed seeds, canonically ordered vocabularies: rebuilding gives identical
bytes) and idempotent: each checkpoint directory holds a `tiny_checkpoint.json` marker with a
fingerprint of everything that went into it (this file, the corpus, the published configs, the
settings, library versions), and a complete directory with a matching marker is skipped. A build
goes to a temporary directory next to the target and is renamed into place when complete.

    python -m tools.tiny_checkpoints --out checkpoints/tiny
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BartTokenizer,
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GenerationConfig,
    Kosmos2Config,
    Kosmos2ForConditionalGeneration,
    Kosmos2Processor,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    XLMRobertaTokenizer,
)

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = Path("checkpoints/tiny")
DEFAULT_REAL_CONFIGS = Path(__file__).resolve().parent / "real_configs"
REAL_CONFIGS_ENV = "TINY_REAL_CONFIGS"
CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")
MARKER_NAME = "tiny_checkpoint.json"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

_META_KEYS = frozenset(
    {
        "_comment",
        "_commit_hash",
        "_from_model_config",
        "_name_or_path",
        "_valid_processor_keys",
        "architectures",
        "auto_map",
        "dtype",
        "image_processor_type",
        "processor_class",
        "torch_dtype",
        "transformers_version",
    }
)
"""Keys of the published files that say where a file came from, not what the model is."""

_ASCII_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation)
"""Characters a tokenizer knows even where the corpus lacks them, as the real vocabularies do."""

# fmt: off
FLORENCE2_TASK_TOKENS = [
    "<od>", "</od>", "<ocr>", "</ocr>",
    *(f"<loc_{i}>" for i in range(1000)),
    "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
    "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
    "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
]
"""The special tokens the original Florence-2 processor adds after BART's vocabulary, in its order."""

FLORENCE2_BANNED_GROUNDING_TOKENS = [
    "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers",
    "they", "them", "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "its",
    "myself", "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves",
    "this", "that", "these", "those", "who", "whom", "whose", "which", "what", "all", "another",
    "any", "anybody", "anyone", "anything", "each", "everybody", "everyone", "everything", "few",
    "many", "nobody", "none", "several", "some", "somebody", "someone", "something", "each other",
    "one another", "the image", "image", "images", "the", "a", "an", "a group", "other objects",
    "lots", "a set",
]
"""Phrases phrase grounding drops, from transformers' Florence-2 conversion script (duplicates removed)."""
# fmt: on

FLORENCE2_POST_PROCESSOR_CONFIG: dict[str, dict[str, Any]] = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {"banned_grounding_tokens": FLORENCE2_BANNED_GROUNDING_TOKENS},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}
"""One entry per parse type: `Florence2Processor.post_process_generation` rejects a task whose type is missing."""


@dataclass(frozen=True)
class TinySpec:
    """One tiny checkpoint: its directory name, the builder of its family and the settings it is built with."""

    name: str
    builder: Callable[[Path, Path, Mapping[str, Any]], None]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class BuildResult:
    """What `build_checkpoint` did for one checkpoint: `built` is False when it was already up to date."""

    name: str
    path: Path
    built: bool
    seconds: float
    size_bytes: int


# Tokenizer training ---------------------------------------------------------------------------


def _corpus() -> list[str]:
    return [line.strip() for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _trained_model(tokenizer: Tokenizer, trainer: trainers.Trainer) -> dict[str, Any]:
    """Train `tokenizer` on the corpus and return its serialised model (vocab, merges)."""
    tokenizer.train_from_iterator(_corpus(), trainer)
    return json.loads(tokenizer.to_str())["model"]


def _train_byte_level_bpe(vocab_size: int, special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
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


def _train_unigram(vocab_size: int, special_tokens: list[str], unk_token: str) -> list[tuple[str, float]]:
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


def _train_gemma_bpe(vocab_size: int, special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
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


def _train_wordpiece(vocab_size: int, special_tokens: list[str]) -> dict[str, int]:
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


# Published configs ----------------------------------------------------------------------------


def _published(real_configs: Path, relative_path: str) -> dict[str, Any]:
    """A published config file without its provenance keys (also inside its sub-configs)."""
    return _without_meta(json.loads((real_configs / relative_path).read_text(encoding="utf-8")))


def _without_meta(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _without_meta(value) if isinstance(value, dict) and key.endswith("_config") else value
        for key, value in data.items()
        if key not in _META_KEYS
    }


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied recursively: mappings merge, other values replace."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _generation_config(real_configs: Path, sources: Iterable[str]) -> GenerationConfig:
    """The published generation configs, later files overriding earlier ones."""
    values: dict[str, Any] = {}
    for relative_path in sources:
        values.update(_published(real_configs, relative_path))
    return GenerationConfig(**values)


def _random_model(model_class: type[PreTrainedModel], config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return model_class(config).eval()


def _save(directory: Path, model: PreTrainedModel, processor: ProcessorMixin) -> None:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


# One builder per family -----------------------------------------------------------------------


def _build_florence2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """Florence-2, native layout: DaViT vision tower + BART; byte-level BPE plus the task and `<loc_*>` tokens."""
    sources, text = settings["sources"], settings["text"]
    vocab, merges = _train_byte_level_bpe(settings["bpe_vocab_size"], ["<s>", "<pad>", "</s>", "<unk>"])
    for token in ["<mask>", *FLORENCE2_TASK_TOKENS, "<image>"]:
        vocab[token] = len(vocab)
    tokenizer = BartTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens=FLORENCE2_TASK_TOKENS,
        image_token="<image>",
        model_max_length=text["max_position_embeddings"],
    )

    image_size = settings["image_size"]
    grid = image_size // 32  # DaViT's stages downsample by 4 * 2 * 2 * 2
    preprocessor = _merged(
        _published(real_configs, sources["preprocessor"]),
        {
            "size": {"height": image_size, "width": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "image_seq_length": grid * grid + 1,  # the spatial tokens and one pooled token
        },
    )
    processor = Florence2Processor(
        image_processor=CLIPImageProcessorPil(**preprocessor),
        tokenizer=tokenizer,
        post_processor_config=FLORENCE2_POST_PROCESSOR_CONFIG,
    )

    overrides = {
        "dtype": "float32",
        "image_token_id": tokenizer.image_token_id,
        # BartConfig reads the published `num_hidden_layers` as `encoder_layers`: set both.
        "text_config": {**text, "num_hidden_layers": text["encoder_layers"], "vocab_size": len(tokenizer)},
        "vision_config": {**settings["vision"], "projection_dim": text["d_model"]},
    }
    config = Florence2Config.from_dict(_merged(_published(real_configs, sources["config"]), overrides))
    model = _random_model(Florence2ForConditionalGeneration, config, settings["seed"])
    model.generation_config = _generation_config(real_configs, sources["generation"])
    _save(directory, model, processor)


def _build_kosmos2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """Kosmos-2: CLIP ViT + latent-query resampler + decoder LM; XLM-R style unigram tokenizer."""
    sources, text = settings["sources"], settings["text"]
    pieces = _train_unigram(settings["unigram_vocab_size"], ["<s>", "<pad>", "</s>", "<unk>"], "<unk>")
    tokenizer = XLMRobertaTokenizer(vocab=[*pieces, ("<mask>", 0.0)], model_max_length=text["max_position_embeddings"])

    image_size = settings["image_size"]
    preprocessor = _merged(
        _published(real_configs, sources["preprocessor"]),
        {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}},
    )
    # The processor adds <image>, <grounding>, <phrase>, <object>, … and <patch_index_0000>…<patch_index_1023>.
    processor = Kosmos2Processor(CLIPImageProcessorPil(**preprocessor), tokenizer)

    overrides = {
        "dtype": "float32",
        "latent_query_num": processor.num_image_tokens,
        "text_config": {**text, "vocab_size": len(tokenizer)},
        "vision_config": {**settings["vision"], "image_size": image_size},
    }
    config = Kosmos2Config.from_dict(_merged(_published(real_configs, sources["config"]), overrides))
    model = _random_model(Kosmos2ForConditionalGeneration, config, settings["seed"])
    model.generation_config = _generation_config(real_configs, sources["generation"])
    _save(directory, model, processor)


def _build_siglip2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """SigLIP2 naflex: ViT over variable patch grids + text tower; lowercasing Gemma-style BPE."""
    sources, text = settings["sources"], settings["text"]
    vocab, merges = _train_gemma_bpe(settings["bpe_vocab_size"], ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    # Set up as transformers' SigLIP2 conversion sets up Gemma's tokenizer: EOS appended, no BOS,
    # right padding (to the 64 positions the text tower has), no attention mask.
    tokenizer = Siglip2Tokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_input_names=["input_ids"],
        model_max_length=text["max_position_embeddings"],
    )

    preprocessor = _merged(
        _published(real_configs, sources["preprocessor"]), {"max_num_patches": settings["max_num_patches"]}
    )
    processor = Siglip2Processor(image_processor=Siglip2ImageProcessorPil(**preprocessor), tokenizer=tokenizer)

    token_ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    overrides = {
        "dtype": "float32",
        "text_config": {**text, **token_ids},
        "vision_config": {**settings["vision"], "patch_size": preprocessor["patch_size"]},
    }
    config = Siglip2Config.from_dict(_merged(_published(real_configs, sources["config"]), overrides))
    _save(directory, _random_model(Siglip2Model, config, settings["seed"]), processor)


def _build_blip(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """BLIP captioning: ViT + BERT decoder with cross-attention; uncased WordPiece with BLIP's [DEC] BOS."""
    sources, text, vision = settings["sources"], settings["text"], settings["vision"]
    vocab = _train_wordpiece(settings["wordpiece_vocab_size"], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # BLIP appends [DEC] (the decoder's BOS) and [ENC] to bert-base-uncased's vocabulary.
    tokenizer = BertTokenizer(
        vocab=vocab,
        bos_token="[DEC]",
        extra_special_tokens=["[ENC]"],
        model_max_length=text["max_position_embeddings"],
    )

    image_size = settings["image_size"]
    preprocessor = _merged(
        _published(real_configs, sources["preprocessor"]), {"size": {"height": image_size, "width": image_size}}
    )
    processor = BlipProcessor(BlipImageProcessorPil(**preprocessor), tokenizer)

    projection_dim = settings["projection_dim"]
    token_ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        # BLIP's generate() stops at sep_token_id; the published eos (2) is an unused BERT id.
        "eos_token_id": tokenizer.sep_token_id,
    }
    overrides = {
        "dtype": "float32",
        "projection_dim": projection_dim,
        "image_text_hidden_size": projection_dim,
        "text_config": {**text, **token_ids, "encoder_hidden_size": vision["hidden_size"]},
        "vision_config": {**vision, "image_size": image_size, "projection_dim": projection_dim},
    }
    config = BlipConfig.from_dict(_merged(_published(real_configs, sources["config"]), overrides))
    _save(directory, _random_model(BlipForConditionalGeneration, config, settings["seed"]), processor)


_TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_FLORENCE2_BASE_TEXT = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "max_position_embeddings": 1024,
}

CHECKPOINTS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in (
        TinySpec(
            "florence-2-large",
            _build_florence2,
            {
                "seed": 1,
                "sources": {
                    "config": "florence-community--Florence-2-large/config.assembled.json",
                    "preprocessor": "microsoft--Florence-2-large/preprocessor_config.json",
                    "generation": [
                        "florence-community--Florence-2-base/generation_config.json",
                        "microsoft--Florence-2-large/generation_config.json",
                    ],
                },
                "bpe_vocab_size": 1000,
                "image_size": 128,
                "text": {
                    **_FLORENCE2_BASE_TEXT,
                    "d_model": 48,
                    "encoder_layers": 3,
                    "decoder_layers": 3,
                    "encoder_ffn_dim": 192,
                    "decoder_ffn_dim": 192,
                },
                "vision": {
                    "depths": [1, 1, 2, 1],
                    "embed_dim": [12, 24, 48, 96],
                    "num_heads": [1, 2, 4, 8],
                    "num_groups": [1, 2, 4, 8],
                    "window_size": 4,
                },
            },
        ),
        TinySpec(
            "florence-2-base",
            _build_florence2,
            {
                "seed": 2,
                "sources": {
                    "config": "florence-community--Florence-2-base/config.assembled.json",
                    "preprocessor": "microsoft--Florence-2-base/preprocessor_config.json",
                    "generation": ["florence-community--Florence-2-base/generation_config.json"],
                },
                "bpe_vocab_size": 1000,
                "image_size": 128,
                "text": _FLORENCE2_BASE_TEXT,
                "vision": {
                    "depths": [1, 1, 1, 1],
                    "embed_dim": [8, 16, 32, 64],
                    "num_heads": [1, 2, 4, 8],
                    "num_groups": [1, 2, 4, 8],
                    "window_size": 4,
                },
            },
        ),
        TinySpec(
            "kosmos-2",
            _build_kosmos2,
            {
                "seed": 3,
                "sources": {
                    "config": "microsoft--kosmos-2-patch14-224/config.json",
                    "preprocessor": "microsoft--kosmos-2-patch14-224/preprocessor_config.json",
                    "generation": ["microsoft--kosmos-2-patch14-224/generation_config.json"],
                },
                "unigram_vocab_size": 1000,
                "image_size": 56,
                "text": {
                    "embed_dim": 32,
                    "layers": 2,
                    "attention_heads": 4,
                    "ffn_dim": 128,
                    "max_position_embeddings": 2048,
                },
                "vision": _TINY_VIT,
            },
        ),
        TinySpec(
            "siglip2",
            _build_siglip2,
            {
                "seed": 4,
                "sources": {
                    "config": "google--siglip2-base-patch16-naflex/config.json",
                    "preprocessor": "google--siglip2-base-patch16-naflex/preprocessor_config.json",
                },
                "bpe_vocab_size": 1000,
                "max_num_patches": 256,
                "text": {**_TINY_VIT, "max_position_embeddings": 64},
                "vision": {**_TINY_VIT, "num_patches": 256},
            },
        ),
        TinySpec(
            "blip",
            _build_blip,
            {
                "seed": 5,
                "sources": {
                    "config": "Salesforce--blip-image-captioning-base/config.json",
                    "preprocessor": "Salesforce--blip-image-captioning-base/preprocessor_config.json",
                },
                "wordpiece_vocab_size": 1000,
                "image_size": 64,
                "projection_dim": 32,
                "text": {**_TINY_VIT, "max_position_embeddings": 512, "projection_dim": 32},
                "vision": {**_TINY_VIT, "patch_size": 16},
            },
        ),
    )
}
"""Every tiny checkpoint, keyed by its directory name under the output directory."""


# Fingerprints, markers and the atomic build ---------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(spec: TinySpec, real_configs: Path) -> dict[str, Any]:
    """The marker contents: a digest of everything a checkpoint's bytes depend on, and what it covers."""
    sources = spec.settings["sources"]
    used = sorted({sources["config"], sources["preprocessor"], *sources.get("generation", ())})
    versions = {
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    inputs = {
        "builder": _sha256(Path(__file__).read_bytes()),
        "corpus": _sha256(CORPUS_PATH.read_bytes()),
        "real_configs": {path: _sha256((real_configs / path).read_bytes()) for path in used},
        "settings": spec.settings,
        "versions": versions,
    }
    digest = _sha256(json.dumps(inputs, sort_keys=True).encode())
    return {"name": spec.name, "fingerprint": digest, "settings": spec.settings, "versions": versions}


def _is_current(directory: Path, fingerprint: Mapping[str, Any]) -> bool:
    if not all((directory / name).is_file() for name in (MARKER_NAME, *REQUIRED_FILES)):
        return False
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint["fingerprint"]


def _directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _make_readable(directory: Path) -> None:
    """Temporary directories and some saved files are private (0700/0600); checkpoints are shared data."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(staging: Path, target: Path, fingerprint: Mapping[str, Any]) -> None:
    """Rename `staging` to `target`, retiring an outdated `target`; a concurrent identical build may win."""
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        if target.exists():
            os.replace(target, retired / target.name)
        os.replace(staging, target)
    except OSError:
        if not _is_current(target, fingerprint):
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def resolve_real_configs(real_configs: str | os.PathLike[str] | None = None) -> Path:
    """The published-configs directory: the argument, else `$TINY_REAL_CONFIGS`, else the copy kept in this package."""
    path = Path(real_configs or os.environ.get(REAL_CONFIGS_ENV) or DEFAULT_REAL_CONFIGS)
    if not (path / "SOURCES.md").is_file():
        raise FileNotFoundError(
            f"published configs not found at {path} (no SOURCES.md there); "
            f"pass real_configs / --real-configs or set {REAL_CONFIGS_ENV}"
        )
    return path


def build_checkpoint(
    name: str,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    *,
    real_configs: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> BuildResult:
    """Build the tiny checkpoint `name` into `out_dir/name`, unless an identical complete build is there."""
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown tiny checkpoint {name!r}; choose from {', '.join(CHECKPOINTS)}")
    spec = CHECKPOINTS[name]
    configs = resolve_real_configs(real_configs)
    target = Path(out_dir) / name
    fingerprint = _fingerprint(spec, configs)
    started = time.perf_counter()
    if not force and _is_current(target, fingerprint):
        return BuildResult(name, target, False, time.perf_counter() - started, _directory_size(target))

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        spec.builder(staging, configs, spec.settings)
        (staging / MARKER_NAME).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _make_readable(staging)
        _swap_into_place(staging, target, fingerprint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(name, target, True, time.perf_counter() - started, _directory_size(target))


def build_all(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    *,
    names: Iterable[str] | None = None,
    real_configs: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> list[BuildResult]:
    """Build, or keep when up to date, every tiny checkpoint (or only `names`) under `out_dir`."""
    results = []
    for name in CHECKPOINTS if names is None else names:
        result = build_checkpoint(name, out_dir, real_configs=real_configs, force=force)
        logger.info(
            "%-16s %-10s %5.2f s %5.2f MB  %s",
            result.name,
            "built" if result.built else "up to date",
            result.seconds,
            result.size_bytes / 1e6,
            result.path,
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny_checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKPOINTS), metavar="NAME", help="build only these")
    parser.add_argument(
        "--real-configs", type=Path, help=f"published configs (default: ${REAL_CONFIGS_ENV} or {DEFAULT_REAL_CONFIGS})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when an identical build is present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.disable_progress_bar()
    try:
        build_all(args.out, names=args.only, real_configs=args.real_configs, force=args.force)
    except FileNotFoundError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
