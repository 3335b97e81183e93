"""Benchmark the served app: cold start to a served page, and /tokenize latency.

Launches ``python app.py`` on 127.0.0.1 at a free port (as a user would), times
how long until the page answers, then calls ``/tokenize`` through
``gradio_client`` and prints a table of latencies (the first call includes
loading the tokenizer).

    python scripts/bench_app.py --calls 50
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS = {"book example (7 tokens)": "A photograph of a puppy",
           "long prompt (cut at 77)": "a red sneaker on a blue table, " * 20,
           "20,000 characters": "a puppy " * 2500}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=30, help="calls per prompt")
    args = ap.parse_args()
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("app.py exited early")
                time.sleep(0.05)
        cold = time.perf_counter() - start
        from gradio_client import Client

        client = Client(url, verbose=False)
        tokenizer = "CLIP ViT-L/14 (offline)"
        t = time.perf_counter()
        client.predict(prompt="warm up", tokenizer=tokenizer, api_name="/tokenize")
        first = time.perf_counter() - t
        print(f"| measure | value |\n|---|---|\n| cold start to served page | {cold:.2f} s |\n"
              f"| first /tokenize (loads the tokenizer) | {first * 1000:.0f} ms |")
        for label, prompt in PROMPTS.items():
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                client.predict(prompt=prompt, tokenizer=tokenizer, api_name="/tokenize")
                times.append(time.perf_counter() - t)
            times.sort()
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            print(f"| /tokenize, {label}: median / p95 | {statistics.median(times) * 1000:.0f} / {p95 * 1000:.0f} ms |")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
