"""Cross-attention maps: which latent pixels look at which prompt token, while the loop runs.

In every transformer block of the SD/SDXL UNet, ``attn2`` is cross-attention:
its queries come from the latent pixels, its keys and values from the 77 text
encoder hidden states. The softmax row of one pixel,
softmax(Q K^T / sqrt(d)) [77], says how much of that pixel's update is read
from each token; one column, laid out on the pixel grid, is the token's map
(Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention
Control", §3.1; Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion
Using Cross Attention", §3, who upsample and sum the maps over layers and steps
as we do here).

How it is recorded, without touching the loop (``engine.txt2img.loop.denoise``):

* ``record_cross_attention(unet, ...)`` swaps the processor of every ``attn2``
  layer (``unet.attn_processors`` / ``unet.set_attn_processor``) for a
  ``RecordingAttnProcessor`` and keeps each ``attn1`` (self-attention) processor
  as it is, with its fast fused kernel. All originals come back on exit, even
  after an error.
* A forward pre-hook on the UNet counts its calls: the loop calls the UNet once
  per step, so the call index is the step index.
* The recording processor is diffusers' ``AttnProcessor`` written out: it
  computes the probabilities explicitly, output = probs @ V, then the same
  out-projection, residual and rescale (equal to the default processor within
  1e-5 in fp32). Layers and steps that are not selected run the original
  processor unchanged.
* Of the batch [uncond x n, cond x n] (classifier-free guidance) or [cond x n]
  (no guidance) it keeps the last n rows, the conditional ones (n =
  ``num_images``), averages over heads, sums over the n images, upsamples each
  token's [h_l, w_l] map bilinearly to the latent grid [h, w] and adds it to one
  float32 accumulator [77, h, w]. It also counts the terms added, so
  ``accumulator / count`` is the mean map, and at every pixel the mean maps of
  the 77 tokens sum to 1 (bilinear weights sum to 1, so upsampling keeps that).
  Every layer counts the same whatever its resolution.

Memory: the accumulator is 77 x h x w x 4 bytes (SD at 512 px: 1.3 MB), plus at
most ``MAX_SNAPSHOTS`` per-step maps of 77 x s x s x 4 bytes (s <=
``SNAPSHOT_SIDE``), plus, while one ``attn2`` layer runs, its probabilities
[2n x heads, h_l w_l, 77] and the scores they come from (what a fused kernel
never materialises). Self-attention, whose probabilities are (h w)^2, is never
recorded.

The shared UNet is modified for the duration of the ``with`` block: the app's
compute queue runs one job at a time, so no other request sees the recorder.
At the recorded steps an ``attn2`` layer runs plain attention: a processor
with more to it (IP-Adapter's extra image keys) would not be reproduced. On a
ZeroGPU Space the recording and ``summarize`` must run in the same GPU worker
as the loop, i.e. ``attention_maps`` itself needs the ``spaces.GPU`` wrapper.

Shapes: h, w = the latent's height and width (image / 8); T = 77 token
positions; maps are non-negative float tensors.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine import figures
from engine.tokenizer import prompt_tokens
from engine.unet.steps import select_steps
from engine.schedulers import DEFAULT, make_scheduler
from engine.txt2img import run_to_end, text_to_image

MAX_SNAPSHOTS = 6  # per-step maps kept for a step slider, evenly spaced over the selected steps
SNAPSHOT_SIDE = 16  # per-step maps are area-downsampled to at most this many latent pixels a side
BLOCK_PLACES = ("down", "mid", "up")
_PLACE_PREFIX = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
# ----------------------------------------------------------------------------
# Choosing what to record: steps and layers


def snapshot_steps(selected: range, limit: int = MAX_SNAPSHOTS) -> list[int]:
    """Up to ``limit`` step indices evenly spaced over ``selected``, first and last included."""
    if len(selected) > 2**40:  # "all" with an unknown number of steps: nothing to space out
        return []
    if len(selected) <= limit:
        return list(selected)
    picks = np.linspace(0, len(selected) - 1, limit).round().astype(int)
    return [selected[int(k)] for k in picks]


def cross_attention_layers(unet) -> list[str]:
    """The names of the UNet's cross-attention layers, in ``attn_processors`` order:
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2" (key minus ".processor")."""
    return [key.removesuffix(".processor") for key in unet.attn_processors if key.endswith("attn2.processor")]


@dataclass(frozen=True)
class LayerChoice:
    """Which ``attn2`` layers to record: ``names``, and among them only those whose feature map's
    shorter side is in ``sides`` (latent pixels; None: any side)."""

    names: frozenset
    sides: frozenset | None


def select_layers(layers, available: list[str]) -> LayerChoice:
    """``layers``: "all" (or None); a place "down", "mid", "up"; a side in latent pixels (an int, e.g. 16
    = the 16x16 layers of SD at 512 px); a layer name; or a list of these. In a list, places and names are
    joined (union), sides are joined, and a layer must match both: ["up", 16] = the up-block layers at 16.
    """
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    names, sides = set(), set()
    for item in items:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if item is None or item == "all":
            names.update(available)
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and item > 0:
            sides.add(int(item))
        elif isinstance(item, str) and item.strip().lower() in BLOCK_PLACES:
            prefix = _PLACE_PREFIX[item.strip().lower()]
            names.update(n for n in available if n.startswith(prefix))
        elif isinstance(item, str) and item.removesuffix(".processor") in available:
            names.add(item.removesuffix(".processor"))
        else:
            raise UserError(f"Unknown layers {item!r}: use 'all', 'down', 'mid', 'up', a side in latent "
                             f"pixels (8, 16, 32, 64), or one of the layer names: {', '.join(available)}.")
    if not names:
        names.update(available)
    return LayerChoice(frozenset(names), frozenset(sides) if sides else None)


def layer_grid(num_positions: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The [h_l, w_l] grid of a layer with ``num_positions`` = h_l * w_l queries, in a UNet whose input is
    ``latent_size`` (h, w): each down block halves the sides, rounding up (stride-2 convs, padding 1)."""
    h, w = latent_size
    while h * w > num_positions:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != num_positions:
        raise ValueError(f"A cross-attention layer has {num_positions} positions: no grid of a "
                         f"{latent_size[0]}x{latent_size[1]} latent has that many.")
    return h, w


# ----------------------------------------------------------------------------
# The recording processor


def attention_with_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None,
                         temb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' ``AttnProcessor.__call__``, step by step, returning the attention probabilities too.

    hidden_states: [B, N, C] (or [B, C, H, W]), the N = h_l * w_l latent
    pixels; encoder_hidden_states: [B, T, D], the T = 77 text states (None:
    self-attention). Returns (output like hidden_states, probs [B * heads, N, T]
    in [0, 1], each row summing to 1: softmax(Q K^T / sqrt(d)), Vaswani et al.
    2017, eq. 1). ``attn.get_attention_scores`` upcasts when the layer asks to.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                      else encoder_hidden_states.shape)
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))  # [B * heads, L, d]
    if attn.norm_q is not None:  # as AttnProcessor2_0 (None in SD and SDXL)
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    probs = attn.get_attention_scores(query, key, attention_mask)  # softmax(Q K^T * attn.scale)
    hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear projection, dropout
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor, probs


class RecordingAttnProcessor:
    """The processor of one ``attn2`` layer while recording: the explicit attention (and a map for the
    recorder) at the selected steps, else the layer's ``original`` processor, unchanged."""

    def __init__(self, recorder: CrossAttentionRecorder, name: str, original):
        self.recorder, self.name, self.original = recorder, name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        positions = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
        if encoder_hidden_states is None or not self.recorder.wants(self.name, positions):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        out, probs = attention_with_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        self.recorder.add(self.name, probs, attn.heads)
        return out


# ----------------------------------------------------------------------------
# The recorder


class CrossAttentionRecorder:
    """Sums the conditional cross-attention maps of the selected steps and layers.

    ``total``: float32 [T, h, w] on the UNet's device, the sum over selected
    (step, layer, conditional image) of the head-averaged map upsampled to the
    latent grid; ``count``: the number of terms, so ``total / count`` is the
    mean map (at each pixel, summing to 1 over the T tokens). ``snapshots``:
    {step: float32 [T, s_h, s_w]}, that step's sum over layers and images,
    area-downsampled, for up to ``MAX_SNAPSHOTS`` steps; ``snapshot_counts``
    their terms. ``step``: the index of the UNet call running now.

    With ``keep_maps`` (training: ``engine.mini.grounding``) it also keeps every
    recorded layer's own maps, per conditional image and still in the autograd
    graph: ``layer_maps`` = [(layer name, step, float32 [n, T, h_l, w_l])], the
    head-averaged probabilities before any upsampling (what ``total`` sums).
    """

    def __init__(self, steps: range, layers: LayerChoice, num_images: int = 1, num_steps: int | None = None,
                 keep_maps: bool = False):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a whole number >= 1, got {num_images!r}.")
        self.steps, self.layers, self.num_images, self.num_steps = steps, layers, num_images, num_steps
        self.keep_maps, self.layer_maps = keep_maps, []
        self.snapshot_at = set(snapshot_steps(steps))
        self.step, self.calls, self.latent_size = -1, 0, None
        self.total, self.count = None, 0
        self.snapshots: dict[int, torch.Tensor] = {}
        self.snapshot_counts: dict[int, int] = {}
        self.layer_sizes: dict[str, tuple[int, int]] = {}  # every attn2 layer seen -> its [h_l, w_l]
        self.layers_recorded: list[str] = []
        self.steps_recorded: list[int] = []

    def on_unet_call(self, unet, args, kwargs) -> None:
        """Forward pre-hook of the UNet: a new step, and the latent's size and batch."""
        sample = args[0] if args else kwargs["sample"]
        batch = sample.shape[0]
        if batch not in (self.num_images, 2 * self.num_images):
            raise ValueError(f"The UNet got a batch of {batch} for {self.num_images} image(s): expected "
                             f"{self.num_images} (no guidance) or {2 * self.num_images} ([uncond, cond]).")
        self.step, self.calls = self.calls, self.calls + 1
        self.latent_size = tuple(sample.shape[-2:])

    def wants(self, name: str, num_positions: int) -> bool:
        """Record this layer now? Selected step, selected name, and (if asked) a selected side."""
        if self.latent_size is None:
            return False
        grid = self.layer_sizes.setdefault(name, layer_grid(num_positions, self.latent_size))
        sides = self.layers.sides
        return (self.step in self.steps and name in self.layers.names
                and (sides is None or min(grid) in sides))

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """Add one layer's probs [B * heads, N, T]: mean over heads, the last ``num_images`` rows (the
        conditional half), summed, as [T, h_l, w_l] upsampled (bilinear) to the latent's [h, w]."""
        batch = probs.shape[0] // heads
        num_positions, num_tokens = probs.shape[1:]
        cond = probs.view(batch, heads, num_positions, num_tokens)[batch - self.num_images:]
        per_image = cond.float().mean(dim=1)  # [n, N, T]
        grid = self.layer_sizes[name]
        if self.keep_maps:
            self.layer_maps.append((name, self.step, per_image.transpose(1, 2).reshape(-1, num_tokens, *grid)))
        summed = per_image.detach().sum(dim=0)  # [N, T]
        maps = summed.T.reshape(1, num_tokens, *grid)
        maps = F.interpolate(maps, size=self.latent_size, mode="bilinear", align_corners=False)[0]
        if self.total is None:
            self.total = torch.zeros_like(maps)
        self.total += maps
        self.count += self.num_images
        if name not in self.layers_recorded:
            self.layers_recorded.append(name)
        if not self.steps_recorded or self.steps_recorded[-1] != self.step:
            self.steps_recorded.append(self.step)
        if self.step in self.snapshot_at:
            self._add_snapshot(maps)

    def _add_snapshot(self, maps: torch.Tensor) -> None:
        h, w = self.latent_size
        factor = max(1, math.ceil(max(h, w) / SNAPSHOT_SIDE))
        small = F.adaptive_avg_pool2d(maps[None], (math.ceil(h / factor), math.ceil(w / factor)))[0]
        if self.step in self.snapshots:
            self.snapshots[self.step] += small
        else:
            self.snapshots[self.step] = small
        self.snapshot_counts[self.step] = self.snapshot_counts.get(self.step, 0) + self.num_images

    def mean_maps(self) -> torch.Tensor:
        """The mean map of every token position, float32 [T, h, w] on the CPU; UserError if none recorded."""
        if self.total is None:
            sides = sorted({min(g) for g in self.layer_sizes.values()}, reverse=True)
            raise UserError(f"No cross-attention was recorded: the layers {self.layers_asked()} matched no "
                             f"layer at the selected steps. This UNet's layers here are "
                             f"{', '.join(map(str, sides)) or 'none'} latent pixels a side.")
        return (self.total / self.count).cpu()

    def layers_asked(self) -> str:
        sides = "" if self.layers.sides is None else f" at side {sorted(self.layers.sides)}"
        return f"{len(self.layers.names)} named layer(s){sides}"


@contextlib.contextmanager
def record_cross_attention(unet, *, steps="all", layers="all", num_steps: int | None = None,
                           num_images: int = 1, keep_maps: bool = False):
    """Within the block, every ``attn2`` layer of ``unet`` records; yields the ``CrossAttentionRecorder``.

    ``steps``: see ``select_steps`` (step i = the UNet's i-th call inside the
    block, 0-based). ``layers``: see ``select_layers``. ``num_steps``: the UNet
    calls the loop will make (needed for named step ranges and the per-step
    snapshots). ``num_images``: images per UNet call; with guidance the batch is
    [uncond x n, cond x n], and the recorder tells the two cases apart by the
    batch size. ``keep_maps``: keep each layer's per-image maps with their
    gradients (``CrossAttentionRecorder.layer_maps``), for the grounding losses.
    Self-attention keeps its processors; every original processor and the hook
    are restored on exit, also after an error.
    """
    available = cross_attention_layers(unet)
    if not available:
        raise UserError("This UNet has no cross-attention (attn2) layers to record.")
    recorder = CrossAttentionRecorder(select_steps(steps, num_steps), select_layers(layers, available),
                                      num_images, num_steps, keep_maps)
    originals = unet.attn_processors
    swapped = {key: RecordingAttnProcessor(recorder, key.removesuffix(".processor"), processor)
               if key.endswith("attn2.processor") else processor for key, processor in originals.items()}
    hook = unet.register_forward_pre_hook(recorder.on_unet_call, with_kwargs=True)
    try:
        unet.set_attn_processor(swapped)  # (it pops from the dict it gets)
        yield recorder
    finally:
        hook.remove()
        unet.set_attn_processor(dict(originals))


# ----------------------------------------------------------------------------
# From the accumulator to per-token outputs


def token_maps(mean_maps: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per shown token (positions 0 to ``num_tokens`` - 1) from the mean maps [T, h, w]:

    * maps [n, h, w], each normalised to sum to 1 (where it looks);
    * mass [n], each token's share of the attention all n shown tokens got
      (sums to 1 over them; the start token usually takes most: it is CLIP's
      attention sink);
    * shown_share: the share of all attention (77 positions) that went to the
      shown tokens; the rest went to the padding.
    """
    shown = mean_maps[:num_tokens].double()
    totals = shown.sum(dim=(1, 2))
    maps = shown / totals.clamp_min(1e-30).view(-1, 1, 1)
    mass = totals / totals.sum()
    return maps.float(), mass.float(), float(totals.sum() / mean_maps.double().sum())


def _rounded(tensor: torch.Tensor, digits: int = 4) -> list:
    """A tensor as nested lists of floats with ``digits`` significant digits (a compact JSON)."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(tensor.numpy()).tolist()


def summarize(recorder: CrossAttentionRecorder, tokens: list[dict]) -> dict:
    """The JSON of one recording: per shown token a map (h x w, sums to 1) and its mass (sums to 1 over
    the shown tokens), what was aggregated ("steps", "layers", "layer_sizes", "terms"), and the per-step
    maps for a slider ("per_step": {"steps", "maps": [step][token][s_h][s_w], each summing to 1})."""
    n = len(tokens)
    maps, mass, shown_share = token_maps(recorder.mean_maps(), n)
    per_step = {"steps": sorted(recorder.snapshots), "maps": []}
    for step in per_step["steps"]:
        small, _, _ = token_maps(recorder.snapshots[step].cpu() / recorder.snapshot_counts[step], n)
        per_step["maps"].append(_rounded(small))
    return {
        "tokens": tokens,
        "maps": _rounded(maps),
        "mass": [round(float(m), 5) for m in mass],
        "shown_share": round(shown_share, 5),
        "steps": recorder.steps_recorded,
        "num_steps": recorder.calls,
        "layers": recorder.layers_recorded,
        "layer_sizes": {name: list(recorder.layer_sizes[name]) for name in recorder.layers_recorded},
        "latent_size": list(recorder.latent_size),
        "terms": recorder.count,
        "aggregation": "mean over heads, the conditional images, the selected layers (each upsampled "
                       "bilinearly to the latent grid) and steps; then each token's map divided by its sum",
        "per_step": per_step,
    }


# ----------------------------------------------------------------------------
# The engine entry: a text-to-image run, recorded


def count_unet_calls(pipe, num_inference_steps: int) -> int:
    """How many UNet calls (steps) ``text_to_image`` makes for ``num_inference_steps`` with the preset's
    own scheduler: its timesteps (PNDM, SD 1.5's default, runs one more than asked)."""
    if (isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 1):
        raise UserError(f"num_inference_steps must be a whole number of at least 1, got {num_inference_steps!r}.")
    scheduler = make_scheduler(pipe.scheduler, DEFAULT)
    scheduler.set_timesteps(num_inference_steps)
    return len(scheduler.timesteps)


def attention_maps(pipe, preset, *, prompt: str, negative_prompt: str = "", guidance_scale: float,
                   num_inference_steps: int, seed: int, width: int, height: int, steps="all",
                   layers="all") -> dict:
    """Make one image with ``engine.txt2img.text_to_image``, unchanged, while recording its cross-attention.

    ``steps``, ``layers``: what to aggregate (``select_steps``,
    ``select_layers``). Returns {"image": PIL, "heatmaps": [PIL per shown
    token: its map over the image], "tokens": [str as the tokenizer shows
    them], "special": [bool: start/end tokens, for the UI to grey], "json": the
    ``summarize`` dict plus the run's "info" and "notes"}. UserError for a bad
    input, before any step runs (``text_to_image`` checks the rest of its
    inputs before its first UNet call, and the processors are put back).
    """
    tokens = prompt_tokens(pipe.tokenizer, prompt)
    num_steps = count_unet_calls(pipe, num_inference_steps)
    with record_cross_attention(pipe.unet, steps=steps, layers=layers, num_steps=num_steps,
                                num_images=1) as recorder:
        result = run_to_end(text_to_image(
            pipe, preset, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps, seed=seed, width=width, height=height, num_images=1,
            preview_every=0))
    summary = summarize(recorder, tokens)
    notes = []
    if len(tokens) == 2:
        notes.append("The prompt is empty: the text encoder still reads the start and end tokens (and the "
                     "padding), so only those two have maps.")
    summary["info"], summary["notes"] = result.info, notes
    image = result.pil_images[0]
    maps = torch.tensor(summary["maps"])
    return {"image": image, "heatmaps": [figures.heatmap_overlay(image, m) for m in maps],
            "tokens": [t["token"] for t in tokens], "special": [t["special"] for t in tokens], "json": summary}
