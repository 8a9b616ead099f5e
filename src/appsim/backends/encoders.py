"""Encoder registry: rebuild a version's request-time encoder from its artifact's ``encoder/`` directory.

The manifest's ``encoder.kind`` names the implementation:
``tfidf_svd`` (v1, LSA), ``minilm`` (v2, all-MiniLM-L6-v2 in numpy), ``category_centroid`` (the company
format, which has no text). raises ArtifactError naming the file and the failed check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appsim.domain import Encoder
from appsim.errors import ArtifactError


def load_encoder(manifest: dict[str, Any], encoder_dir: str | Path) -> Encoder:
    spec = manifest.get("encoder") or {}
    kind = spec.get("kind")
    d = Path(encoder_dir)
    if kind == "tfidf_svd":
        from appsim.backends.tfidf_svd import TfidfSvdEncoder

        return TfidfSvdEncoder.load(d)
    if kind == "minilm":
        from appsim.backends.minilm import MiniLMEncoder

        enc = MiniLMEncoder(include_category=bool(spec.get("include_category", True)))
        want = spec.get("safetensors_sha256")
        got = enc.fingerprint().get("safetensors_sha256")
        if want and got != want:
            raise ArtifactError(
                f"the installed MiniLM weights (sha256 {str(got)[:12]}...) are not the ones that built this "
                f"catalogue ({str(want)[:12]}...); reinstall requirements-model.txt or rebuild the data",
                path=str(d),
                check="encoder-fingerprint",
            )
        return enc
    if kind == "category_centroid":
        from appsim.backends.centroid import CategoryCentroidEncoder

        return CategoryCentroidEncoder.load(d)
    raise ArtifactError(f"unknown encoder kind {kind!r} in manifest", path=str(d), check="encoder-kind")
