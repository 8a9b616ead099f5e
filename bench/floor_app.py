"""The HTTP floor of ``bench_http.py``: a bare FastAPI app whose ``POST /floor`` returns a fixed list of 10
neighbour-shaped objects, served with the same uvicorn settings as ``appsim serve`` (1 worker, uvloop /
httptools when installed, no access log).

    .venv/bin/python bench/floor_app.py --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI

app = FastAPI(title="floor")

FIXED: list[dict[str, Any]] = [
    {
        "rank": i + 1,
        "app_id": str(284882215 + i),
        "name": f"App {i}",
        "category": "Games",
        "platform": "ios",
        "score": 0.9 - i * 0.01,
    }
    for i in range(10)
]


@app.post("/floor")
async def floor() -> list[dict[str, Any]]:
    return FIXED


@app.get("/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    a = ap.parse_args()
    # the arguments of appsim.cli.serve
    uvicorn.run(
        "floor_app:app",
        host=a.host,
        port=a.port,
        workers=1,
        log_level="warning",
        timeout_graceful_shutdown=30,
        access_log=False,
    )


if __name__ == "__main__":
    main()
