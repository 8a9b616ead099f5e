"""The parallel catalogue encoder is byte-identical to the single-process encoder (same batches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from appsim.backends.minilm import MiniLMEncoder
from appsim.data.build import encode_parallel


def test_parallel_encoding_equals_single_process_bytes(real_dir) -> None:  # type: ignore[no-untyped-def]
    apps = pd.read_csv(real_dir / "holdout.csv", dtype={"app_id": str}, keep_default_na=False).head(80)
    texts = [
        f"{n}. {c}. {d[:300]}"
        for n, c, d in zip(apps["name"], apps["category"], apps["description"], strict=True)
    ]
    with threadpool_limits(limits=1):
        single = MiniLMEncoder().encode_texts(texts)
    par = encode_parallel(
        texts, include_category=True, progress=False, log=lambda _m: None, processes=2, chunk=32
    )
    assert par.shape == (80, 384)
    assert np.array_equal(par, single)
