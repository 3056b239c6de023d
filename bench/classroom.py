"""A class on one app server, measured on the server side: N simulated sessions open pages of one
finished run at once, round after round (each round is every session reloading), and the script prints
the page-ready time (p50, p95) per round and the server's resident memory (RSS) after it.

    python bench/classroom.py --sessions 10 --rounds 4            # trains a small run first (~20 s)
    python bench/classroom.py --sessions 30 --run DIR              # or over an existing finished run
    python bench/classroom.py --sessions 10 --run DIR --pages attributions   # one page only

How: `streamlit run app.py` on a free port over a temporary runs root holding the run (copied), then each
session is a bare websocket client of Streamlit's own protocol (`/_stcore/stream`, the protobuf messages
the browser sends): it connects as a fresh tab would, asks for one page (`rerun_script` with the page's
name and `?run=`), and counts as ready when the server reports `script_finished`. No browser runs, so
the figures are the server's alone (rendering in Chromium is not counted; a browser's own CPU on this
machine would make them worse). Sessions cycle through the pages a lesson uses. The server runs with
`--server.enableXsrfProtection false` because these clients hold no XSRF cookie; nothing else changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = ["lesson", "runs", "train", "sample_weights", "embeddings", "attributions", "compare"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_run(root: Path) -> Path:
    print("training a small CBD run (mnist5k, BadNets 10%, 2 epochs)...", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--out", str(root), "--json", "--epochs", "2",
                           "--defense-param", "backdoor_steps=64"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["run_dir"])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def open_page(port: int, page: str, run_id: str, timeout: float) -> tuple[float, list[str]]:
    """Seconds from asking for `page` in a fresh session to the server's script_finished, and the
    exceptions the page showed ("Type: message" each; a page that broke is not "ready")."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    started = time.perf_counter()
    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                                  max_size=None) as ws:
        message = BackMsg()
        message.rerun_script.query_string = f"run={run_id}"
        message.rerun_script.page_name = page
        await ws.send(message.SerializeToString())
        exceptions: list[str] = []
        while True:
            raw = await asyncio.wait_for(ws.recv(), timeout)
            forward = ForwardMsg()
            forward.ParseFromString(raw)
            kind = forward.WhichOneof("type")
            if kind == "delta" and forward.delta.WhichOneof("type") == "new_element" \
                    and forward.delta.new_element.WhichOneof("type") == "exception":
                shown = forward.delta.new_element.exception
                exceptions.append(f"{shown.type}: {shown.message}")
            if kind == "script_finished":
                return time.perf_counter() - started, exceptions


async def one_round(port: int, sessions: int, run_id: str, timeout: float, offset: int,
                    cycle: list[str] = PAGES) -> list[tuple[float, list[str]]]:
    pages = [cycle[(offset + i) % len(cycle)] for i in range(sessions)]
    return list(await asyncio.gather(*(open_page(port, page, run_id, timeout) for page in pages)))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--run", type=Path, help="a finished run folder (default: train a small one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one page may take")
    parser.add_argument("--pages", nargs="+", default=PAGES, choices=PAGES,
                        help="the pages the sessions cycle through (default: all of them)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="classroom-"))
    server = None
    try:
        source = args.run or small_run(root / "made")
        run = root / "runs" / source.name
        shutil.copytree(source, run)
        port = free_port()
        log = open(root / "streamlit.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless",
             "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
             "--server.enableXsrfProtection", "false"],
            cwd=ROOT, env={**os.environ, "BACKDOOR_LAB_RUNS": str(root / "runs")}, stdout=log,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        print(f"server pid {server.pid}, RSS at start {rss_mb(server.pid):.0f} MB; {args.sessions} sessions x "
              f"{args.rounds} rounds over run {run.name} ({os.cpu_count()} CPUs)")
        print("| round | p50 page ready (s) | p95 (s) | slowest (s) | server RSS after (MB) | exceptions |")
        print("|---|---|---|---|---|---|")
        for number in range(args.rounds):
            results = asyncio.run(one_round(port, args.sessions, run.name, args.timeout, number, args.pages))
            times = [seconds for seconds, _ in results]
            print(f"| {number + 1} | {statistics.median(times):.2f} | {percentile(times, 0.95):.2f} | "
                  f"{max(times):.2f} | {rss_mb(server.pid):.0f} | {sum(len(e) for _, e in results)} |", flush=True)
            for shown in sorted({message for _, messages in results for message in messages}):
                print(f"  exception: {shown[:300]}", file=sys.stderr)
        log.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
            from cbd_core import jobs

            jobs.stop_workers(root / "runs")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
