"""v1 text encoder: TF-IDF + truncated SVD (latent semantic analysis), scikit-learn.

Deerwester et al. 1990, "Indexing by latent semantic analysis"; the pipeline follows scikit-learn's
``TfidfVectorizer -> TruncatedSVD -> Normalizer`` LSA recipe. Saved without pickle so that the service never
unpickles: ``vocabulary.json`` (term -> column), ``idf.npy`` (V,) float64, ``components.npy`` (d, V) float32
and ``config.json`` (vectoriser options). Encoding a new app rebuilds the same vectoriser from these files,
so request-time vectors equal build-time vectors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from appsim.data.artifacts import l2_normalise
from appsim.data.text import app_text
from appsim.domain import AppMetadata
from appsim.errors import ArtifactError

DEFAULT_VECTORIZER: dict[str, Any] = {
    "sublinear_tf": True,
    "min_df": 2,
    "max_df": 0.9,
    "max_features": 50000,
    "ngram_range": [1, 2],
    "stop_words": "english",
    "strip_accents": None,
    "lowercase": True,
    "dtype": "float64",
}


class TfidfSvdEncoder:
    """``encode(apps) -> (m, dim) float32`` L2-normalised LSA vectors. ``kind = "tfidf_svd"``."""

    kind = "tfidf_svd"

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        components: np.ndarray,
        *,
        include_category: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._vec = vectorizer
        self._components_t = np.ascontiguousarray(components.T, dtype=np.float32)  # (V, d)
        self.dim = int(components.shape[0])
        self.include_category = include_category
        self.config = config or {}

    @classmethod
    def fit(
        cls, texts: Sequence[str], *, dim: int = 64, seed: int = 0, include_category: bool = True
    ) -> TfidfSvdEncoder:
        """Fit TF-IDF then a ``dim``-component randomized SVD (seeded, so refits are reproducible)."""
        opts = dict(DEFAULT_VECTORIZER)
        vec = TfidfVectorizer(
            sublinear_tf=opts["sublinear_tf"],
            min_df=opts["min_df"],
            max_df=opts["max_df"],
            max_features=opts["max_features"],
            ngram_range=tuple(opts["ngram_range"]),
            stop_words=opts["stop_words"],
            lowercase=opts["lowercase"],
            dtype=np.float64,
        )
        x = vec.fit_transform(list(texts))
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=seed)
        svd.fit(x)
        config = {"vectorizer": opts, "dim": dim, "seed": seed, "include_category": include_category}
        return cls(vec, svd.components_.astype(np.float32), include_category=include_category, config=config)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim) float32``, L2-normalised. A text with no known term maps to a zero row."""
        x = self._vec.transform(list(texts))
        return l2_normalise(np.asarray(x @ self._components_t, dtype=np.float32))

    def encode(self, apps: Sequence[AppMetadata]) -> np.ndarray:
        return self.encode_texts([app_text(a, include_category=self.include_category) for a in apps])

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, **self.config}

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        vocab = {t: int(i) for t, i in sorted(self._vec.vocabulary_.items(), key=lambda kv: kv[1])}
        (d / "vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
        np.save(d / "idf.npy", np.asarray(self._vec.idf_, dtype=np.float64), allow_pickle=False)
        np.save(d / "components.npy", np.ascontiguousarray(self._components_t.T), allow_pickle=False)
        (d / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> TfidfSvdEncoder:
        """Rebuild from the saved files. raises ArtifactError naming the missing/corrupt file."""
        d = Path(directory)
        try:
            config = json.loads((d / "config.json").read_text())
            vocab = json.loads((d / "vocabulary.json").read_text())
            idf = np.load(d / "idf.npy", allow_pickle=False)
            components = np.load(d / "components.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtifactError(
                f"cannot load TF-IDF/SVD encoder from {d}: {e}", path=str(d), check="encoder"
            ) from e
        opts = config["vectorizer"]
        if idf.shape[0] != len(vocab) or components.shape[1] != len(vocab):
            raise ArtifactError(
                f"encoder files in {d} disagree on vocabulary size", path=str(d), check="shape"
            )
        vec = TfidfVectorizer(
            sublinear_tf=opts["sublinear_tf"],
            min_df=1,
            ngram_range=tuple(opts["ngram_range"]),
            stop_words=opts["stop_words"],
            lowercase=opts["lowercase"],
            vocabulary=vocab,
            dtype=np.float64,
        )
        vec.idf_ = idf
        return cls(
            vec, components, include_category=bool(config.get("include_category", True)), config=config
        )
