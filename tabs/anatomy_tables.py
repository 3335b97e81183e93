"""The UNet anatomy as Markdown: the plain dict of ``engine.unet.anatomy.unet_anatomy`` as the UNet tab's tables.

Presentation only (number formats, table layout); the figures and their conventions are the engine's.
No gradio and no engine import here, so the tables are unit-tested on their own (tests/tabs).
"""


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.3g} {unit}" if n / size < 1000 else f"{n / size:,.0f} {unit}"
    return f"{n} B"


def _flops(n: int) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:,.4g} {unit}"
    return f"{n:,} FLOP"


def _times(r) -> str:
    return "-" if r is None else f"{r:,.4g}×"


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)


def _block_table(blocks: list[dict]) -> list[str]:
    lines = [("| block | type | parameters | FLOPs | resolution in → out | channels | resnets | transformer layers "
             "| cross-attention | context width | self-attention tokens × heads |"),
             "|---|---|---:|---:|---|---:|---:|---:|---|---:|---|"]
    for b in blocks:
        res = "-" if b["resolution"] is None else f"{_shape(b['resolution'])} → {_shape(b['out_resolution'])}"
        attn = "-" if b["attention_tokens"] is None else f"{b['attention_tokens']:,} × {b['attention_heads']}"
        lines.append(f"| {b['name']} | {b['type']} | {_count(b['parameters'])} | {_flops(b['flops'])} | {res} "
                     f"| {_count(b['channels'])} | {b['resnets']} | {b['transformer_layers']} "
                     f"| {'yes' if b['cross_attention'] else 'no'} | {_count(b['context_width'])} | {attn} |")
    return lines


def anatomy_table(anatomy: dict) -> str:
    """``unet_anatomy``'s dict as markdown: a summary line, the block table, latent vs pixel space."""
    a, p, r = anatomy, anatomy["pixel_space"], anatomy["pixel_over_latent"]
    lines = [(f"UNet at {a['width']}×{a['height']} px, latent {_shape(a['input_shape'])}: "
             f"{a['total_parameters']:,} parameters, {_flops(a['flops_per_call'])} per call "
             "(batch 1; a guided step runs batch 2, twice that)."), ""]
    lines += _block_table(a["blocks"]) + [""]
    lines += ["| | latent space | pixel space | pixel / latent |", "|---|---:|---:|---:|",
              f"| UNet input | {_shape(a['input_shape'])} | {_shape(p['input_shape'])} | |",
              f"| parameters | {a['total_parameters']:,} | {p['total_parameters']:,} | |",
              (f"| FLOPs per call | {_flops(a['flops_per_call'])} | {_flops(p['flops_per_call'])} "
              f"| {_times(r['flops_per_call'])} |"),
              (f"| self-attention Q·Kᵀ and P·V FLOPs | {_flops(a['self_attention_score_flops'])} "
              f"| {_flops(p['self_attention_score_flops'])} | {_times(r['self_attention_score_flops'])} |"),
              (f"| tokens at the highest-resolution self-attention | {a['attention_tokens']:,} "
              f"| {p['attention_tokens']:,} | {_times(r['attention_tokens'])} |"),
              f"| heads there | {a['attention_heads']} | {p['attention_heads']} | |",
              (f"| one attention matrix ({a['attention_dtype']}, batch 1) | {_bytes(a['attention_matrix_bytes'])} "
              f"| {_bytes(p['attention_matrix_bytes'])} | {_times(r['attention_matrix_bytes'])} |")]
    return "\n".join(lines)
