#!/usr/bin/env python
"""Time the VAE round trip per image size for one VAE preset, and print a markdown table.

Each size runs the tab's own path (``engine.vae.roundtrip``) on an example image,
once to warm up and then ``--repeats`` times; the table gives the median encode
and decode wall time, whether the decode was tiled, and PSNR/SSIM.

Usage:
    python scripts/bench_vae.py --vae "SD VAE ft-MSE" --sizes 256 512 768 1024
    EXPLORER_MODELS=my_presets.json python scripts/bench_vae.py --vae "My VAE"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from engine import loader  # noqa: E402
from engine import vae as engine  # noqa: E402
from engine.device import setup_cpu  # noqa: E402
from engine.images import open_image  # noqa: E402
from engine.presets import preset_names  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default=None, help="VAE preset name (default: the first one listed)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], choices=engine.SIZES)
    p.add_argument("--image", type=Path, default=REPO_ROOT / "assets" / "examples" / "scene.png")
    p.add_argument("--fit", choices=engine.FITS, default="crop")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()

    setup_cpu()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.vae or preset_names("vae")[0]
    vae = loader.load(name, "vae")
    image, _ = open_image(args.image)
    print(f"VAE: {name} on {vae.device} ({str(vae.dtype).replace('torch.', '')}), {torch.get_num_threads()} CPU threads, "
          f"image: {args.image.name}\n")
    print("| size | input | latent | encode s | decode s | tiled decode | PSNR dB | SSIM |")
    print("|---:|---|---|---:|---:|---|---:|---:|")
    for size in args.sizes:
        engine.roundtrip(image, vae, size, args.fit)  # warm-up
        runs = [engine.roundtrip(image, vae, size, args.fit).numbers for _ in range(args.repeats)]
        n = runs[-1]
        encode_s = statistics.median(r["encode_seconds"] for r in runs)
        decode_s = statistics.median(r["decode_seconds"] for r in runs)
        print(f"| {size} | {n['image_size'][0]}x{n['image_size'][1]} | {'x'.join(map(str, n['latent_shape']))} | "
              f"{encode_s:.3f} | {decode_s:.3f} | {'yes' if n['tiled_decode'] else 'no'} | {n['psnr']} | {n['ssim']} |")


if __name__ == "__main__":
    main()
