"""appsim.services.evaluation: metrics on hand-made cases, and end-to-end runs on small catalogues."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from appsim.services import evaluation as ev


def test_precision_at_k_hand_made() -> None:
    q = ["Games", "Music", "Games"]
    neigh = np.array(
        [["Games", "Games", "Music"], ["Games", "Music", "Music"], ["News", "News", "News"]], dtype=object
    )
    assert ev.precision_at_k(q, neigh) == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert ev.precision_at_k(q, np.empty((3, 0), dtype=object)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        ev.precision_at_k(q, neigh[:2])


def test_chance_precision_hand_made() -> None:
    # p_query: A 2/3, B 1/3; p_catalogue: A 1/4, B 1/2, C 1/4 -> 2/3 * 1/4 + 1/3 * 1/2 = 1/3
    assert ev.chance_precision(["A", "A", "B"], ["A", "B", "B", "C"]) == pytest.approx(1 / 3)
    # a query category the catalogue lacks contributes 0
    assert ev.chance_precision(["Z"], ["A", "B"]) == 0.0


def test_mae_and_spearman_on_known_arrays() -> None:
    assert ev.mae(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 1.0])) == pytest.approx(4 / 3)
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert ev.spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    assert ev.spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)  # ties: average ranks
    assert ev.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert ev.spearman(np.ones(5), np.arange(5.0)) is None
    assert ev.spearman(np.array([1.0, 2]), np.array([1.0, 2])) is None
    with pytest.raises(ValueError):
        ev.mae(np.ones(2), np.ones(3))


def test_bootstrap_difference_is_seeded_and_brackets_the_point() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=200)
    good, bad = y + rng.normal(0, 0.1, 200), y + rng.normal(0, 1.0, 200)
    d1 = ev.bootstrap_difference("mae", good, bad, y, resamples=500, seed=3)
    d2 = ev.bootstrap_difference("mae", good, bad, y, resamples=500, seed=3)
    assert d1 == d2 and d1["resamples"] == 500 and d1["seed"] == 3 and d1["level"] == 0.95
    assert d1["low"] <= d1["difference"] <= d1["high"] < 0
    assert ev.call(d1, lower_is_better=True) == "better"
    s = ev.bootstrap_difference("spearman", good, bad, y, resamples=500, seed=3)
    assert 0 < s["low"] <= s["difference"] <= s["high"]
    assert ev.call(s, lower_is_better=False) == "better"
    same = ev.bootstrap_difference("mean", good, good, resamples=100, seed=0)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    assert ev.call(same, lower_is_better=True) == "no detectable difference"
    assert ev.call({"low": None, "high": None}, lower_is_better=True) == "undefined"


def test_weighted_neighbour_mean_and_category_means() -> None:
    values = np.array([1.0, 3.0, 5.0, 100.0])
    usable = np.array([True, True, True, False])
    rows = np.array([[0, 1], [3, 3], [2, 0]])
    scores = np.array([[0.75, 0.25], [0.9, 0.8], [0.5, -0.2]])
    pred, fell = ev.weighted_neighbour_mean(values, usable, rows, scores, np.array([9.0, 9.0, 9.0]))
    assert pred == pytest.approx([0.75 * 1 + 0.25 * 3, 9.0, 5.0]) and fell == 1
    means = ev.category_means(values, np.array(["a", "a", "b", "b"], dtype=object), usable)
    assert means == {"a": 2.0, "b": 5.0, None: 3.0}


def test_nearest_breaks_ties_by_app_id() -> None:
    vecs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    vs = ev.VectorSet("v", "v", True, np.array(["z9", "a1", "m5"]), vecs, np.array(["q"]), vecs[:1])
    rows, scores = ev.nearest(vs, 2)
    assert rows.tolist() == [[1, 0]] and scores[0] == pytest.approx([1.0, 1.0])


def _small_real(root: Path, n: int = 240) -> None:
    """A tiny real-layout catalogue: apps.csv / holdout.csv, v1 + v2 (+ eval/*-nocat), SIMULATED history."""
    from appsim.data.artifacts import write_version_artifact
    from appsim.data.history import write_simulated_history

    rng = np.random.default_rng(5)
    cats = np.array(["Games", "Music", "Finance", "Weather"])[rng.integers(0, 4, n)]
    apps = pd.DataFrame({
        "app_id": [str(100000 + i) for i in range(n)], "name": [f"App {i}" for i in range(n)],
        "category": cats,
        "platform": "ios", "description": "", "price": np.where(rng.random(n) < 0.2, 1.99, 0.0),
        "content_rating": "4+", "user_rating": np.round(rng.uniform(1, 5, n) * 2) / 2,
        "rating_count": rng.integers(0, 5000, n), "size_bytes": 1000,
    })  # fmt: skip
    apps.loc[apps["rating_count"] == 0, "user_rating"] = 0.0
    held = rng.random(n) < 0.2
    apps[~held].to_csv(root / "apps.csv", index=False)
    apps[held].to_csv(root / "holdout.csv", index=False)
    centres = {c: rng.normal(size=8) for c in np.unique(cats)}
    for sub, signal in (("v1", 1.0), ("v2", 2.0), ("eval/v1-nocat", 0.5), ("eval/v2-nocat", 0.8)):
        vec = np.stack([signal * centres[c] + rng.normal(size=8) for c in cats])
        out = root / sub
        write_version_artifact(out, sub.split("/")[-1][:2], apps["app_id"][~held].tolist(), vec[~held],
                               encoder={"kind": "test"}, inputs={})  # fmt: skip
        np.save(
            out / "holdout_vectors.npy",
            vec[held].astype(np.float32) / np.linalg.norm(vec[held], axis=1)[:, None],
        )
        np.save(out / "holdout_ids.npy", apps["app_id"][held].to_numpy().astype(str))
    write_simulated_history(root, apps, seed=ev.SEED, share_with_history=0.6)


def test_evaluate_real_layout_end_to_end(tmp_path: Path) -> None:
    _small_real(tmp_path)
    res = ev.evaluate_real(tmp_path, k=10, neighbours=15, resamples=200, log=lambda _m: None)
    assert res["missing"] == []
    assert set(res["precision"]) == {"v1", "v1-nocat", "v2", "v2-nocat"}
    for p in res["precision"].values():
        assert 0 <= p["low"] <= p["precision"] <= p["high"] <= 1 and 0 < p["chance"] < 1 and p["k"] == 10
    assert res["precision"]["v2"]["precision"] > res["precision"]["v2"]["chance"]
    assert set(res["precision_differences"]) == {"with_category", "without_category"}
    assert set(res["outcomes"]) == {"user_rating", "log1p_rating_count"}
    for o in res["outcomes"].values():
        assert {"n", "baseline", "v1", "v2", "v2_minus_v1"} <= set(o)
        assert {"mae", "spearman", "vs_baseline"} <= set(o["v2"])
        assert {"difference", "low", "high"} <= set(o["v2"]["vs_baseline"]["mae"])
    assert set(res["campaign"]) == {"true", "observed"}
    assert set(res["campaign"]["true"]) == {"ctr", "install_rate", "rpm"}
    # the held-out apps' history rows are targets only
    assert res["history"]["rows_held_out"] > 0 and res["history"]["simulated"] is True


def test_evaluate_mock_end_to_end_and_report(tmp_path: Path) -> None:
    from appsim.data.build import build_mock

    mock = tmp_path / "mock"
    build_mock(mock, n_apps=300, seed=7, log=lambda _m: None)
    res = ev.evaluate(None, mock, resamples=200, log=lambda _m: None)
    assert set(res) == {"meta", "mock", "verdict"}
    meta = res["meta"]
    assert {"date", "machine", "k_precision", "neighbours", "bootstrap", "seconds"} <= set(meta)
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"]
    m = res["mock"]
    assert m["n_holdout"] > 10 and m["n_catalogue"] > 200 and m["missing"] == []
    assert set(m["precision"]) == {"v1", "v2"}
    for p in m["precision"].values():
        assert 0 <= p["precision"] <= 1 and 0 < p["chance"] < 1
    assert set(m["precision_differences"]) == {"with_category"}
    obs = m["campaign"]["observed"]
    assert set(obs) <= {"ctr", "install_rate", "rpm"} and obs
    for o in obs.values():
        assert o["baseline"]["mae"] >= 0 and {"v1", "v2", "v2_minus_v1"} <= set(o)
    assert {"outcome_statements", "version_votes", "winner"} <= set(res["verdict"])

    md, png = tmp_path / "docs" / "evaluation.md", tmp_path / "docs" / "evaluation.png"
    ev.write_report(res, md, png, command="appsim evaluate --resamples 200")
    text = md.read_text()
    assert "appsim evaluate --resamples 200" in text and "nproc" in text and meta["date"] in text
    assert "| mock | v2 |" in text and "![evaluation](evaluation.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(math.isnan(x) for x in [p["precision"] for p in m["precision"].values()])
