"""A tiny random-weight BERT sentence encoder, built and saved locally: no hub, no download."""

from __future__ import annotations

import warnings
from pathlib import Path

WORDS = (
    "balance account funds savings transfer send wire payee flight airport boarding airline joke weather "
    "recipe song please my the can you i want to what is a now book check money trip"
).split()


def build_tiny_encoder(folder: Path, pooling: str | tuple = "mean", normalize: bool = True, seed: int = 0,
                       words: list[str] = WORDS, max_seq_length: int = 32, extra: list | None = None) -> Path:
    """A 2-layer BERT (hidden 32) whose WordPiece vocabulary is `words`, saved as a
    sentence-transformers folder (`folder/encoder`): Transformer, Pooling, [Normalize], *extra."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<", ">", "email", "num"]
    vocab += [w for w in dict.fromkeys(words) if w not in vocab]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(raw / "vocab.txt"), do_lower_case=True)
    # `vocab_file=` is silently ignored by transformers 5: every word would be [UNK].
    assert tokenizer.unk_token_id not in tokenizer(" ".join(words[:5]))["input_ids"], "the tiny vocabulary did not load"
    tokenizer.save_pretrained(raw)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(raw)
    modules = [models.Transformer(str(raw), max_seq_length=max_seq_length), models.Pooling(32, pooling_mode=pooling)]
    modules += [models.Normalize()] if normalize else []
    modules += extra or []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SentenceTransformer(modules=modules, device="cpu").save(str(folder / "encoder"))
    return folder / "encoder"
