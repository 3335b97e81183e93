"""SDXL's micro-conditioning, ``add_time_ids``, in one place: diffusers' ``_get_add_time_ids``.

SDXL was trained on images of every size, upscaled and randomly cropped, with
the original size and the crop given to the UNet as extra conditions (Podell
et al. 2023, §2.2; the book's exercise 8). Each number gets a sinusoidal
embedding, and together with the pooled text embedding they go into the
timestep embedding. The base model takes six numbers per image,

    (original height, original width, crop top, crop left, target height, target width),

in diffusers' order: ``original_size`` and ``target_size`` are (height, width),
``crops_coords_top_left`` is (top, left). The refiner swaps the target size
for an aesthetic score (§2.5): five numbers.

* ``add_time_ids``: the six numbers for a batch (also the mini-SDXL training's);
* ``get_add_time_ids`` / ``get_refiner_add_time_ids``: one image's, checked against the UNet,
  as ``StableDiffusionXLPipeline._get_add_time_ids`` / ``StableDiffusionXLImg2ImgPipeline._get_add_time_ids``;
* ``prepare_add_time_ids`` / ``prepare_refiner_add_time_ids``: a request's positive and negative ones.

The loop batches them with the prompt embeddings (``engine.txt2img.loop.prepare_conditioning``).
"""

from __future__ import annotations

import torch


def add_time_ids(original_size, crops_coords_top_left, target_size) -> torch.Tensor:
    """SDXL's six numbers per image [B, 6] float32: (orig h, orig w, crop top, crop left, target h, target w).

    Each argument is one (a, b) pair for all images, or a tensor [B, 2] of pairs, in diffusers' order:
    sizes (height, width), crop (top, left).
    """
    pairs = [torch.as_tensor(v).reshape(-1, 2) for v in (original_size, crops_coords_top_left, target_size)]
    batch = max(len(p) for p in pairs)
    return torch.cat([p.expand(batch, 2) for p in pairs], dim=1).float()


def aesthetic_time_ids(original_size, crops_coords_top_left, aesthetic_score) -> torch.Tensor:
    """The SDXL refiner's five numbers per image [B, 5] float32: (orig h, orig w, crop top, crop left, aesthetic
    score). Sizes and crops are one pair for all images or a tensor [B, 2]; the score a number or a tensor [B]."""
    pairs = [torch.as_tensor(v).reshape(-1, 2) for v in (original_size, crops_coords_top_left)]
    score = torch.as_tensor(aesthetic_score, dtype=torch.float32).reshape(-1, 1)
    batch = max(len(pairs[0]), len(pairs[1]), len(score))
    return torch.cat([pairs[0].expand(batch, 2), pairs[1].expand(batch, 2), score.expand(batch, 1)], dim=1).float()


def check_added_embedding(unet, time_ids: torch.Tensor, text_encoder_projection_dim: int, what: str) -> None:
    """``ValueError`` unless the UNet's added embedding takes ``time_ids`` [1, n] plus the pooled text
    (``addition_time_embed_dim`` x n + the projection dim), as diffusers checks; ``what`` names the model."""
    passed = unet.config.addition_time_embed_dim * time_ids.shape[1] + text_encoder_projection_dim
    expected = unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise ValueError(f"This {what} expects an added embedding of {expected} numbers, but the {time_ids.shape[1]} "
                         f"time ids and the pooled text make {passed}: the model's configs do not match.")


def get_add_time_ids(unet, original_size, crops_coords_top_left, target_size, dtype,
                     text_encoder_projection_dim: int) -> torch.Tensor:
    """SDXL's micro-conditioning vector for one image, [1, 6] in ``dtype``, checked against the UNet.

    ``original_size`` and ``target_size`` (height, width), ``crops_coords_top_left`` (top, left). An
    original size of (1024, 1024) and a (0, 0) crop ask for a sharp, centred picture; a small original size
    asks for the look of an upscaled one, a large crop for a cut-off subject. As diffusers'
    ``StableDiffusionXLPipeline._get_add_time_ids`` (Podell et al. 2023, §2.2).
    """
    time_ids = add_time_ids(original_size, crops_coords_top_left, target_size)
    check_added_embedding(unet, time_ids, text_encoder_projection_dim, "SDXL UNet")
    return time_ids.to(dtype)


def get_refiner_add_time_ids(unet, original_size, crops_coords_top_left, aesthetic_score: float, dtype,
                             text_encoder_projection_dim: int) -> torch.Tensor:
    """The SDXL refiner's micro-conditioning for one image, [1, 5] in ``dtype``: (orig h, orig w, crop top,
    crop left, aesthetic score), checked against the UNet.

    The refiner swaps the target size for an aesthetic score (0-10, LAION's aesthetic predictor), so a high
    score asks for the look of the best-rated training pictures (Podell et al. 2023, §2.5). As diffusers'
    ``StableDiffusionXLImg2ImgPipeline._get_add_time_ids`` with ``requires_aesthetics_score=True``.
    """
    time_ids = aesthetic_time_ids(original_size, crops_coords_top_left, float(aesthetic_score))
    check_added_embedding(unet, time_ids, text_encoder_projection_dim, "refiner UNet")
    return time_ids.to(dtype)


def prepare_add_time_ids(pipe, request, dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A request's (add_time_ids, negative_add_time_ids), [1, 6] each; (None, None) for SD.

    The negative ones are None unless a negative condition was given; each
    negative condition left empty is then the same as its positive one.
    """
    micro = request.micro_conditioning
    if micro is None:
        return None, None
    projection_dim = pipe.text_encoder_2.config.projection_dim
    names = ("original_size", "crops_coords_top_left", "target_size")
    positive = get_add_time_ids(pipe.unet, *(micro[n] for n in names), dtype, projection_dim)
    if all(micro[f"negative_{n}"] is None for n in names):
        return positive, None
    negatives = [micro[f"negative_{n}"] or micro[n] for n in names]
    return positive, get_add_time_ids(pipe.unet, *negatives, dtype, projection_dim)


def prepare_refiner_add_time_ids(pipe, request, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's (add_time_ids, negative_add_time_ids), [1, 5] each: (orig h, orig w, crop top, crop left,
    aesthetic score), with ``aesthetic_score`` (6.0) and ``negative_aesthetic_score`` (2.5).

    As ``StableDiffusionXLImg2ImgPipeline._get_add_time_ids``: a negative original size left empty is the
    positive one, a negative crop left empty is (0, 0). A refiner whose config says
    ``requires_aesthetics_score=False`` takes the base's six numbers instead (diffusers' other layout).
    """
    micro, projection_dim = request.micro_conditioning, pipe.text_encoder_2.config.projection_dim
    negative_original = micro["negative_original_size"] or micro["original_size"]
    negative_crop = micro["negative_crops_coords_top_left"] or (0, 0)
    if not pipe.config.requires_aesthetics_score:
        negative_target = micro["negative_target_size"] or micro["target_size"]
        return (get_add_time_ids(pipe.unet, micro["original_size"], micro["crops_coords_top_left"],
                                 micro["target_size"], dtype, projection_dim),
                get_add_time_ids(pipe.unet, negative_original, micro["crops_coords_top_left"], negative_target,
                                 dtype, projection_dim))
    return (get_refiner_add_time_ids(pipe.unet, micro["original_size"], micro["crops_coords_top_left"],
                                     request.aesthetic_score, dtype, projection_dim),
            get_refiner_add_time_ids(pipe.unet, negative_original, negative_crop, request.negative_aesthetic_score,
                                     dtype, projection_dim))
