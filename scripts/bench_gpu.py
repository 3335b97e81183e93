"""Full-size SD 1.5 and SDXL on a GPU: our loop against pipe(...), and the speed levers one by one.

The models are the real architectures with RANDOM weights (``engine.full_size``),
so nothing is downloaded; their images are noise and are never saved or shown.
For each scenario (SD 1.5 at 512 px, 30 and 50 steps; SDXL base at 1024 px,
30 steps; guidance 7.5, one image) and each setting, one process builds the
pipeline and runs, on the same components, our loop
(``run_to_end(text_to_image(pipe, preset, ...))``) and diffusers' ``pipe(...)``,
each after a short warm-up.

Settings: a baseline (float32, the classic ``AttnProcessor`` that materialises
the attention matrix, contiguous tensors, eager UNet, separate Q/K/V
projections, whole-image VAE decode), then one lever at a time: fp16, bf16,
sdpa (``AttnProcessor2_0``), channels_last (UNet), compile (``torch.compile``
of the UNet), fused_qkv (``unet.fuse_qkv_projections()``, which also switches
to SDPA: diffusers' ``FusedAttnProcessor2_0``), vae_tiling (tiles of half the
image side: the config's tiles are the whole image), then all of them together
(with fp16).

torch.compile guards on the UNet call's keyword arguments: our loop passes 3 and
pipe(...) more (``timestep_cond``, ``cross_attention_kwargs``, ...), so each
path compiles once, in its own warm-up; the timed runs reuse the compiled code.

Columns:

* UNet it/s: denoising steps per second in the steady state, (n - 1) / (t_n - t_1)
  over the synchronised step-end clock of the n steps (``callback_on_step_end``
  for pipe(...), each yielded step for our loop); one step is one UNet call on
  a batch of 2 ([uncond, cond]).
* seconds: one image end to end (prompt encoding, the loop, VAE decode).
* overhead: (our seconds - pipe seconds) / pipe seconds.
* peak memory: ``torch.cuda.max_memory_allocated`` (weights included); on a CPU
  the largest resident set size seen at a step end.
* TFLOP/s and % of peak: FLOPs per UNet call from ``engine.unet.anatomy``
  (FlopCounterMode, batch 1) x 2 (the guided batch) x our it/s, over the
  device's dense fp16/bf16 tensor peak (``PEAK_TFLOPS``, or ``--peak-tflops``).

    python scripts/bench_gpu.py                                  # on a CUDA GPU, all settings
    python scripts/bench_gpu.py --models sd15 --settings baseline,fp16,all --json bench.json
    python scripts/bench_gpu.py --tiny                           # CPU smoke run, tiny configs, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.full_size import build_random_pipeline, component_configs, random_weights_preset  # noqa: E402
from engine.txt2img import run_to_end, text_to_image  # noqa: E402
from engine.unet.anatomy import unet_flops  # noqa: E402

PROMPT = "A photograph of an astronaut riding a horse"
GUIDANCE = 7.5
SCENARIOS = [("sd15", 512, 30), ("sd15", 512, 50), ("sdxl-base", 1024, 30)]  # (model, side in px, steps)
TINY_SCENARIOS = [("sd15", 64, 2), ("sdxl-base", 64, 2)]
WARMUP_STEPS = 3  # a short run of each path before timing it (torch.compile compiles there); 1 with --tiny
# Dense (no sparsity) fp16/bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; first match wins.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.0), ("V100", 125.0), ("T4", 65.0)]


@dataclass(frozen=True)
class Setting:
    """One combination of levers; the defaults are the baseline."""

    name: str
    dtype: str = "float32"
    sdpa: bool = False
    channels_last: bool = False
    compile: bool = False
    fused_qkv: bool = False
    vae_tiling: bool = False


BASELINE = Setting("baseline")
SETTINGS = {
    "baseline": BASELINE,
    "fp16": replace(BASELINE, name="fp16", dtype="float16"),
    "bf16": replace(BASELINE, name="bf16", dtype="bfloat16"),
    "sdpa": replace(BASELINE, name="sdpa", sdpa=True),
    "channels_last": replace(BASELINE, name="channels_last", channels_last=True),
    "compile": replace(BASELINE, name="compile", compile=True),
    "fused_qkv": replace(BASELINE, name="fused_qkv", fused_qkv=True),
    "vae_tiling": replace(BASELINE, name="vae_tiling", vae_tiling=True),
    "all": Setting("all (fp16)", "float16", True, True, True, True, True),
}
COLUMNS = ["model", "size", "steps", "setting", "UNet it/s (ours)", "UNet it/s (pipe)", "seconds (ours)",
           "seconds (pipe)", "overhead ours vs pipe", "peak MiB (ours)", "peak MiB (pipe)", "TFLOP/s (ours)",
           "% of peak"]


# ----------------------------------------------------------------------------
# The device: clock, memory, peak FLOP rate


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; else the peak from getrusage)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_tflops(name: str, override: float | None) -> float | None:
    """The dense fp16/bf16 peak of the device called ``name``; ``override`` wins; None if unknown."""
    if override is not None:
        return override
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return tflops
    return None


# ----------------------------------------------------------------------------
# Building a pipeline with one setting's levers


def apply_levers(pipe, setting: Setting, side: int, compile_kwargs: dict) -> None:
    """Switch ``setting``'s levers on in place (the dtype is chosen when the pipeline is built)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0() if setting.sdpa else AttnProcessor()
    pipe.unet.set_attn_processor(processor)
    pipe.vae.set_attn_processor(processor)
    if setting.fused_qkv:
        pipe.unet.fuse_qkv_projections()  # installs FusedAttnProcessor2_0, an SDPA processor
    if setting.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if setting.vae_tiling:
        pipe.vae.enable_tiling()
        pipe.vae.tile_sample_min_size = side // 2
        pipe.vae.tile_latent_min_size = side // 2 // pipe.vae_scale_factor
    if setting.compile:
        pipe.unet.compile(**compile_kwargs)


def build(model: str, setting: Setting, side: int, device: str, tiny: bool, compile_kwargs: dict):
    dtype = getattr(torch, setting.dtype)
    pipe = build_random_pipeline(model, device=device, dtype=dtype, tiny=tiny, seed=0)
    apply_levers(pipe, setting, side, compile_kwargs)
    return pipe


# ----------------------------------------------------------------------------
# One timed run


class Clock:
    """Synchronised step-end timestamps and peak memory of one run."""

    def __init__(self, device: str):
        self.device, self.stamps, self.rss = device, [], 0
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        self.start = time.perf_counter()

    def stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        self.rss = max(self.rss, rss_bytes())

    def result(self) -> dict:
        synchronize(self.device)
        seconds = time.perf_counter() - self.start
        s = self.stamps
        its = (len(s) - 1) / (s[-1] - s[0]) if len(s) > 1 and s[-1] > s[0] else None
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = max(self.rss, rss_bytes())
        return {"seconds": seconds, "its": its, "steps": len(s), "peak_bytes": peak}


def _stamped(events, clock: Clock):
    """Pass ``text_to_image``'s events through, stamping the clock at each step's progress dict."""
    for event in events:
        if isinstance(event, dict):
            clock.stamp()
        yield event


def run_ours(pipe, preset, side: int, steps: int, device: str) -> dict:
    """Our loop, as the app runs it (no live preview)."""
    clock = Clock(device)
    run_to_end(_stamped(text_to_image(pipe, preset, prompt=PROMPT, guidance_scale=GUIDANCE,
                                      num_inference_steps=steps, width=side, height=side, seed=0,
                                      preview_every=0), clock))
    return clock.result()


def run_pipe(pipe, side: int, steps: int, device: str) -> dict:
    """diffusers' pipe(...) on the same components (default negative prompt: the same embeddings as ours)."""
    clock = Clock(device)

    def on_step_end(pipeline, i, t, callback_kwargs):
        clock.stamp()
        return callback_kwargs

    pipe(prompt=PROMPT, guidance_scale=GUIDANCE, num_inference_steps=steps, width=side, height=side,
         generator=torch.Generator("cpu").manual_seed(0), output_type="np", callback_on_step_end=on_step_end)
    return clock.result()


# ----------------------------------------------------------------------------
# A scenario x setting row


def measure(model: str, side: int, steps: int, setting: Setting, args) -> dict:
    """Build, warm up both paths (compiles happen here), then time ours and pipe(...)."""
    row = {"model": model, "size": side, "steps": steps, "setting": setting.name, "levers": asdict(setting)}
    pipe = None
    try:
        pipe = build(model, setting, side, args.device, args.tiny, args.compile_kwargs)
        preset = random_weights_preset(model, args.tiny)
        warm = 1 if args.tiny else min(WARMUP_STEPS, steps)
        run_ours(pipe, preset, side, warm, args.device)
        run_pipe(pipe, side, warm, args.device)
        ours, theirs = run_ours(pipe, preset, side, steps, args.device), run_pipe(pipe, side, steps, args.device)
        row.update(ours=ours, pipe=theirs, overhead=(ours["seconds"] - theirs["seconds"]) / theirs["seconds"])
        if ours["its"] is not None:
            row["tflops"] = args.flops[(model, side)] * 2 * ours["its"] / 1e12  # batch 2: [uncond, cond]
            row["peak_share"] = row["tflops"] / args.peak if args.peak else None
    except Exception as e:  # noqa: BLE001 - one failed lever (an OOM, a compile error) must not end the run
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    finally:
        del pipe
        if setting.compile:
            torch._dynamo.reset()  # compiled code can hold the old UNet; and each new UNet would count as a recompile
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_row(row: dict) -> list[str]:
    if "error" in row:
        return [row["model"], f"{row['size']}²", str(row["steps"]), f"{row['setting']} — {row['error']}"] + \
            ["-"] * (len(COLUMNS) - 4)
    ours, theirs = row["ours"], row["pipe"]
    return [row["model"], f"{row['size']}²", str(row["steps"]), row["setting"],
            _fmt(ours["its"], ".2f"), _fmt(theirs["its"], ".2f"),
            _fmt(ours["seconds"], ".2f"), _fmt(theirs["seconds"], ".2f"), f"{row['overhead']:+.1%}",
            _fmt(ours["peak_bytes"] / 2**20, ",.0f"), _fmt(theirs["peak_bytes"] / 2**20, ",.0f"),
            _fmt(row.get("tflops"), ".3g"), _fmt(row.get("peak_share"), ".1%")]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 64 px, 2 steps, on the CPU")
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    parser.add_argument("--models", default="sd15,sdxl-base", help="comma-separated: sd15, sdxl-base")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense fp16/bf16 peak")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; 'eager' with --tiny, to stay quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 with --tiny, steady on a shared CPU)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if not args.device.startswith("cuda") and not args.tiny:
        parser.error("full-size models need a CUDA GPU (hours on a CPU); run with --tiny for the CPU smoke test")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    args.compile_kwargs = {"backend": backend, **({"mode": args.compile_mode} if args.compile_mode else {})}
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    name = device_name(args.device)
    args.peak = peak_tflops(name, args.peak_tflops)
    scenarios = [s for s in (TINY_SCENARIOS if args.tiny else SCENARIOS) if s[0] in args.models]
    args.flops = {(m, side): unet_flops(component_configs(m, args.tiny)["unet"], side, side)
                  for m, side, _ in scenarios}
    rows = []
    for model, side, steps in scenarios:
        for key in args.settings:
            row = measure(model, side, steps, SETTINGS[key], args)
            print(f"{model} {side}px {steps} steps {key}: " + " | ".join(table_row(row)[4:9]), file=sys.stderr)
            rows.append(row)
    peak = f"{args.peak:g} TFLOP/s dense fp16/bf16" if args.peak else "unknown (give --peak-tflops)"
    print(f"Device: {name}; peak {peak}; torch {torch.__version__}, diffusers {diffusers.__version__}; float32 "
          f"matmuls in TF32: {torch.backends.cuda.matmul.allow_tf32}, convolutions: {torch.backends.cudnn.allow_tf32}. "
          "Random weights: timings only, images discarded. "
          f"Guidance {GUIDANCE:g}, one image; FLOPs per UNet call (batch 1): "
          + ", ".join(f"{m} {s}px {f / 1e12:.4g} TFLOP" for (m, s), f in args.flops.items()) + ".\n")
    print(markdown_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "peak_tflops": args.peak, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
