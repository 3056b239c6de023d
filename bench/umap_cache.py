"""How long a fresh process takes to its first and second UMAP map, with an empty or a filled numba
cache (the table in cbd_core/analysis/embeddings.py's docstring). Run it twice on one cache folder:

    rm -rf /tmp/nb && BACKDOOR_LAB_CACHE=/tmp/nb python bench/umap_cache.py    (cold cache)
    BACKDOOR_LAB_CACHE=/tmp/nb python bench/umap_cache.py                      (warm cache)

Prints one JSON line: the wall and CPU seconds of importing umap, of warm_up() (--warm-up), and of two
maps of random float32 features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core.analysis.embeddings import _import_umap, configure_numba_cache, umap_2d, warm_up  # noqa: E402


def bench(points: int, dims: int, seeded: bool, warm: bool) -> dict[str, float]:
    """Wall and CPU seconds of import, optional warm_up, and two maps in this process."""
    timings: dict[str, float] = {}

    def timed(label: str, work: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        timings[f"{label}_s"] = round(time.perf_counter() - wall, 2)
        timings[f"{label}_cpu_s"] = round(time.process_time() - cpu, 2)

    timed("import", _import_umap)
    if warm:
        timed("warm_up", lambda: warm_up(0 if seeded else None))
    x = np.random.default_rng(1).standard_normal((points, dims)).astype(np.float32)
    for i in (1, 2):
        timed(f"fit{i}", lambda: umap_2d(x, 0 if seeded else None))
    return timings


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="time UMAP maps in a fresh process")
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--unseeded", action="store_true", help="random_state=None: umap may use every core")
    parser.add_argument("--warm-up", action="store_true", help="call warm_up() before the first map")
    args = parser.parse_args()
    cache = configure_numba_cache()
    result = bench(args.points, args.dims, not args.unseeded, args.warm_up)
    print(json.dumps({"cache": str(cache), "points": args.points, "dims": args.dims,
                      "seeded": not args.unseeded, **result}))
