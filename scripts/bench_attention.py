"""What recording cross-attention (engine.unet.attention) costs, and how well the item word's map finds the item.

1. Time: the extra time of recording against the same loop without it.
   * The mini models (presets "mini-SD (offline)", "mini-SDXL (offline)")
     through ``text_to_image`` at their defaults (64 px, 25 steps, guidance 2):
     the whole run, then the summary and heatmaps the tab adds on top.
   * An SD-sized UNet (SD 1.5's published config, random weights, fp32) at
     512 px, i.e. a 64x64 latent, batch 2 as with guidance: a few UNet calls.
   The clock is the thread's CPU time (``time.thread_time``) with torch on one
   thread (``--threads``), so waiting for a busy CPU is not counted; runs
   alternate with and without recording so background load hits both alike,
   and a time is the median.
2. Memory: the peak bytes of live tensors during one UNet call (activations;
   weights and inputs made before are not counted), with and without
   recording, counted op by op by ``LiveTensorBytes`` (a TorchDispatchMode).
   SD at 512 px runs on the CPU for real; SD at 512 px and SDXL at 1024 px also
   run on PyTorch's ``meta`` device (shapes only: no 10 GB of SDXL weights),
   with the CPU's flash-attention kernel (on meta, PyTorch would pick the math
   kernel and count the (h w)^2 self-attention matrix that the CPU never
   makes). The SD rows check that meta and CPU agree. The formula's terms
   are printed next to them.
3. Lift: for prompts "a {colour} {item}" (``engine.mini.data``), the mean
   ``lift`` of the item word's map on the item's pixels
   (``engine.mini.measure.ink`` >= 0.3, area-averaged onto the 8x8 latent
   grid, where ``lift`` measures); an item of several tokens ("ankle boot",
   "t-shirt" = t, -, shirt) averages its tokens' maps (the head noun alone,
   its last token, is a column too).

Measured on 2026-11-25 (AMD EPYC, AVX2, no AVX-512; torch 2.13 CPU, 1 thread, fp32), sharing 2 cores with
training jobs (load 6-10), so the mini timings moved between runs:

* time, recording vs not: mini-SD +0.5%, +8.6%, +18.5%, +20.6% and mini-SDXL -4.2%, +6.6%, +8.0%, +8.7%
  in four runs (about 1.1 s a run); with the JSON summary and heatmaps +8% to +24%. By parts, recording
  adds about 0.3 ms per attn2 layer and step (explicit attention +0.15-0.19 ms, accumulating 0.12 ms) to
  a 33-45 ms mini UNet call with 7 such layers: 5-8%. SD-sized UNet at 512 px, batch 2: 32.6 s vs
  31.0 s a call (-5%, 2 calls each): within the noise, well under the 25% target.
* memory: peak live tensors +1.2 MiB (SD 512 px, CPU and meta agree to the byte) and +4.8 MiB (SDXL
  1024 px, meta): the accumulator only, because the largest attn2 transient (38.5 / 48.1 MiB) comes while
  fewer activations are alive than at the call's peak (260 / 630 MiB).
* lift of the item word, 80 prompts: mini-SD 1.06 ± 0.05 (first weights, 6def331) and 1.05 ± 0.07
  (retrained with positions, b6fec35), mini-SDXL 1.21 ± 0.09 (item area 25%).

    python scripts/bench_attention.py            # all three (about 15 CPU minutes; hours on a crowded machine)
    python scripts/bench_attention.py --quick    # fewer runs and prompts, SD-sized timing with 2 calls
    python scripts/bench_attention.py --skip time-sd
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.device import describe_machine  # noqa: E402
from engine.unet.attention import attention_maps, record_cross_attention  # noqa: E402

from engine.mini import data as mini_data  # noqa: E402
from engine.mini import measure  # noqa: E402

MINI_PRESETS = ("mini-SD (offline)", "mini-SDXL (offline)")
INK_THRESHOLD = measure.ITEM_INK
# The published UNet configs (their non-default values), random weights: the sizes matter here, not the values.
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)


def machine() -> str:
    return f"{describe_machine()}; dtype float32"


# ----------------------------------------------------------------------------
# 1. Time


def load_mini(name: str):
    from engine.loader import load
    from engine.presets import get_preset

    kind = "sdxl" if "SDXL" in name else "sd"
    preset = get_preset(name, kind)
    return load(preset, device="cpu", dtype=torch.float32), preset


def mini_run_kwargs(preset, prompt: str = "a red ankle boot", seed: int = 0) -> dict:
    options = preset.options
    size = int(options.get("default_size", 64))
    return dict(prompt=prompt, guidance_scale=float(options.get("default_guidance", 2.0)),
                num_inference_steps=int(options.get("default_steps", 25)), seed=seed, width=size, height=size)


def time_mini(name: str, repeats: int) -> dict:
    """CPU seconds of one text_to_image run of a mini model, without and with recording (medians)."""
    from engine.txt2img import run_to_end, text_to_image

    pipe, preset = load_mini(name)
    kwargs = mini_run_kwargs(preset)
    plain, recorded, entry = [], [], []
    for _ in range(repeats + 1):  # the first pair warms up and is dropped
        start = time.thread_time()
        run_to_end(text_to_image(pipe, preset, **kwargs, preview_every=0))
        plain.append(time.thread_time() - start)
        start = time.thread_time()
        with record_cross_attention(pipe.unet):
            run_to_end(text_to_image(pipe, preset, **kwargs, preview_every=0))
        recorded.append(time.thread_time() - start)
        start = time.thread_time()
        attention_maps(pipe, preset, **kwargs)  # recording, then the JSON summary and the heatmaps
        entry.append(time.thread_time() - start)
    med = {k: statistics.median(v[1:]) for k, v in (("plain", plain), ("recorded", recorded), ("entry", entry))}
    return {"what": f"{name}, text_to_image 64 px, {kwargs['num_inference_steps']} steps, guidance "
                    f"{kwargs['guidance_scale']:g}", **med}


def random_unet(config: dict, device: str = "cpu"):
    """A UNet2DConditionModel of this config with random weights (on ``meta``: shapes only, no memory)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        return UNet2DConditionModel(**config).eval()


def unet_inputs(unet, latent_side: int, batch: int = 2, device: str = "cpu") -> tuple[tuple, dict]:
    """Inputs of one guided UNet call: latents [batch, 4, s, s], a timestep, text [batch, 77, D], SDXL's extras."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, latent_side, latent_side, generator=g).to(device)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).to(device)
    kwargs = {"encoder_hidden_states": text, "return_dict": False}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        side = latent_side * 8
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g).to(device),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32).repeat(batch, 1).to(device)}
    return (sample, torch.tensor(500, device=device)), kwargs


@torch.no_grad()
def time_sd_unet(calls: int) -> dict:
    """CPU seconds of one SD-sized UNet call at 512 px, batch 2, without and with recording (medians)."""
    unet = random_unet(SD15_UNET)
    args, kwargs = unet_inputs(unet, 64)
    plain, recorded = [], []
    warm_args, warm_kwargs = unet_inputs(unet, 16)
    for recording in (contextlib.nullcontext(), record_cross_attention(unet)):  # warm-up, small and cheap
        with recording:
            unet(*warm_args, **warm_kwargs)
    for _ in range(calls):
        start = time.thread_time()
        unet(*args, **kwargs)
        plain.append(time.thread_time() - start)
        with record_cross_attention(unet):
            start = time.thread_time()
            unet(*args, **kwargs)
            recorded.append(time.thread_time() - start)
    return {"what": "SD 1.5-sized UNet (random weights), 512 px = 64x64 latent, batch 2, one call",
            "plain": statistics.median(plain), "recorded": statistics.median(recorded), "entry": None}


# ----------------------------------------------------------------------------
# 2. Memory


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that ops create inside the mode while they are alive; ``peak`` is the
    most at any moment. Views share their storage (counted once, freed with its last tensor). Tensors made
    before the mode (weights, inputs) are not counted; allocator slack and kernel scratch space are not seen."""

    def __init__(self):
        super().__init__()
        self.refs, self.sizes, self.live, self.peak = {}, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata  # the C++ StorageImpl: the same for every view of it
        if key not in self.refs:
            self.refs[key], self.sizes[key] = 0, storage.nbytes()
            self.live += self.sizes[key]
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]


def _cpu_flash(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """F.scaled_dot_product_attention as the CPU runs it in fp32 (its flash kernel), for meta tensors."""
    if attn_mask is not None:
        raise NotImplementedError("no attention mask in these UNet calls")
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                      scale=scale)[0]


@contextlib.contextmanager
def cpu_attention_kernel(device: str):
    """On ``meta``, make SDPA count like the CPU's flash kernel (no (h w)^2 matrix); elsewhere nothing."""
    original = F.scaled_dot_product_attention
    if device == "meta":
        F.scaled_dot_product_attention = _cpu_flash
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@torch.no_grad()
def peak_bytes(unet, args, kwargs, recording: bool, device: str) -> int:
    """Peak live tensor bytes of one UNet call, with or without recording every attn2 layer at this step."""
    context = record_cross_attention(unet) if recording else contextlib.nullcontext()
    with cpu_attention_kernel(device), context, LiveTensorBytes() as counter:
        unet(*args, **kwargs)
    return counter.peak


def formula(unet, latent_side: int, batch: int = 2, dtype_bytes: int = 4, tokens: int = 77) -> dict:
    """The recorder's memory by its terms, bytes: the accumulator T x h x w (float32), at most 6 snapshots,
    and the largest attn2 layer's transient: its scores and probabilities, 2 x batch x heads x (h_l w_l) x T."""
    from engine.unet.attention import MAX_SNAPSHOTS, SNAPSHOT_SIDE

    largest = 0
    side = latent_side
    for block, attn_dims in enumerate(_attn2_heads_per_level(unet)):
        if attn_dims:
            largest = max(largest, 2 * batch * max(attn_dims) * side * side * tokens * dtype_bytes)
        side = -(-side // 2) if block < len(unet.config.block_out_channels) - 1 else side
    snap = min(latent_side, SNAPSHOT_SIDE)
    return {"accumulator": tokens * latent_side ** 2 * 4, "snapshots": MAX_SNAPSHOTS * tokens * snap ** 2 * 4,
            "largest_layer_transient": largest}


def _attn2_heads_per_level(unet) -> list[list[int]]:
    """Per down level (latent side halves after each but the last), the head counts of its attn2 layers."""
    levels = []
    for block in unet.down_blocks:
        heads = [m.transformer_blocks[0].attn2.heads for m in getattr(block, "attentions", []) or []]
        levels.append(heads)
    return levels


def memory_rows(quick: bool) -> list[dict]:
    """SD at 512 px on the CPU (real) and on meta; SDXL at 1024 px on meta."""
    rows = []
    cases = [("SD 1.5-sized, 512 px", SD15_UNET, 64, "meta"), ("SDXL-sized, 1024 px", SDXL_UNET, 128, "meta")]
    if not quick:
        cases.insert(0, ("SD 1.5-sized, 512 px", SD15_UNET, 64, "cpu"))
    for label, config, side, device in cases:
        unet = random_unet(config, device)
        args, kwargs = unet_inputs(unet, side, device=device)
        plain = peak_bytes(unet, args, kwargs, False, device)
        recorded = peak_bytes(unet, args, kwargs, True, device)
        rows.append({"what": f"{label} ({device})", "plain": plain, "recorded": recorded,
                     **formula(unet, side)})
        del unet
    return rows


# ----------------------------------------------------------------------------
# 3. Lift


def lift_prompts(quick: bool) -> list[tuple[int, str, str]]:
    """(label, colour, prompt) for every Fashion-MNIST class and named colour (80), or 16 spread over them."""
    pairs = [(label, colour) for label in range(len(mini_data.CLASS_NOUNS))
             for colour in mini_data.COLOUR_NAMES]
    if quick:
        pairs = pairs[::5]
    return [(label, colour, mini_data.prompt_for(label, colour)) for label, colour in pairs]


def prompt_lifts(pipe, preset, label: int, colour: str, prompt: str, seed: int) -> dict | None:
    """One prompt's lifts (``engine.mini.measure.item_lifts``): item phrase, head noun, colour word, start token."""
    run = mini_run_kwargs(preset, prompt, seed)
    run.pop("prompt")
    return measure.item_lifts(pipe, preset, label, colour, prompt, **run)


def lift_table(name: str, quick: bool) -> dict:
    pipe, preset = load_mini(name)
    rows = [prompt_lifts(pipe, preset, label, colour, prompt, seed)
            for seed, (label, colour, prompt) in enumerate(lift_prompts(quick))]
    rows = [r for r in rows if r is not None]
    summary = {"model": name, "prompts": len(rows)}
    for key in ("item", "noun", "colour", "start", "area"):
        values = [r[key] for r in rows]
        summary[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return summary


# ----------------------------------------------------------------------------
# Tables


def print_time(rows: list[dict]) -> None:
    print("\n### Extra time of recording (thread CPU seconds, medians)\n")
    print("| run | without | with recording | overhead | with summary + heatmaps | overhead |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = f"{r['entry']:.3f} | {100 * (r['entry'] / r['plain'] - 1):+.1f}%" if r["entry"] else "- | -"
        print(f"| {r['what']} | {r['plain']:.3f} | {r['recorded']:.3f} | "
              f"{100 * (r['recorded'] / r['plain'] - 1):+.1f}% | {extra} |")


def print_memory(rows: list[dict]) -> None:
    mb = 2**20
    print("\n### Extra memory of recording, one UNet call, batch 2, float32 (peak live tensors, MiB)\n")
    print("| UNet (device) | peak without | peak with | extra | accumulator | 6 snapshots | largest attn2 transient |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['plain'] / mb:.1f} | {r['recorded'] / mb:.1f} | "
              f"{(r['recorded'] - r['plain']) / mb:+.1f} | {r['accumulator'] / mb:.2f} | {r['snapshots'] / mb:.2f} | "
              f"{r['largest_layer_transient'] / mb:.1f} |")


def print_lift(rows: list[dict]) -> None:
    print(f"\n### Lift on the item's pixels (ink >= {INK_THRESHOLD}), "
          "mean ± sd over prompts \"a {colour} {item}\"\n")
    print("| model | prompts | item word | head noun | colour word | start token | item area |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in ("item", "noun", "colour", "start", "area"))
        print(f"| {r['model']} | {r['prompts']} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timing runs, 2 SD-sized calls, 16 lift prompts, "
                                                             "memory on meta only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the clock counts this thread)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["time-mini", "time-sd", "memory", "lift"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}")
    results = {"machine": machine()}
    timing = []
    if "time-mini" not in args.skip:
        timing += [time_mini(name, 3 if args.quick else 7) for name in MINI_PRESETS]
    if "time-sd" not in args.skip:
        timing.append(time_sd_unet(2 if args.quick else 3))
    if timing:
        print_time(timing)
    if "memory" not in args.skip:
        results["memory"] = memory_rows(args.quick)
        print_memory(results["memory"])
    if "lift" not in args.skip:
        results["lift"] = [lift_table(name, args.quick) for name in MINI_PRESETS]
        print_lift(results["lift"])
    results["time"] = timing
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
