"""Text encoding, exactly as the diffusers pipelines do it: the one path for the app and for training.

The app's text-to-image loop (``engine.txt2img``) and the mini models'
training (``scripts/train_mini_sd.py``) both encode prompts here, so the mini
UNets are trained on the very embeddings the app later feeds them. A test
(``tests/engine/test_text_encoding.py``) checks this module against diffusers'
``StableDiffusionPipeline.encode_prompt`` and ``StableDiffusionXLPipeline.encode_prompt``.

* SD 1.x/2.x: the text encoder's last hidden state, [B, 77, D] (D = 768 for
  SD 1.x, 1024 for SD 2.x), Rombach et al. 2022, §3.3.
* SDXL: both encoders' penultimate hidden states concatenated, [B, 77, 768 + 1280],
  and the second encoder's pooled, projected output [B, 1280] (Podell et al.
  2023, §2.1). Its micro-conditioning (§2.2), ``add_time_ids``, belongs to the pipeline:
  ``engine.txt2img.time_ids``.

Ids are CLIP's: start token 49406, the text, end token 49407, then padding
(49407 for ViT-L/14, "!" = 0 for OpenCLIP bigG), cut at 77 like diffusers.

Prompt weights in A1111's syntax, ``(word:1.5)``, go through compel
(``engine.prompt_weights``); ``encode_text`` picks the path per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine import prompt_weights


def tokenize(tokenizer, texts: list[str], max_length: int | None = None) -> torch.Tensor:
    """Ids [B, max_length] (77 by default), padded with the tokenizer's pad token and cut like diffusers."""
    return tokenizer(list(texts), padding="max_length", max_length=max_length or tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_sd(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """SD 1.x/2.x: the last hidden state [B, 77, D], as ``StableDiffusionPipeline.encode_prompt``."""
    ids = tokenize(tokenizer, texts).to(text_encoder.device)
    return text_encoder(ids)[0]


@torch.no_grad()
def encode_sdxl(tokenizers: dict, text_encoder, text_encoder_2, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: both encoders' penultimate hidden states concatenated [B, 77, D1 + D2], and pooled [B, P].

    ``tokenizers`` is {"tokenizer": ..., "tokenizer_2": ...}. As
    ``StableDiffusionXLPipeline.encode_prompt`` (Podell et al. 2023, §2.1).
    """
    ids_1 = tokenize(tokenizers["tokenizer"], texts).to(text_encoder.device)
    ids_2 = tokenize(tokenizers["tokenizer_2"], texts).to(text_encoder_2.device)
    hidden_1 = text_encoder(ids_1, output_hidden_states=True).hidden_states[-2]
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1), out_2.text_embeds


@torch.no_grad()
def encode_sdxl_refiner(tokenizer_2, text_encoder_2, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDXL refiner: the second encoder alone, its penultimate hidden state [B, 77, D2] and pooled [B, P].

    The refiner conditions on OpenCLIP bigG only (Podell et al. 2023, §2.5); as
    ``StableDiffusionXLImg2ImgPipeline.encode_prompt`` when ``text_encoder`` is None.
    """
    ids_2 = tokenize(tokenizer_2, texts).to(text_encoder_2.device)
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    return out_2.hidden_states[-2], out_2.text_embeds


def truncation_warning(tokenizer, text: str, label: str = "prompt") -> str | None:
    """If ``text`` has more than 77 tokens (with start/end), say which words CLIP will not see.

    The cut part is what diffusers logs: the tokens between position 76 and the end token.
    """
    limit = tokenizer.model_max_length
    ids = tokenizer(text, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    cut = tokenizer.decode(ids[limit - 1:-1])
    return (f"The {label} has {len(ids)} tokens; CLIP reads at most {limit}, so this part is ignored: "
            f"\"{cut}\"")


@dataclass
class PromptEmbeds:
    """Output of ``encode_prompt``.

    prompt_embeds: [B, 77, D] text encoder hidden states (D = 768 for SD 1.x,
        1024 for SD 2.x, 2048 for SDXL: 768 + 1280 concatenated).
    negative_prompt_embeds: same shape, or None when guidance is off.
    pooled_prompt_embeds / negative_pooled_prompt_embeds: SDXL only, [B, 1280],
        the second encoder's projected pooled output.
    warnings: user-facing notes (a prompt cut at 77 tokens).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    warnings: list[str] = field(default_factory=list)


def _pipe_tokenizers(pipe) -> dict:
    return {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2}


def encode_text(pipe, kind: str, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One prompt's hidden states [1, 77, D] and, for SDXL, its pooled embedding [1, P] (else None).

    A prompt with weights other than 1 in A1111's syntax, ``(word:1.5)``, goes through compel
    (``engine.prompt_weights``); any other prompt, "(word:1.0)" included, through ``encode_sd`` /
    ``encode_sdxl`` with the syntax taken out, so weight 1 gives exactly the plain prompt's embeddings.
    SDXL's pooled embedding is always the plain prompt's.
    """
    weighted = prompt_weights.parse(text)
    if kind == "sdxl-refiner":
        hidden, pooled = encode_sdxl_refiner(pipe.tokenizer_2, pipe.text_encoder_2, [weighted.text])
        if weighted.weighted:
            hidden = prompt_weights.encode_weighted(pipe, kind, weighted)
        return hidden, pooled
    if kind != "sdxl":
        if weighted.weighted:
            return prompt_weights.encode_weighted(pipe, kind, weighted), None
        return encode_sd(pipe.tokenizer, pipe.text_encoder, [weighted.text]), None
    hidden, pooled = encode_sdxl(_pipe_tokenizers(pipe), pipe.text_encoder, pipe.text_encoder_2, [weighted.text])
    if weighted.weighted:
        hidden = prompt_weights.encode_weighted(pipe, kind, weighted)
    return hidden, pooled


def encode_prompt(pipe, kind: str, prompt: str, negative_prompt: str = "", do_classifier_free_guidance: bool = True,
                  num_images_per_prompt: int = 1) -> PromptEmbeds:
    """The prompt and the negative prompt through a pipeline's text encoder(s), as its ``encode_prompt``.

    An empty negative prompt is the unconditional input: the embedding of ""
    for SD; for SDXL presets with ``force_zeros_for_empty_prompt`` (SDXL base)
    a tensor of zeros, as diffusers does. Returns embeddings repeated
    ``num_images_per_prompt`` times along the batch. ``kind`` "sdxl-refiner": the second encoder only.
    """
    # SDXL's two tokenizers split text the same way (only their padding differs): one check is enough.
    tokenizer = pipe.tokenizer if kind != "sdxl-refiner" else pipe.tokenizer_2
    warnings = [note for note in (truncation_warning(tokenizer, prompt_weights.parse(prompt).text, "prompt"),
                                  truncation_warning(tokenizer, prompt_weights.parse(negative_prompt or "").text,
                                                     "negative prompt"))
                if note]
    n = num_images_per_prompt
    if kind not in ("sdxl", "sdxl-refiner"):
        dtype = pipe.text_encoder.dtype
        prompt_embeds = encode_text(pipe, kind, prompt)[0].to(dtype).repeat(n, 1, 1)
        negative_embeds = None
        if do_classifier_free_guidance:
            negative_embeds = encode_text(pipe, kind, negative_prompt or "")[0].to(dtype).repeat(n, 1, 1)
        return PromptEmbeds(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, warnings=warnings)

    dtype = pipe.text_encoder_2.dtype
    prompt_embeds, pooled = encode_text(pipe, kind, prompt)
    negative_embeds = negative_pooled = None
    if do_classifier_free_guidance:
        if not negative_prompt and pipe.config.force_zeros_for_empty_prompt:
            negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
        else:
            negative_embeds, negative_pooled = encode_text(pipe, kind, negative_prompt or "")
    return PromptEmbeds(
        prompt_embeds=prompt_embeds.to(dtype).repeat(n, 1, 1),
        negative_prompt_embeds=None if negative_embeds is None else negative_embeds.to(dtype).repeat(n, 1, 1),
        pooled_prompt_embeds=pooled.repeat(n, 1),
        negative_pooled_prompt_embeds=None if negative_pooled is None else negative_pooled.repeat(n, 1),
        warnings=warnings,
    )
