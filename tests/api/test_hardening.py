"""Hardening of the public API on the real catalogue (every model version whose artifact exists).

1. Limits: body size (413, by Content-Length and while streaming), name / description length, top_k,
   batch size, vector length; any script of Unicode text is served; strict JSON (NaN / Infinity tokens,
   out-of-range numbers, invalid UTF-8, deep nesting) is 422, never 5xx.
2. The event loop is never blocked: a REAL uvicorn server (subprocess, 127.0.0.1, free port) answers
   ``/health`` within milliseconds while cold-start queries with 4,000-character descriptions and large
   batches run concurrently.
3. Corrupted or missing artifacts at start-up: the error names the file and the check in ``/health``
   ``detail`` and in the log, ``/health/ready`` is 503 and no version is served (503 problem).
4. Fuzzing from the app's own OpenAPI schema (schemathesis, ASGI, no network; derandomized, bounded
   examples): no 5xx, every status code, content type and body conforms to the schema; also against an
   app whose artifacts failed to load (the 503s must be documented too).
5. Security: nothing a request can influence is unpickled; ``model_version`` outside the configured set
   is 422.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from appsim.testing.server import serve_subprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_catalogue import DIMS, REAL, ROOT, VERSIONS, settings_for, write_config

HEAVY_VERSION = VERSIONS[-1]  # v2 (MiniLM, 384-d) once built, else v1


def make_app(tmp: Path, **kw: Any) -> Any:
    from appsim.app import create_app

    return create_app(settings_for(tmp, **kw), load_in_background=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("hardening"))) as c:
        yield c


@pytest.fixture(scope="module")
def app_ids(client: TestClient) -> dict[str, str]:
    sim = client.app.state.container.similarity  # type: ignore[attr-defined]
    return {v: str(sim.versions[v].ids[0]) for v in VERSIONS}


def assert_problem(r: Any, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if code is not None:
        assert body["type"].endswith("/" + code), body
    if field is not None:
        assert body["field"] == field, body
    return body


def limits(client: TestClient) -> Any:
    return client.app.state.container.settings.limits  # type: ignore[attr-defined]


# ==== 1. limits ======================================================================================


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    lim = limits(client).max_body_bytes
    big = b'{"app_id": "1", "pad": "' + b"x" * lim + b'"}'
    assert_problem(client.post("/find-similar", content=big, headers={"content-type": "application/json"}),
                   413, "payload-too-large", "body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(lim // 65536 + 2):
            yield b" " * 65536

    r = client.post("/find-similar/batch", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413, "payload-too-large")
    # just under the limit is read and judged on its content (whitespace is valid JSON padding)
    body = json.dumps({"app_id": "no-such-app", "model_version": VERSIONS[0]}).encode()
    padded = body[:-1] + b" " * (lim - len(body)) + b"}"
    assert len(padded) == lim  # exactly at the limit is allowed
    r = client.post("/find-similar", content=padded, headers={"content-type": "application/json"})
    assert_problem(r, 404, "not-found", "app_id")


@pytest.mark.parametrize("version", VERSIONS)
def test_description_and_name_length_limits(client: TestClient, version: str) -> None:
    lim = limits(client)
    assert lim.max_description_chars == 4000  # the documented limit (App Store descriptions are cut there)
    text = ("Track workouts, plan meals and sleep better with guided coaching. " * 80)
    ok = {"name": "N" * lim.max_name_chars, "category": "Health & Fitness",
          "description": text[: lim.max_description_chars]}
    r = client.post("/find-similar", json={"app": ok, "model_version": version, "top_k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    long_desc = ok | {"description": text[: lim.max_description_chars + 1]}
    assert_problem(client.post("/find-similar", json={"app": long_desc, "model_version": version}), 422,
                   field="app.description")
    long_name = ok | {"name": "N" * (lim.max_name_chars + 1)}
    assert_problem(client.post("/find-similar", json={"app": long_name, "model_version": version}), 422,
                   field="app.name")
    # in a batch the limit is per item: the others are still answered
    r = client.post("/find-similar/batch", json={"queries": [{"app": ok}, {"app": long_desc}],
                                                 "model_version": version})
    if r.status_code == 200:
        items = r.json()["items"]
        assert items[0]["ok"] and not items[1]["ok"]
        assert items[1]["error"]["field"].endswith("app.description")
    else:
        assert_problem(r, 422)


@pytest.mark.parametrize("top_k", [0, -1, 101, 10**9, "5", 2.5, True, [3]])
def test_top_k_out_of_range_or_not_an_integer_is_422(client: TestClient, app_ids: dict[str, str],
                                                      top_k: Any) -> None:
    v = VERSIONS[0]
    r = client.post("/find-similar", json={"app_id": app_ids[v], "model_version": v, "top_k": top_k})
    assert_problem(r, 422, field="top_k")
    r = client.post("/find-similar/batch", json={"queries": [{"app_id": app_ids[v]}], "model_version": v,
                                                 "top_k": top_k})
    assert_problem(r, 422, field="top_k")


def test_top_k_bounds_are_served(client: TestClient, app_ids: dict[str, str]) -> None:
    v = VERSIONS[0]
    for k in (1, client.app.state.container.settings.search.max_top_k):  # type: ignore[attr-defined]
        r = client.post("/find-similar", json={"app_id": app_ids[v], "model_version": v, "top_k": k})
        assert r.status_code == 200 and len(r.json()["results"]) == k


def test_batch_size_limit(client: TestClient, app_ids: dict[str, str]) -> None:
    v = VERSIONS[0]
    n = limits(client).max_batch
    q = {"app_id": app_ids[v]}
    r = client.post("/find-similar/batch", json={"queries": [q] * n, "model_version": v, "top_k": 1})
    assert r.status_code == 200 and len(r.json()["items"]) == n
    assert_problem(client.post("/find-similar/batch", json={"queries": [q] * (n + 1), "model_version": v}),
                   422, field="queries")
    assert_problem(client.post("/find-similar/batch", json={"queries": [], "model_version": v}), 422,
                   field="queries")


def test_vector_length_and_unknown_fields(client: TestClient) -> None:
    v = VERSIONS[0]
    assert_problem(client.post("/find-similar", json={"vector": [0.1] * 4097, "model_version": v}), 422,
                   field="vector")
    assert_problem(client.post("/find-similar", json={"vector": [0.1] * DIMS[v], "model_version": v,
                                                      "filter": {"category": "Games"}}), 422, field="filter")


UNICODE = {
    "cjk": "写真加工アプリ 사진 편집기 照片编辑器 — 可爱的贴纸和滤镜",
    "arabic": "تطبيق تعديل الصور مع فلاتر وملصقات",
    "hebrew_rtl": "\u202bעורך תמונות עם מסננים\u202c",
    "rtl_override": "\u202eotohp\u202c editor \u2067مرحبا\u2069",
    "emoji_zwj": "📸 Photo 👩‍👩‍👧‍👦 family 🏳️‍🌈 filters 🇯🇵 ✨",
    "combining": "Ph\u0303o\u0301t\u0308o\u0332 e\u0336d\u0337i\u0338t\u0489o\u20dd r Z̵̡̛a̷͚l̶g̸o̵",
    "devanagari_thai": "फ़ोटो संपादक แอปแต่งรูป",
    "zero_width_bom": "Photo\u200b\u200c\u200d\ufeffEditor\u2060",
    "nul_and_controls": "Photo\u0000Editor\u0007\u001b[31m",
    "astral": "𝔓𝔥𝔬𝔱𝔬 𝕰𝖉𝖎𝖙𝖔𝖗 𓂀 𐍈",
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("script", sorted(UNICODE))
def test_unicode_of_any_script_is_served(client: TestClient, version: str, script: str) -> None:
    text = UNICODE[script]
    app = {"name": text[:200], "category": "Photo & Video", "description": (text + " ") * 20}
    r = client.post("/find-similar", json={"app": app, "model_version": version, "top_k": 5})
    assert r.status_code == 200, r.text[:300]
    res = r.json()
    assert len(res["results"]) == 5 and all(-1.0 <= n["score"] <= 1.0 for n in res["results"])
    # unicode where an id or a filter is expected is a clean 404 / 422
    assert_problem(client.post("/find-similar", json={"app_id": text[:100], "model_version": version}), 404)
    assert_problem(client.post("/find-similar", json={"app": app, "model_version": version,
                                                      "filters": {"category": text[:100]}}), 422)


def test_non_latin_request_id_header_is_replaced(client: TestClient, app_ids: dict[str, str]) -> None:
    v = VERSIONS[0]
    r = client.post("/find-similar", json={"app_id": app_ids[v], "model_version": v},
                    headers={b"X-Request-ID": "ñ-é-🙂".encode() + b"x" * 200})
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


STRICT_JSON = {
    "nan": b'{"model_version": "%s", "vector": [NaN%s]}',
    "infinity": b'{"model_version": "%s", "vector": [Infinity%s]}',
    "minus_infinity": b'{"model_version": "%s", "vector": [-Infinity%s]}',
    "overflow_1e400": b'{"model_version": "%s", "vector": [1e400%s]}',
    "nan_top_k": b'{"model_version": "%s", "top_k": NaN, "vector": [0.5%s]}',
    "lone_surrogate": b'{"model_version": "%s", "app": {"name": "a\\ud800b"}, "x": [0%s]}',
    "invalid_utf8": b'{"model_version": "%s", "app": {"name": "\xff\xfe"}, "x": [0%s]}',
    "trailing_comma": b'{"model_version": "%s", "vector": [0.5%s,]}',
    "single_quotes": b"{'model_version': '%s', 'vector': [0.5%s]}",
}


@pytest.mark.parametrize("route", ["/find-similar", "/find-similar/batch"])
@pytest.mark.parametrize("case", sorted(STRICT_JSON))
def test_strict_json_rejects_non_standard_tokens(client: TestClient, route: str, case: str) -> None:
    v = VERSIONS[0]
    raw = STRICT_JSON[case] % (v.encode(), b", 0.1" * (DIMS[v] - 1))
    if route.endswith("batch"):
        raw = b'{"queries": [' + raw + b"]}"
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422, "invalid-json", "body")


def test_deep_nesting_is_422_not_a_crash(client: TestClient) -> None:
    for depth in (600, 5000, 100_000):
        raw = b'{"vector": ' + b"[" * depth + b"]" * depth + b"}"
        r = client.post("/find-similar", content=raw, headers={"content-type": "application/json"})
        assert_problem(r, 422)


def test_huge_finite_vector_is_ranked_by_direction_or_rejected(client: TestClient) -> None:
    v = VERSIONS[0]
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(DIMS[v])
    small = client.post("/find-similar", json={"vector": direction.tolist(), "model_version": v, "top_k": 5})
    huge = client.post("/find-similar", json={"vector": (direction * 1e300).tolist(), "model_version": v,
                                               "top_k": 5})
    assert small.status_code == 200
    if huge.status_code != 422:
        assert [n["app_id"] for n in huge.json()["results"]] == [n["app_id"] for n in small.json()["results"]]


# ==== 2. the event loop is never blocked (real uvicorn server) =======================================


@contextlib.contextmanager
def uvicorn_server(tmp: Path) -> Iterator[str]:
    """``uvicorn appsim.app:app_factory --factory`` on 127.0.0.1 in a subprocess; yields its base URL once
    ``/health/ready`` is 200 (at most 120 s, 3 attempts on fresh ports); always terminated."""
    with serve_subprocess(write_config(tmp), log=tmp / "server.log", cwd=ROOT, timeout=120, attempts=3,
                          uvicorn_factory="appsim.app:app_factory", log_level="warning",
                          extra_args=["--no-access-log"]) as server:  # fmt: skip
        yield server.url


def _heavy_bodies(n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` pre-encoded heavy requests: 2 of 3 cold starts with a 4,000-character description, 1 of 3 a
    batch of 32 metadata queries (2,000 characters each) + 32 random vectors, top_k 50. Real App Store
    descriptions, each made unique (no cache hit). Built before the clock starts: the load generator
    itself must not compete with the probe for this process's GIL."""
    apps = pd.read_csv(REAL / "holdout.csv", dtype={"app_id": str}, keep_default_na=False)
    texts = [t for t in apps["description"].tolist() if len(t) > 500]
    rng = np.random.default_rng(seed)

    def text(tag: str, size: int) -> str:
        picks = rng.integers(0, len(texts), 6)
        return (f"[{tag}] " + " ".join(texts[int(j)] for j in picks))[:size]

    out: list[tuple[str, bytes]] = []
    for i in range(n):
        if i % 3:
            body: dict[str, Any] = {"app": {"name": f"Heavy {seed}-{i}", "category": "Games",
                                            "description": text(f"{seed}-{i}", 4000)},
                                    "model_version": HEAVY_VERSION}
            out.append(("/find-similar", json.dumps(body).encode()))
        else:
            qs: list[dict[str, Any]] = [
                {"app": {"name": f"B{seed}-{i}-{j}", "category": "Games",
                         "description": text(f"{seed}-{i}-{j}", 2000)}} for j in range(32)]
            qs += [{"vector": rng.standard_normal(DIMS[HEAVY_VERSION]).round(6).tolist()} for _ in range(32)]
            body = {"queries": qs, "model_version": HEAVY_VERSION, "top_k": 50}
            out.append(("/find-similar/batch", json.dumps(body).encode()))
    return out


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_server(tmp_path_factory.mktemp("uvicorn")) as url:
        yield url


def _probe_while(url: str, busy: Any, seconds: float | None = None) -> list[float]:
    """Latencies (ms) of sequential ``GET /health`` every 10 ms while ``busy()`` is True (at most
    ``seconds``)."""
    import httpx

    out: list[float] = []
    end = time.monotonic() + (seconds or 120.0)
    with httpx.Client(base_url=url, timeout=5) as probe:
        while busy() and time.monotonic() < end:
            t0 = time.perf_counter()
            r = probe.get("/health")
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
            time.sleep(0.01)
    return out


def test_health_answers_in_milliseconds_while_heavy_queries_run(server_url: str) -> None:
    import httpx

    url = server_url
    workers = 2  # concurrent heavy clients (2 shared cores: the server's threads already saturate one)
    bodies = {s: _heavy_bodies(240, s) for s in range(workers)}
    idle = _probe_while(url, lambda: True, seconds=0.5)
    stop = threading.Event()
    heavy: list[tuple[str, float, int]] = []

    def heavy_worker(seed: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"content-type": "application/json"}) as c:
            for route, raw in bodies[seed]:
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                r = c.post(route, content=raw)
                heavy.append((route, time.perf_counter() - t0, r.status_code))

    with cf.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(heavy_worker, s) for s in range(workers)]
        time.sleep(0.3)  # the heavy requests are in flight
        probes = _probe_while(url, lambda: True, seconds=6.0)
        stop.set()
        for f in futures:
            f.result(timeout=180)

    p = np.percentile(probes, [50, 95, 99])
    med = {k: float(np.median([t for kind, t, _ in heavy if kind == k] or [0.0])) * 1000
           for k in ("/find-similar", "/find-similar/batch")}
    print(f"\n/health under load ({HEAVY_VERSION}): n={len(probes)} p50={p[0]:.1f} ms p95={p[1]:.1f} ms "
          f"p99={p[2]:.1f} ms max={max(probes):.1f} ms (idle p95 {np.percentile(idle, 95):.1f} ms); "
          f"concurrent heavy requests completed: {len(heavy)}, median cold start (4,000 chars) "
          f"{med['/find-similar']:.0f} ms, median batch of 64 {med['/find-similar/batch']:.0f} ms")
    assert all(status == 200 for _, _, status in heavy), {s for _, _, s in heavy}
    assert len(heavy) >= workers and len(probes) >= 100  # every heavy client finished at least one request
    assert p[1] < 50.0, f"/health p95 {p[1]:.1f} ms while CPU-bound queries run: the event loop is blocked"


@pytest.mark.xfail(strict=False, reason=(
    "FINDING: FastAPI serialises a sync route's response_model on the event loop; a 256 x top_k 100 batch "
    "(25,600 neighbours, 3.5 MB) stalls /health ~30 ms for the JSON dump plus GIL/GC pauses from building "
    "25,600 pydantic objects (measured max 140-300 ms)"))
def test_largest_batch_response_does_not_stall_the_loop(server_url: str) -> None:
    import httpx

    ids = [str(a) for a in np.load(REAL / VERSIONS[0] / "ids.npy", allow_pickle=False)[:256]]
    body = {"queries": [{"app_id": a} for a in ids], "model_version": VERSIONS[0], "top_k": 100}
    done = threading.Event()
    took: list[float] = []

    def big() -> None:
        try:
            with httpx.Client(base_url=server_url, timeout=120) as c:
                for _ in range(3):
                    t0 = time.perf_counter()
                    assert c.post("/find-similar/batch", json=body).status_code == 200
                    took.append((time.perf_counter() - t0) * 1000)
        finally:
            done.set()

    t = threading.Thread(target=big)
    t.start()
    probes = _probe_while(server_url, lambda: not done.is_set())
    t.join(120)
    print(f"\n/health during 3 batches of 256 x top_k 100 (median {np.median(took):.0f} ms each): "
          f"n={len(probes)} p50={np.percentile(probes, 50):.1f} ms p95={np.percentile(probes, 95):.1f} ms "
          f"max={max(probes):.1f} ms")
    assert max(probes) < 50.0


# ==== 3. corrupted or missing artifacts at start-up ================================================


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pristine")
    shutil.copy(REAL / "apps.csv", base / "apps.csv")
    shutil.copytree(REAL / "v1", base / "v1", ignore=shutil.ignore_patterns("holdout_*"))
    return base


def _flip_bytes(cat: Path) -> None:
    p = cat / "v1" / "vectors.npy"
    data = bytearray(p.read_bytes())
    for off in (len(data) - 1, len(data) // 2):
        data[off] ^= 0xFF
    p.write_bytes(bytes(data))


def _nan_vectors(cat: Path) -> None:
    """NaN in the vectors, with the manifest's sha256 updated: only the finiteness check can catch it."""
    from appsim.data.artifacts import sha256_file

    p = cat / "v1" / "vectors.npy"
    x = np.load(p, allow_pickle=False)
    x[7, 3] = np.nan
    np.save(p, x, allow_pickle=False)
    m = json.loads((cat / "v1" / "manifest.json").read_text())
    m["vectors_sha256"] = sha256_file(p)
    (cat / "v1" / "manifest.json").write_text(json.dumps(m))


def _truncate_manifest(cat: Path) -> None:
    p = cat / "v1" / "manifest.json"
    p.write_text(p.read_text()[:100])


CORRUPTIONS = {
    # name: (corrupt(catalogue dir), file named in the error, words naming the check)
    "vectors-deleted": (lambda c: (c / "v1" / "vectors.npy").unlink(), "vectors.npy", r"missing"),
    "vectors-bytes-flipped": (_flip_bytes, "vectors.npy", r"sha256"),
    "manifest-truncated": (_truncate_manifest, "manifest.json", r"not valid JSON"),
    "vectors-nan": (_nan_vectors, "vectors.npy", r"NaN"),
    "encoder-file-removed": (lambda c: (c / "v1" / "encoder" / "idf.npy").unlink(), "idf.npy", r"encoder"),
    "ids-deleted": (lambda c: (c / "v1" / "ids.npy").unlink(), "ids.npy", r"missing"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_artifact_is_reported_and_not_served(name: str, pristine: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    corrupt, filename, check = CORRUPTIONS[name]
    cat = tmp_path / "catalogue"
    shutil.copytree(pristine, cat)
    corrupt(cat)
    capsys.readouterr()
    app = make_app(tmp_path, catalogue=cat, versions=["v1"])
    log = capsys.readouterr().out
    with TestClient(app) as c:
        health = c.get("/health")
        assert health.status_code == 200  # liveness: the process is up
        h = health.json()
        assert h["status"] == "error" and h["ready"] is False and h["versions"] == []
        assert filename in h["detail"] and re.search(check, h["detail"]), h["detail"]
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["detail"] == h["detail"]
        for body in ({"app_id": "284882215", "model_version": "v1"}, {"vector": [0.1] * 64},
                     {"app": {"name": "Sleep", "category": "Health & Fitness"}}):
            p = assert_problem(c.post("/find-similar", json=body), 503, "unavailable")
            assert filename in p["detail"]
        batch = c.post("/find-similar/batch", json={"queries": [{"vector": [0.1] * 64}]})
        assert_problem(batch, 503, "unavailable")
        assert_problem(c.get("/drift"), 503, "unavailable")
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    errors = [x for x in lines
              if x.get("level") == "error" and x.get("event") == "model versions failed to load"]
    assert errors and filename in errors[0]["error"] and re.search(check, errors[0]["error"]), log[-2000:]


# ==== 4. fuzzing from the OpenAPI schema ============================================================


def _operations() -> list[str]:
    """``METHOD /path`` of every operation in the app's schema (built, not loaded: cheap at collection)."""
    from appsim.app import create_app

    with tempfile.TemporaryDirectory() as d:
        app = create_app(settings_for(Path(d)), load_in_background=True)
    return sorted(f"{m.upper()} {p}" for p, ops in app.openapi()["paths"].items() for m in ops)


OPERATIONS = _operations()
FUZZ_EXAMPLES = 25
ADMIN_KEY = "fuzz-admin-key-2f9c1e7a"  # admin routes are fuzzed enabled, with the right key


def _fuzz(schema: Any, label: str, mode: str, checks: list[Any], max_examples: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    method, path = label.split(" ", 1)
    op = schema[path][method]

    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        case.call_and_validate(checks=checks, headers={"X-API-Key": ADMIN_KEY})

    try:
        run()
    except Unsatisfiable:
        pytest.skip(f"{label}: no {mode} input exists (the operation takes no parameters)")


def _checks(server_errors: bool) -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    out = [status_code_conformance, content_type_conformance, response_schema_conformance,
           response_headers_conformance]
    return [not_a_server_error, *out] if server_errors else out


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import schemathesis

    app = make_app(tmp_path_factory.mktemp("fuzz"), admin_api_key=ADMIN_KEY)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def fuzz_schema_unloaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import schemathesis

    tmp = tmp_path_factory.mktemp("fuzz-unloaded")
    app = make_app(tmp, catalogue=tmp / "missing-catalogue", admin_api_key=ADMIN_KEY)
    assert app.state.container.load_error
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz_no_5xx_and_responses_conform(fuzz_schema: Any, label: str, mode: str) -> None:
    _fuzz(fuzz_schema, label, mode, _checks(server_errors=True), FUZZ_EXAMPLES)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz_unloaded_service_documents_its_503(fuzz_schema_unloaded: Any, label: str) -> None:
    """With no version loaded, 503 is the expected answer; it must be a documented status and content."""
    _fuzz(fuzz_schema_unloaded, label, "positive", _checks(server_errors=False), 10)


# ==== 5. security ====================================================================================

_UNPICKLE = re.compile(
    r"\bpickle\.(loads?|Unpickler)\b|\bUnpickler\b|\bcPickle\b|\bdill\b|\bcloudpickle\b|\bjoblib\.load\b"
    r"|\bread_pickle\b|allow_pickle\s*=\s*True|\btorch\.load\b|\bshelve\b|\bmarshal\.loads?\b"
    r"|\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)"
)
_PICKLE_WORD = re.compile(r"\bpickle\b")
RAW_UNPICKLER = {"src/appsim/data/safe_pickle.py"}  # the only module that may drive pickle's Unpickler
PICKLE_USERS = {"src/appsim/data/safe_pickle.py", "src/appsim/data/company.py"}


def _code_lines(path: Path) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield i, code


def test_no_unpickling_outside_the_safe_loader() -> None:
    src = ROOT / "src" / "appsim"
    loads, other_users = [], []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        for i, code in _code_lines(path):
            if rel not in RAW_UNPICKLER and _UNPICKLE.search(code) and "RestrictedUnpickler" not in code:
                loads.append(f"{rel}:{i}: {code.strip()}")
        if rel not in PICKLE_USERS and re.search(r"^\s*(import pickle|from pickle import)", text, re.M):
            other_users.append(rel)
    assert loads == [], "unpickling outside appsim.data.safe_pickle:\n" + "\n".join(loads)
    # modules importing pickle outside the two named files may only WRITE pickles (e.g. test fixtures)
    for rel in other_users:
        used = {m.group(1) for _, code in _code_lines(ROOT / rel)
                for m in re.finditer(r"\bpickle\.(\w+)", code)}
        assert used <= {"dumps", "dump", "HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL", "PicklingError"}, (rel, used)
    # the company importer unpickles only through the allow-listed loader
    company = (src / "data" / "company.py").read_text(encoding="utf-8")
    assert "safe_load" in company and not re.search(r"\bpickle\.(loads?|Unpickler)\b", company)


def test_requests_never_unpickle(client: TestClient, app_ids: dict[str, str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from appsim.data import safe_pickle

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("a request path unpickled something")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (safe_pickle, "safe_load"),
                      (safe_pickle, "safe_loads"), (np, "load")):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, refuse)
    v = VERSIONS[0]
    bodies: list[dict[str, Any]] = [{"app_id": app_ids[v]}, {"vector": [0.3] * DIMS[v]},
              {"app": {"name": "Notes", "category": "Productivity", "description": "notes and lists"}}]
    for b in bodies:
        assert client.post("/find-similar", json=b | {"model_version": v}).status_code == 200
    assert client.post("/find-similar/batch", json={"queries": bodies, "model_version": v}).status_code == 200
    assert client.get("/drift").status_code == 200 and client.get("/health/ready").status_code == 200


# (surrounding whitespace is stripped by the request schema: " v1 " IS v1, by design)
BAD_VERSIONS = ["v3", "V1", "v1.", "../v1", "../../../../etc/passwd", "v1/../v1", "/tmp/x", "__init__",
                "v1\u0000", "ｖ１", "vectors.npy", "%2e%2e%2fv1"]


@pytest.mark.parametrize("bad", BAD_VERSIONS)
def test_model_version_outside_the_configured_set_is_422(client: TestClient, app_ids: dict[str, str],
                                                         bad: str) -> None:
    v = VERSIONS[0]
    routes: list[tuple[str, dict[str, Any]]] = [
        ("/find-similar", {"app_id": app_ids[v], "model_version": bad}),
        ("/find-similar/batch", {"queries": [{"app_id": app_ids[v]}], "model_version": bad}),
    ]
    if "POST /predict" in OPERATIONS:
        routes.append(("/predict", {"app_id": app_ids[v], "model_version": bad}))
    for route, body in routes:
        p = assert_problem(client.post(route, json=body), 422, field="model_version")
        assert p["type"].endswith(("/unknown-model-version", "/validation-error"))
    assert_problem(client.get("/drift", params={"model_version": bad}), 422, field="model_version")
