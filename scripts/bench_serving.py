#!/usr/bin/env python
"""Serving overhead: each tab's main job three ways, in one run, on one machine.

For every job the same work is timed
  (a) through the API of a freshly started app (``python app.py`` on 127.0.0.1,
      called with ``gradio_client``, timed from the client, which downloads the output
      files as the tests and a browser do); (a') the same without the downloads;
      (a'') the same with ``ssl_verify=False``: the URL is plain http, so nothing is verified
      either way, but by default gradio_client's httpx builds an SSL context, loading the
      certificate bundle (about 20-30 ms), for every connection it opens: the join, the
      event stream and each file download,
  (b) through the engine in this plain process: the tab's event handler called directly, as
      an API caller (no live pictures: see tabs.common.shows_live_pictures), so the same engine
      calls and picture work, without server, queue or gradio's processing,
  (c) through a plain diffusers reference (UNet2DModel + DPMSolverMultistepScheduler,
      StableDiffusionPipeline, AutoencoderKL, CLIPTokenizer).
(b) and (c) run on the one torch thread the app runs its model work on
(``engine.device.on_torch_thread``). The three ways run interleaved, in a rotating order, so background load hits
them alike; the table shows medians and the ratios between them. A busy
machine changes the seconds much more than the ratios: compare ratios.

Jobs (the issue's figures):
  Fashion   /sample_fashion: 16 Sandals, DPM-Solver++ 20 steps, guidance 2
  mini-SD   /generate: 4 images of 64 px, 25 steps, guidance 2, "a blue sneaker"
  VAE       /vae_roundtrip: the mini VAE on the 64 px example
  tokenize  /tokenize: the book's prompt

    python scripts/bench_serving.py             # 3 repetitions, about 4 minutes on 2 busy cores
    python scripts/bench_serving.py --quick     # 1 repetition
    python scripts/bench_serving.py --jobs minisd --app-env OMP_NUM_THREADS=1
    python scripts/bench_serving.py --load 500 --clients 64   # the load test only (about 2 minutes)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from engine.device import describe_machine, on_torch_thread, setup_cpu  # noqa: E402

FASHION_UNET = "Fashion-MNIST UNet · CPU (2.7 M)"
MINI_SD = "mini-SD (offline)"
MINI_VAE = "mini VAE (offline)"
TOKENIZER = "CLIP ViT-L/14 (offline)"
VAE_IMAGE = REPO_ROOT / "assets" / "examples" / "colour_fashion_64.png"
TOKENIZE_PROMPT = "A photograph of a puppy"

FASHION = dict(label="Sandal", count=16, sampler="DPM-Solver++", num_inference_steps=20, guidance_scale=2.0, seed=42)
MINI = dict(prompt="a blue sneaker", negative_prompt="", guidance_scale=2.0, num_inference_steps=25, seed=42,
            width=64, height=64, num_images=4)
VAE = dict(size=64, fit="crop")


# ----------------------------------------------------------------------------
# The machine


def machine() -> str:
    from engine.fashion.sampling import use_cpu_bf16

    dtype = "bf16 autocast (Fashion), fp32 (others)" if use_cpu_bf16("cpu") else "fp32"
    return f"{describe_machine()}; dtype {dtype}"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------
# (a) the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(extra_env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """``python app.py`` on a free port; returns (process, url, seconds until the page was served)."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), **extra_env)
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
            return proc, url, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                sys.exit("app.py exited before serving its page")
            time.sleep(0.05)


def api_fashion(client) -> dict:
    _, _, info = client.predict(**FASHION, randomize_seed=False, model=FASHION_UNET, api_name="/sample_fashion")
    return {"engine_s": info["wall_time_s"]}


def api_mini_sd(client) -> dict:
    _, info, _ = client.predict(**MINI, model=MINI_SD, scheduler="default", randomize_seed=False,
                                api_name="/generate")
    return {"loop_s": info["loop_seconds"]}


def api_vae(client) -> dict:
    from gradio_client import handle_file

    client.predict(image=handle_file(str(VAE_IMAGE)), vae=MINI_VAE, **VAE, api_name="/vae_roundtrip")
    return {}


def api_tokenize(client) -> dict:
    client.predict(prompt=TOKENIZE_PROMPT, tokenizer=TOKENIZER, api_name="/tokenize")
    return {}


# ----------------------------------------------------------------------------
# (b) the engine, driven by the tab's own event handler in this process (no server, no queue, no
#     gradio pre/postprocessing): the same engine calls and the same PIL work as in (a)


def no_progress(*args, **kwargs) -> None:
    return None


# What gradio_client's requests carry: the handlers then skip the live pictures, as they do for (a).
API_CALLER = types.SimpleNamespace(headers={"x-gradio-user": "api"})


def engine_fashion() -> dict:
    from tabs.class_conditional import sample_fashion
    from tabs.common import last_output

    *_, info, _ = last_output(sample_fashion(**FASHION, randomize_seed=False, model=FASHION_UNET, caller=API_CALLER,
                                             progress=no_progress))
    return {"engine_s": info["wall_time_s"]}


def engine_mini_sd() -> dict:
    from tabs.common import last_output
    from tabs.text_to_image import generate_images

    _, info, _ = last_output(generate_images(**MINI, model=MINI_SD, scheduler="default", randomize_seed=False,
                                      original_size="", crops_coords_top_left="", target_size="",
                                      negative_original_size="", negative_crops_coords_top_left="",
                                      negative_target_size="", caller=API_CALLER, progress=no_progress))
    return {"loop_s": info["loop_seconds"]}


def engine_vae() -> dict:
    from tabs.vae import vae_roundtrip

    vae_roundtrip(str(VAE_IMAGE), MINI_VAE, **VAE)
    return {}


def engine_tokenize() -> dict:
    from tabs.tokenizer import tokenize

    tokenize(TOKENIZE_PROMPT, TOKENIZER)
    return {}


# ----------------------------------------------------------------------------
# (c) plain diffusers / transformers


class Reference:
    """The reference models, loaded once, straight from the shipped folders."""

    def __init__(self):
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DModel
        from transformers import CLIPTokenizer

        self.unet = UNet2DModel.from_pretrained(REPO_ROOT / "assets/fashion/unet-cpu").eval()
        self.pipe = StableDiffusionPipeline.from_pretrained(REPO_ROOT / "assets/mini-sd", safety_checker=None,
                                                            requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae = AutoencoderKL.from_pretrained(REPO_ROOT / "assets/mini-sd/vae").eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(REPO_ROOT / "assets/tokenizers/clip-vit-l-14")

    @torch.no_grad()
    def fashion(self) -> dict:
        """DPM-Solver++ (2nd order, x0 clipped like the engine), classifier-free guidance in one batch of 2N."""
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                                algorithm_type="dpmsolver++", solver_order=2, thresholding=True,
                                                sample_max_value=1.0)
        scheduler.set_timesteps(FASHION["num_inference_steps"])
        n, g = FASHION["count"], FASHION["guidance_scale"]
        generator = torch.Generator("cpu").manual_seed(FASHION["seed"])
        x = torch.randn((n, 1, 32, 32), generator=generator) * scheduler.init_noise_sigma
        labels = torch.cat([torch.full((n,), 10), torch.full((n,), 5)])  # null class, then Sandal
        for t in scheduler.timesteps:
            eps_uncond, eps_cond = self.unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
            x = scheduler.step(eps_uncond + g * (eps_cond - eps_uncond), t, x).prev_sample
        return {}

    def mini_sd(self) -> dict:
        self.pipe(MINI["prompt"], num_images_per_prompt=MINI["num_images"], width=MINI["width"],
                  height=MINI["height"], num_inference_steps=MINI["num_inference_steps"],
                  guidance_scale=MINI["guidance_scale"], generator=torch.Generator("cpu").manual_seed(MINI["seed"]))
        return {}

    @torch.no_grad()
    def vae_roundtrip(self) -> dict:
        import numpy as np
        from PIL import Image

        image = Image.open(VAE_IMAGE).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        self.vae.decode(self.vae.encode(x).latent_dist.mean).sample
        return {}

    def tokenize(self) -> dict:
        self.tokenizer(TOKENIZE_PROMPT, padding="max_length", max_length=77, truncation=True)
        return {}


# ----------------------------------------------------------------------------
# Under load: many clients, mixed small requests, a tokenizer probe, memory


SMALL_FASHION = dict(FASHION, count=4, num_inference_steps=10)
SMALL_MINI = dict(MINI, num_images=1, num_inference_steps=10)
NICE_CLIENTS = 10  # the load's clients run at this niceness (the app and the probe at 0)


def mixed_request(client, k: int) -> str:
    """Request number ``k`` of the mixed load (tokenize, a small Fashion sample, a small mini-SD image,
    a 64 px VAE round trip, tokenize), with its own seed so every output file is new. Returns the outcome."""
    from gradio_client import handle_file

    kind = ("tokenize", "fashion", "minisd", "vae", "tokenize")[k % 5]
    try:
        if kind == "tokenize":
            client.predict(prompt=f"{TOKENIZE_PROMPT} number {k}", tokenizer=TOKENIZER, api_name="/tokenize")
        elif kind == "fashion":
            client.predict(**dict(SMALL_FASHION, seed=k), randomize_seed=False, model=FASHION_UNET,
                           api_name="/sample_fashion")
        elif kind == "minisd":
            client.predict(**dict(SMALL_MINI, seed=k), model=MINI_SD, scheduler="default", randomize_seed=False,
                           api_name="/generate")
        else:
            client.predict(image=handle_file(str(VAE_IMAGE)), vae=MINI_VAE, **VAE, sample=True, seed=k,
                           api_name="/vae_roundtrip")
        return f"{kind} ok"
    except Exception as e:  # noqa: BLE001 - the outcome is the measurement
        busy = "busy" in str(e).lower() or "queue is full" in str(e).lower()
        return f"{kind} {'refused: server busy' if busy else 'failed: ' + str(e)[:80]}"


def probe_tokenizer(url: str, go, stop, seconds) -> None:
    """From ``go`` until ``stop`` is set, every 0.5 s: one /tokenize call, its latency put on ``seconds``.

    It runs in a process of its own, at normal priority: in the load's process it would wait for the GIL
    behind the clients' threads, and time them rather than the server."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    go.wait()
    while not stop.is_set():
        start = time.perf_counter()
        try:
            client.predict(prompt=TOKENIZE_PROMPT, tokenizer=TOKENIZER, api_name="/tokenize")
            seconds.put(time.perf_counter() - start)
        except Exception:  # noqa: BLE001
            seconds.put(float("inf"))
        stop.wait(0.5)
    seconds.put(None)


def load_test(url: str, pid: int, requests: int, clients: int) -> None:
    """``requests`` mixed requests from ``clients`` concurrent clients, after one of each has loaded every
    model; prints outcomes, the tokenizer probe's latency and the server's resident memory before/after."""
    import collections
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    spawn = multiprocessing.get_context("spawn")
    go, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    prober = spawn.Process(target=probe_tokenizer, args=(url, go, stop, results))
    prober.start()
    pool = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    for k in range(5):
        mixed_request(pool[0], k)
    rss_start = rss_mb(pid)
    # The clients stand for visitors on other machines, who cost this server no CPU: here they share its two
    # cores (64 gradio_clients keep more than one core busy), so they run at a lower priority and take what the
    # server and the probe leave. Without this, the probe times the load generator more than the server.
    os.nice(NICE_CLIENTS)
    go.set()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        outcomes = list(ex.map(lambda k: mixed_request(pool[k % clients], k), range(5, 5 + requests)))
    stop.set()
    probe = list(iter(results.get, None))
    prober.join()
    took, rss_end = time.perf_counter() - start, rss_mb(pid)
    print(f"\n{requests} mixed requests from {clients} clients in {took:.0f} s; outcomes:\n")
    print("| outcome | count |\n|---|---|")
    for outcome, count in sorted(collections.Counter(outcomes).items()):
        print(f"| {outcome} | {count} |")
    ok = sorted(x for x in probe if x != float("inf"))
    p95 = ok[min(len(ok) - 1, int(0.95 * len(ok)))] if ok else float("nan")
    print("\n| measure | value |\n|---|---|")
    print(f"| /tokenize probe during the load: answered / sent | {len(ok)} / {len(probe)} |")
    print(f"| /tokenize probe latency: median / p95 / max | {median(ok) * 1000:.0f} / {p95 * 1000:.0f} / "
          f"{(ok[-1] if ok else float('nan')) * 1000:.0f} ms |")
    print(f"| resident memory after warm-up → after the load | {rss_start:.0f} → {rss_end:.0f} MB "
          f"({(rss_end / rss_start - 1) * 100:+.1f}%) |")


# ----------------------------------------------------------------------------
# The run


def timed(fn, *args, pid: int | None = None) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds, what ``fn`` returned). CPU is this process's, or process ``pid``'s."""
    cpu = (lambda: process_cpu_seconds(pid)) if pid else time.process_time
    start, start_cpu = time.perf_counter(), cpu()
    extra = fn(*args)
    return time.perf_counter() - start, cpu() - start_cpu, extra


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="one timed run of each way")
    parser.add_argument("--jobs", default="fashion,minisd,vae,tokenize", help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for all three ways (OMP_NUM_THREADS for the app); "
                             "default: torch's own default")
    parser.add_argument("--tokenize-calls", type=int, default=20, help="later /tokenize calls to time")
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the app process only (repeatable), e.g. EXPLORER_THREADS=1")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="only the load test: N mixed requests (the issue's: --load 500 --clients 64)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the load test")
    parser.add_argument("--cold-starts", type=int, default=3,
                        help="fresh starts of the app timed to a served page (the median is reported)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    setup_cpu()
    extra_env = dict(item.split("=", 1) for item in args.app_env)
    if args.threads:
        torch.set_num_threads(args.threads)
        extra_env.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_start = load_average()
    print(f"machine: {machine()}", flush=True)

    colds = []
    for _ in range(max(1, args.cold_starts) - 1):  # the last start serves the measurements below
        proc, _, seconds = start_app(extra_env)
        colds.append(seconds)
        proc.terminate()
        proc.wait(timeout=30)
    proc, url, seconds = start_app(extra_env)
    colds.append(seconds)
    cold = median(colds)
    if args.load:
        try:
            load_test(url, proc.pid, args.load, args.clients)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(f"\nmachine: {machine()}; app environment: {extra_env or 'default'}")
        return
    try:
        from gradio_client import Client

        client = Client(url, verbose=False)
        client_links = Client(url, verbose=False, download_files=False)  # (a'): outputs stay on the server
        client_plain = Client(url, verbose=False, ssl_verify=False)  # (a''): no certificate bundle per connection
        rss_start = rss_mb(proc.pid)
        first_tokenize, _, _ = timed(api_tokenize, client)

        # (b) and (c) run on the app's one torch thread too: torch's OpenMP workers slow down as soon as two
        # threads of a process have run parallel work (engine.device), so both ways use the same one.
        reference = on_torch_thread(Reference)
        ways = {
            "fashion": (api_fashion, engine_fashion, reference.fashion),
            "minisd": (api_mini_sd, engine_mini_sd, reference.mini_sd),
            "vae": (api_vae, engine_vae, reference.vae_roundtrip),
            "tokenize": (api_tokenize, engine_tokenize, reference.tokenize),
        }
        jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
        unknown = set(jobs) - set(ways)
        if unknown:
            sys.exit(f"unknown jobs {sorted(unknown)}; choose from {sorted(ways)}")
        # runs[job][way]: (wall s, CPU s, extra) per timed run; way 0 = API, 1 = engine, 2 = diffusers,
        # 3 = API without downloads, 4 = API with ssl_verify=False
        api_clients = {0: client, 3: client_links, 4: client_plain}
        runs = {job: ([], [], [], [], []) for job in jobs}
        for rep in range(repeats + 1):  # round 0 is the warm-up: every model loads there
            for job in jobs:
                inner = 1 if job in ("fashion", "minisd") else 5  # cheap jobs repeat, so one hiccup is no median
                for way in [(rep + k) % 5 for k in range(5)]:  # rotate which way goes first
                    fn = ways[job][0 if way in api_clients else way]
                    for _ in range(inner):
                        if way in api_clients:
                            run = timed(fn, api_clients[way], pid=proc.pid)
                        else:
                            run = timed(on_torch_thread, fn)
                        if rep > 0:
                            runs[job][way].append(run)
                print(f"round {rep}/{repeats} {job} done (load {load_average()})", file=sys.stderr, flush=True)

        later = [timed(api_tokenize, client)[0] for _ in range(args.tokenize_calls)]
        rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    names = {"fashion": "Fashion `/sample_fashion` 16 imgs, DPM++ 20, g=2",
             "minisd": "mini-SD `/generate` 4×64 px, 25 steps, g=2",
             "vae": "VAE `/vae_roundtrip` mini VAE, 64 px",
             "tokenize": "tokenize `/tokenize` (7 tokens)"}
    print(f"\n{repeats} timed repetition(s) after a warm-up; medians; the three ways interleaved. "
          f"Load average (1/5/15 min): {load_start} at the start, {load_average()} at the end.")
    print("Wall: seconds as the caller waits. CPU: CPU seconds the work burned: (a) the app process, all its "
          "threads; (b), (c) this process. CPU barely depends on how busy the machine is; wall does.\n")
    print("| job | (a) API | (a′) API, no downloads | (a″) API, ssl_verify=False | (b) engine | (c) diffusers "
          "| a/b | a′/b | a/c | a″/c | b/c | CPU (a) | CPU (b) | CPU (c) | CPU a/b |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for job in jobs:
        wall = [median(r[0] for r in runs[job][way]) for way in range(5)]
        cpu = [median(r[1] for r in runs[job][way]) for way in range(5)]
        unit, k = ("ms", 1000) if wall[2] < 0.5 else ("s", 1)
        w = " | ".join(f"{wall[way] * k:.3g} {unit}" for way in (0, 3, 4, 1, 2))
        c = " | ".join(f"{x:.2f} s" for x in cpu[:3])
        cpu_ratio = f"×{cpu[0] / cpu[1]:.2f}" if cpu[1] >= 0.05 else "n/a"
        print(f"| {names[job]} | {w} | ×{wall[0] / wall[1]:.2f} | ×{wall[3] / wall[1]:.2f} | "
              f"×{wall[0] / wall[2]:.2f} | ×{wall[4] / wall[2]:.2f} | ×{wall[1] / wall[2]:.2f} | {c} | "
              f"{cpu_ratio} |")
    print()
    print("| measure | value |\n|---|---|")
    print(f"| cold start to a served page, median of {len(colds)} | {cold:.2f} s "
          f"({', '.join(f'{x:.2f}' for x in colds)}) |")
    print(f"| first /tokenize, right after the page is served (waits for the engine's imports, loads the "
          f"tokenizer) | {first_tokenize * 1000:.0f} ms |")
    print(f"| later /tokenize, median / max of {len(later)} | {median(later) * 1000:.0f} / "
          f"{max(later) * 1000:.0f} ms |")
    if "minisd" in jobs:
        app, plain = (median(r[2]["loop_s"] for r in runs["minisd"][way]) for way in (0, 1))
        print(f"| mini-SD `loop_seconds`: in the app / in this process | {app:.2f} s / {plain:.2f} s "
              f"(×{app / plain:.2f}) |")
    if "fashion" in jobs:
        app, plain = (median(r[2]["engine_s"] for r in runs["fashion"][way]) for way in (0, 1))
        print(f"| Fashion `wall_time_s`: in the app / in this process | {app:.2f} s / {plain:.2f} s "
              f"(×{app / plain:.2f}) |")
    print(f"| app resident memory: after the first /tokenize → at the end | {rss_start:.0f} → {rss_end:.0f} MB |")
    if extra_env:
        print(f"| app environment | {' '.join(f'{k}={v}' for k, v in extra_env.items())} |")
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
