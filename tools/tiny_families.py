"""The tiny checkpoints' builders, one per model family.

A builder writes one complete checkpoint into a directory: it trains the family's tokenizer,
builds the processor from the published preprocessor config, shrinks the published model config
to the sizes in its settings and saves a randomly initialised model with `save_pretrained`. Each
builder has the signature `(directory, real_configs, settings)`; the settings are those of
`tools.tiny_checkpoints.CHECKPOINTS`. The order of the steps is part of the output: the tokenizer
is trained before the model is seeded and initialised, and the model is saved before the processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
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

from tools.tiny_configs import generation_config, merged, published
from tools.tiny_tokenizers import train_byte_level_bpe, train_gemma_bpe, train_unigram, train_wordpiece

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


def _random_model(model_class: type[PreTrainedModel], config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return model_class(config).eval()


def _save(directory: Path, model: PreTrainedModel, processor: ProcessorMixin) -> None:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def build_florence2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """Florence-2, native layout: DaViT vision tower + BART; byte-level BPE plus the task and `<loc_*>` tokens."""
    sources, text = settings["sources"], settings["text"]
    vocab, merges = train_byte_level_bpe(settings["bpe_vocab_size"], ["<s>", "<pad>", "</s>", "<unk>"])
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
    preprocessor = merged(
        published(real_configs, sources["preprocessor"]),
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
    config = Florence2Config.from_dict(merged(published(real_configs, sources["config"]), overrides))
    model = _random_model(Florence2ForConditionalGeneration, config, settings["seed"])
    model.generation_config = generation_config(real_configs, sources["generation"])
    _save(directory, model, processor)


def build_kosmos2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """Kosmos-2: CLIP ViT + latent-query resampler + decoder LM; XLM-R style unigram tokenizer."""
    sources, text = settings["sources"], settings["text"]
    pieces = train_unigram(settings["unigram_vocab_size"], ["<s>", "<pad>", "</s>", "<unk>"], "<unk>")
    tokenizer = XLMRobertaTokenizer(vocab=[*pieces, ("<mask>", 0.0)], model_max_length=text["max_position_embeddings"])

    image_size = settings["image_size"]
    preprocessor = merged(
        published(real_configs, sources["preprocessor"]),
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
    config = Kosmos2Config.from_dict(merged(published(real_configs, sources["config"]), overrides))
    model = _random_model(Kosmos2ForConditionalGeneration, config, settings["seed"])
    model.generation_config = generation_config(real_configs, sources["generation"])
    _save(directory, model, processor)


def build_siglip2(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """SigLIP2 naflex: ViT over variable patch grids + text tower; lowercasing Gemma-style BPE."""
    sources, text = settings["sources"], settings["text"]
    vocab, merges = train_gemma_bpe(settings["bpe_vocab_size"], ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
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

    preprocessor = merged(
        published(real_configs, sources["preprocessor"]), {"max_num_patches": settings["max_num_patches"]}
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
    config = Siglip2Config.from_dict(merged(published(real_configs, sources["config"]), overrides))
    _save(directory, _random_model(Siglip2Model, config, settings["seed"]), processor)


def build_blip(directory: Path, real_configs: Path, settings: Mapping[str, Any]) -> None:
    """BLIP captioning: ViT + BERT decoder with cross-attention; uncased WordPiece with BLIP's [DEC] BOS."""
    sources, text, vision = settings["sources"], settings["text"], settings["vision"]
    vocab = train_wordpiece(settings["wordpiece_vocab_size"], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # BLIP appends [DEC] (the decoder's BOS) and [ENC] to bert-base-uncased's vocabulary.
    tokenizer = BertTokenizer(
        vocab=vocab,
        bos_token="[DEC]",
        extra_special_tokens=["[ENC]"],
        model_max_length=text["max_position_embeddings"],
    )

    image_size = settings["image_size"]
    preprocessor = merged(
        published(real_configs, sources["preprocessor"]), {"size": {"height": image_size, "width": image_size}}
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
    config = BlipConfig.from_dict(merged(published(real_configs, sources["config"]), overrides))
    _save(directory, _random_model(BlipForConditionalGeneration, config, settings["seed"]), processor)
