"""A whole class opening the app at once on a fresh server: no page may break.

Streamlit runs each session's script in its own thread, so on a cold server several sessions import
torch, captum, plotly... at the same moment. Python's import locks do not make a thread importing
`torch.nn.parameter` wait for a `torch.nn` another thread is still initialising, so without
`pages/warm` one of them got a half-made module ("partially initialized module 'torch.nn.parameter'",
"cannot initialize type RpcBackendOptions"). Here a fresh server gets nine sessions at once, each on a
different page of one finished run, through Streamlit's own websocket protocol (bench/classroom.py's
client, no browser), and every page must finish with no exception element and no traceback in the log.
"""

from __future__ import annotations

import asyncio
import re
import sys
from urllib.parse import urlparse

from conftest import fast_config, small_subset, train_runs
from streamlit_server import ROOT, serving_app

sys.path.insert(0, str(ROOT / "bench"))
from classroom import open_page  # noqa: E402  (the websocket client of Streamlit's protocol)

PAGES = ["lesson", "overview", "runs", "train", "sample_weights", "embeddings", "attributions", "compare",
         "explorer"]


def test_a_cold_server_serves_every_page_at_once(tmp_path, mnist5k):
    root = tmp_path / "runs"
    root.mkdir()
    run_id = train_runs(root, {"cbd": fast_config(defense="cbd", defense_params={
        "backdoor_steps": 20, "epochs": 1, "batch_size": 64})}, small_subset(*mnist5k, 600, 200))["cbd"]

    async def everyone_at_once(port: int) -> list[tuple[float, list[str]]]:
        return list(await asyncio.gather(*(open_page(port, page, run_id, 240.0) for page in PAGES * 3)))

    with serving_app(root, flags=("--server.enableXsrfProtection", "false")) as url:
        results = asyncio.run(everyone_at_once(urlparse(url).port))
    shown = {page: messages for page, (_, messages) in zip(PAGES * 3, results) if messages}
    log = (root / "streamlit.log").read_text()
    assert not shown, shown
    assert not re.search(r"Traceback|partially initialized", log), log[-3000:]
