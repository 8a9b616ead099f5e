"""The restricted unpickler: accepted layouts load, code-running pickles are refused before they run."""

from __future__ import annotations

import base64
import gzip
import os
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from appsim.data.safe_pickle import ALLOWED_GLOBALS, safe_load, safe_loads
from appsim.errors import DataError, UnsafePickleError


class _Evil:
    """Unpickling calls ``func(*args)``: a classic payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _marker_cmd(marker: Path) -> str:
    return f"touch {marker}"


def _global_call(module: str, name: str, arg: str, protocol: int) -> bytes:
    """Hand-written pickle calling ``module.name(arg)``: GLOBAL (protocol 2/3) or STACK_GLOBAL (4/5)."""

    def unicode(s: str) -> bytes:
        b = s.encode()
        return b"X" + len(b).to_bytes(4, "little") + b

    head = b"\x80" + bytes([protocol])
    if protocol < 4:
        ref = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    else:
        ref = unicode(module) + unicode(name) + b"\x93"
    return head + ref + unicode(arg) + b"\x85R."


CALLS = {
    "os.system": ("os", "system", "{cmd}"),
    "posix.system": ("posix", "system", "{cmd}"),
    "builtins.eval": ("builtins", "eval", "open({marker!r}, 'w').close()"),
    "builtins.exec": ("builtins", "exec", "open({marker!r}, 'w').close()"),
    "subprocess.getoutput": ("subprocess", "getoutput", "{cmd}"),
}


def test_hand_written_payload_really_runs_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the payloads below are live (plain ``pickle.loads`` runs them)."""
    marker = tmp_path / "ran"
    pickle.loads(_global_call("os", "system", _marker_cmd(marker), 4))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_global_call_is_refused_before_it_runs(tmp_path: Path, call: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    module, name, template = CALLS[call]
    arg = template.format(cmd=_marker_cmd(marker), marker=str(marker))
    path = tmp_path / "evil.pkl"
    path.write_bytes(_global_call(module, name, arg, protocol))
    with pytest.raises(UnsafePickleError) as exc:
        safe_load(path)
    assert call in str(exc.value)
    assert exc.value.extra["global_name"] == call
    assert exc.value.check == "allow-list"
    assert exc.value.path == str(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("where", ["dict-value", "list-in-dict", "dataframe-cell"])
def test_nested_reduce_payload_is_refused(tmp_path: Path, where: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil(os.system, _marker_cmd(marker))
    obj: Any = {
        "dict-value": {"APP_1": np.zeros(3), "APP_2": evil},
        "list-in-dict": {"app_id": ["APP_1", "APP_2"], "embedding": [[0.0, 1.0], [1.0, evil]]},
        "dataframe-cell": pd.DataFrame({"app_id": ["APP_1"], "embedding": [evil]}),
    }[where]
    with pytest.raises(UnsafePickleError, match=rf"{os.system.__module__}\.system"):
        safe_loads(pickle.dumps(obj, protocol=protocol))
    assert not marker.exists()


def test_real_subprocess_reduce_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Evil(subprocess.call, ["touch", str(marker)]))
    with pytest.raises(UnsafePickleError, match=r"subprocess\.call"):
        safe_loads(blob)
    assert not marker.exists()


def test_gzip_wrapped_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = gzip.compress(pickle.dumps(_Evil(os.system, _marker_cmd(marker))), mtime=0)
    with pytest.raises(UnsafePickleError):
        safe_loads(blob)
    assert not marker.exists()


def test_codecs_encode_only_for_latin1() -> None:
    # protocol 2 spells bytes as _codecs.encode(str, "latin1"): allowed; any other codec is refused
    assert safe_loads(pickle.dumps(b"\x00\xffab", protocol=2)) == b"\x00\xffab"
    evil = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(UnsafePickleError, match="latin1"):
        safe_loads(evil)


def test_corrupt_pickle_is_a_data_error() -> None:
    blob = pickle.dumps({"APP_1": np.arange(4.0)})
    with pytest.raises(DataError) as exc:
        safe_loads(blob[: len(blob) // 2], source="x.pkl")
    assert not isinstance(exc.value, UnsafePickleError)
    assert exc.value.check == "unpickle"


def _layouts() -> dict[str, Any]:
    ids = ["APP_1", "APP_2", "APP_3"]
    x = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    return {
        "dict-ndarray": {i: x[k] for k, i in enumerate(ids)},
        "dict-float32": {i: x[k].astype(np.float32) for k, i in enumerate(ids)},
        "dict-list": {i: x[k].tolist() for k, i in enumerate(ids)},
        "ordered-dict": OrderedDict((i, x[k]) for k, i in enumerate(ids)),
        "dict-of-lists": {"app_id": ids, "embedding": list(x)},
        "dict-of-arrays": {"app_ids": np.array(ids), "embeddings": x},
        "ndarray": x,
        "numpy-scalars": {"a": np.float64(1.5), "b": np.int64(3)},
        "df-numeric": pd.concat([pd.DataFrame({"app_id": ids}), pd.DataFrame(x)], axis=1),
        "df-vector": pd.DataFrame({"app_id": ids, "embedding": list(x)}),
        "df-index": pd.DataFrame(x, index=pd.Index(ids, name="app_id")),
        "df-object-ids": pd.DataFrame({"app_id": pd.Series(ids, dtype=object), "embedding": list(x)}),
        "series": pd.Series(list(x), index=ids),
    }


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        return True
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
        return True
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b)) and a.dtype == b.dtype
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("layout", sorted(_layouts()))
def test_accepted_layouts_round_trip(layout: str, protocol: int) -> None:
    obj = _layouts()[layout]
    assert _equal(obj, safe_loads(pickle.dumps(obj, protocol=protocol)))


# Written by pandas 2.2.3 / numpy 1.26.4 (protocol 5) and pandas 1.5.3 / numpy 1.24.4 (protocol 3, with the
# removed Int64Index): the company's files may come from older stacks. Both hold ids APP_1..3 and
# vectors [[1, 2], [3, 4], [5, 0.5]]. See tests/unit/test_company.py for the same bytes through the import.
LEGACY_PD22_NUMERIC_COLUMNS = base64.b64decode(
    "gAWVLwMAAAAAAACMEXBhbmRhcy5jb3JlLmZyYW1llIwJRGF0YUZyYW1llJOUKYGUfZQojARfbWdylIwecGFuZGFzLmNvcmUuaW50"
    "ZXJuYWxzLm1hbmFnZXJzlIwMQmxvY2tNYW5hZ2VylJOUjBZwYW5kYXMuX2xpYnMuaW50ZXJuYWxzlIwPX3VucGlja2xlX2Jsb2Nr"
    "lJOUjBVudW1weS5jb3JlLm11bHRpYXJyYXmUjAxfcmVjb25zdHJ1Y3SUk5SMBW51bXB5lIwHbmRhcnJheZSTlEsAhZRDAWKUh5RS"
    "lChLAUsBSwOGlGgPjAVkdHlwZZSTlIwCTziUiYiHlFKUKEsDjAF8lE5OTkr/////Sv////9LP3SUYoldlCiMBUFQUF8xlIwFQVBQ"
    "XzKUjAVBUFBfM5RldJRijAhidWlsdGluc5SMBXNsaWNllJOUSwBLAUsBh5RSlEsCh5RSlGgLjBJudW1weS5jb3JlLm51bWVyaWOU"
    "jAtfZnJvbWJ1ZmZlcpSTlCiWMAAAAAAAAAAAAAAAAADwPwAAAAAAAAhAAAAAAAAAFEAAAAAAAAAAQAAAAAAAABBAAAAAAAAA4D+U"
    "aBiMAmY4lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGJLAksDhpSMAUOUdJRSlGglSwFLA0sBh5RSlEsCh5RSlIaUXZQo"
    "jBhwYW5kYXMuY29yZS5pbmRleGVzLmJhc2WUjApfbmV3X0luZGV4lJOUaD2MBUluZGV4lJOUfZQojARkYXRhlGgOaBFLAIWUaBOH"
    "lFKUKEsBSwOFlGgbiV2UKIwGYXBwX2lklIwCZTCUjAJlMZRldJRijARuYW1llE51hpRSlGg/jBlwYW5kYXMuY29yZS5pbmRleGVz"
    "LnJhbmdllIwKUmFuZ2VJbmRleJSTlH2UKGhNTowFc3RhcnSUSwCMBHN0b3CUSwOMBHN0ZXCUSwF1hpRSlGWGlFKUjARfdHlwlIwJ"
    "ZGF0YWZyYW1llIwJX21ldGFkYXRhlF2UjAVhdHRyc5R9lIwGX2ZsYWdzlH2UjBdhbGxvd3NfZHVwbGljYXRlX2xhYmVsc5SIc3Vi"
    "Lg=="
)
LEGACY_PD15_VECTOR_COLUMN = base64.b64decode(
    "gANjcGFuZGFzLmNvcmUuZnJhbWUKRGF0YUZyYW1lCnEAKYFxAX1xAihYBAAAAF9tZ3JxA2NwYW5kYXMuY29yZS5pbnRlcm5hbHMu"
    "bWFuYWdlcnMKQmxvY2tNYW5hZ2VyCnEEY3BhbmRhcy5fbGlicy5pbnRlcm5hbHMKX3VucGlja2xlX2Jsb2NrCnEFY251bXB5LmNv"
    "cmUubXVsdGlhcnJheQpfcmVjb25zdHJ1Y3QKcQZjbnVtcHkKbmRhcnJheQpxB0sAhXEIQwFicQmHcQpScQsoSwFLAksDhnEMY251"
    "bXB5CmR0eXBlCnENWAIAAABPOHEOiYiHcQ9ScRAoSwNYAQAAAHxxEU5OTkr/////Sv////9LP3RxEmKJXXETKFgFAAAAQVBQXzFx"
    "FFgFAAAAQVBQXzJxFVgFAAAAQVBQXzNxFmgGaAdLAIVxF2gJh3EYUnEZKEsBSwKFcRpoDVgCAAAAZjhxG4mIh3EcUnEdKEsDWAEA"
    "AAA8cR5OTk5K/////0r/////SwB0cR9iiUMQAAAAAAAA8D8AAAAAAAAAQHEgdHEhYmgGaAdLAIVxImgJh3EjUnEkKEsBSwKFcSVo"
    "HYlDEAAAAAAAAAhAAAAAAAAAEEBxJnRxJ2JoBmgHSwCFcShoCYdxKVJxKihLAUsChXEraB2JQxAAAAAAAAAUQAAAAAAAAOA/cSx0"
    "cS1iZXRxLmJjYnVpbHRpbnMKc2xpY2UKcS9LAEsCSwGHcTBScTFLAodxMlJxM4VxNF1xNShjcGFuZGFzLmNvcmUuaW5kZXhlcy5i"
    "YXNlCl9uZXdfSW5kZXgKcTZjcGFuZGFzLmNvcmUuaW5kZXhlcy5iYXNlCkluZGV4CnE3fXE4KFgEAAAAZGF0YXE5aAZoB0sAhXE6"
    "aAmHcTtScTwoSwFLAoVxPWgQiV1xPihYBgAAAGFwcF9pZHE/WAkAAABlbWJlZGRpbmdxQGV0cUFiWAQAAABuYW1lcUJOdYZxQ1Jx"
    "RGg2Y3BhbmRhcy5jb3JlLmluZGV4ZXMubnVtZXJpYwpJbnQ2NEluZGV4CnFFfXFGKGg5aAZoB0sAhXFHaAmHcUhScUkoSwFLA4Vx"
    "SmgNWAIAAABpOHFLiYiHcUxScU0oSwNoHk5OTkr/////Sv////9LAHRxTmKJQxgHAAAAAAAAAAgAAAAAAAAACQAAAAAAAABxT3Rx"
    "UGJoQk51hnFRUnFSZYZxU1JxVFgEAAAAX3R5cHFVWAkAAABkYXRhZnJhbWVxVlgJAAAAX21ldGFkYXRhcVddcVhYBQAAAGF0dHJz"
    "cVl9cVpYBgAAAF9mbGFnc3FbfXFcWBcAAABhbGxvd3NfZHVwbGljYXRlX2xhYmVsc3FdiHN1Yi4="
)
LEGACY_VECTORS = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.5]])


def test_legacy_pandas_pickles_load_without_deprecation_warnings() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = safe_loads(LEGACY_PD22_NUMERIC_COLUMNS)
        b = safe_loads(LEGACY_PD15_VECTOR_COLUMN)
    assert a["app_id"].tolist() == ["APP_1", "APP_2", "APP_3"]
    assert np.array_equal(a[["e0", "e1"]].to_numpy(), LEGACY_VECTORS)
    assert b.index.tolist() == [7, 8, 9]
    assert np.array_equal(np.stack(b["embedding"].tolist()), LEGACY_VECTORS)


def test_allow_list_is_small_and_has_no_callables_that_run_code() -> None:
    targets = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS.values()}
    assert len(targets) <= 20
    for bad in ("builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__", "os.system"):
        assert bad not in targets
    assert all(
        m.split(".")[0] in {"builtins", "collections", "numpy", "pandas", "appsim"}
        for m, _ in ALLOWED_GLOBALS.values()
    )
