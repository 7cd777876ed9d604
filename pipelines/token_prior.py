"""VQGAN + token prior family: an image is a grid of codebook ids, written one id at a time.

"Tokenize everything" (van den Oord et al. 2017, VQ-VAE; Esser et al. 2021, "Taming Transformers";
Ramesh et al. 2021, DALL-E): a VQGAN (diffusers ``VQModel``) turns a 64x64 image into a 16x16 grid
of codebook ids and back; an autoregressive transformer (:class:`TokenPriorTransformer`, a GPT in the
nanoGPT mould with cross-attention to the prompt's text-encoder states) models the ids in raster
order. Sampling draws one id per network evaluation from the softmax of the logits, with
classifier-free guidance on the logits (``l_u + w * (l_c - l_u)``, the unconditional branch reading
the negative prompt or "", as in Stable Diffusion), temperature and top-k. The "trajectory" is the
grid filling in: ``num_inference_steps`` checkpoints, each decoded by the VQGAN with the cells not
yet written shown as a gray checkerboard.

Folder layout (``model_index.json`` names the class ``VQGANTokenPriorPipeline``)::

    vqvae/         diffusers VQModel (any diffusers VQModel folder of matching codebook size)
    prior/         TokenPriorTransformer (diffusers ModelMixin: config.json + safetensors)
    text_encoder/  transformers CLIPTextModel
    tokenizer/     transformers CLIPTokenizer
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, VQModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .devices import DeviceSpec
from .events import CancelFlag, StepCallback, StepEvent
from .model_files import check_model_folder
from .previews import PreviewDecoder, to_pil, _shrink
from .registry import ModelEntry, ModelLoadError
from .requests import ImageRequest, ImageResult, Trajectory, guided_steps, validate_image_request
from .text_limits import overflow_warning

PIPELINE_CLASS = "VQGANTokenPriorPipeline"
SCHEDULER_NAME = "autoregressive"  # what a result's "scheduler" says for this family


class _Block(torch.nn.Module):
    """Pre-LN decoder block: causal self-attention, cross-attention to the text, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2, self.ln3 = (torch.nn.LayerNorm(width) for _ in range(3))
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.q_text = torch.nn.Linear(width, width)
        self.kv_text = torch.nn.Linear(width, 2 * width)
        self.proj_text = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, mlp_ratio * width), torch.nn.GELU(approximate="tanh"),
                                       torch.nn.Linear(mlp_ratio * width, width))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_text(text).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor],
                cache: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        q, k, v = (self._split(t) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        causal = True
        if cache is not None:  # incremental decoding: the new positions see every cached one
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                causal = q.shape[2] > 1
            cache["k"], cache["v"] = k, v
        if causal and q.shape[2] != k.shape[2]:
            raise ValueError("feed several new positions only into an empty cache")
        x = x + self.proj(self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1)))
        q = self._split(self.q_text(self.ln2(x)))
        x = x + self.proj_text(self._merge(F.scaled_dot_product_attention(q, *text_kv)))
        return x + self.mlp(self.ln3(x))


class TokenPriorTransformer(ModelMixin, ConfigMixin):
    """Autoregressive prior over a ``grid_size`` x ``grid_size`` grid of ``vocab_size`` codebook ids.

    Input: ``[BOS, t_0, ..., t_{n-2}]`` (raster order) and the prompt's text-encoder states
    ``(B, T, text_dim)``; output: logits for ``t_0 ... t_{n-1}``. Learned position embeddings, GPT-2
    initialisation (residual projections scaled by ``1/sqrt(2 * layers)``).
    """

    @register_to_config
    def __init__(self, vocab_size: int = 256, grid_size: int = 16, width: int = 192, layers: int = 6,
                 heads: int = 6, text_dim: int = 128, mlp_ratio: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.tok_emb = torch.nn.Embedding(vocab_size + 1, width)  # id vocab_size = BOS
        self.pos_emb = torch.nn.Parameter(torch.zeros(grid_size * grid_size, width))
        self.text_in = torch.nn.Sequential(torch.nn.Linear(text_dim, width), torch.nn.LayerNorm(width))
        self.blocks = torch.nn.ModuleList(_Block(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab_size)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "proj_text.weight", "mlp.2.weight")):
                torch.nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))
        torch.nn.init.normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.config.grid_size ** 2

    def text_kv(self, text_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block keys/values of the text (computed once per prompt)."""
        text = self.text_in(text_states.to(self.dtype))
        return [block.text_kv(text) for block in self.blocks]

    def forward(self, input_ids: torch.Tensor, text_states: torch.Tensor | None = None,
                text_kv: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None,
                cache: Optional[list[dict[str, torch.Tensor]]] = None, start: int = 0) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)`` for the ids at positions ``start .. start + L - 1`` of the input."""
        if text_kv is None:
            if text_states is None:
                raise ValueError("pass text_states or text_kv")
            text_kv = self.text_kv(text_states)
        n = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb[start:start + n]
        for i, block in enumerate(self.blocks):
            x = block(x, text_kv[i], None if cache is None else cache[i])
        return self.head(self.ln_f(x))

    def bos(self, batch: int) -> torch.Tensor:
        return torch.full((batch, 1), self.config.vocab_size, dtype=torch.long, device=self.device)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """Temperature, then keep the ``top_k`` largest logits (0: all). Returns probabilities."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(dim=-1)


class TokenGridPreview(PreviewDecoder):
    """Decodes code-vector grids; cells marked NaN (not yet sampled) show as a gray checkerboard."""

    def __init__(self, vqvae: VQModel, max_side: int = 128) -> None:
        super().__init__(vqvae, "vae", max_side=max_side)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        vq = self.vae
        z = latents.to(vq.device, torch.float32) / vq.config.scaling_factor
        empty = torch.isnan(z).any(dim=1, keepdim=True)  # (B, 1, h, w)
        images = vq.decode(torch.nan_to_num(z).to(vq.dtype), force_not_quantize=True).sample.float()
        if empty.any():
            side = images.shape[-1] // z.shape[-1]
            mask = F.interpolate(empty.float(), scale_factor=side, mode="nearest").bool()
            yy, xx = torch.meshgrid(torch.arange(images.shape[-2]), torch.arange(images.shape[-1]), indexing="ij")
            checker = (((yy // 4) + (xx // 4)) % 2).to(images) * 0.25 - 0.05  # two grays
            images = torch.where(mask, checker.to(images.device).expand_as(images), images)
        return [_shrink(im, self.max_side) for im in to_pil(images)]


class VQGANTokenPrior:
    """A loaded VQGAN + token prior: ``generate(request) -> ImageResult``."""

    family = "vqgan_prior"
    supports_guidance = True

    def __init__(self, vqvae: VQModel, prior: TokenPriorTransformer, text_encoder: Any, tokenizer: Any,
                 model_id: str, folder: Optional[Path] = None) -> None:
        self.vqvae, self.prior, self.text_encoder, self.tokenizer = vqvae, prior, text_encoder, tokenizer
        self.model_id, self.folder = model_id, folder
        if vqvae.config.num_vq_embeddings != prior.config.vocab_size:
            raise ModelLoadError(f"the VQGAN has {vqvae.config.num_vq_embeddings} codes but the prior models "
                                 f"{prior.config.vocab_size}")
        self.preview = TokenGridPreview(vqvae)

    @classmethod
    def load(cls, entry: ModelEntry, device: DeviceSpec) -> "VQGANTokenPrior":
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(entry.path)
        check_model_folder(folder)
        try:
            options = {"use_safetensors": True, "local_files_only": True, "dtype": device.dtype}
            vqvae = VQModel.from_pretrained(folder / "vqvae", **options)
            prior = TokenPriorTransformer.from_pretrained(folder / "prior", **options)
            text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **options)
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"Could not load {folder}: {exc}") from exc
        parts = [m.to(device.device).eval() for m in (vqvae, prior, text_encoder)]
        return cls(*parts, tokenizer, entry.id, folder)

    # -- what the studio asks every family -----------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return int(self.prior.config.grid_size)

    @property
    def native_size(self) -> int:
        return self.grid_size * 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        return self.native_size  # the prior's positions fix the grid

    @property
    def denoiser(self) -> None:
        raise ValueError("A token prior predicts codebook ids, not noise: there is no noise prediction to "
                         "decompose.")

    def scheduler_for(self, name: Optional[str]) -> None:
        if name is not None:
            raise ValueError(f"The VQGAN token prior samples codebook ids one at a time; it has no noise "
                             f"scheduler (got {name!r}: choose “model default”).")
        return None

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder states ``(B, T, D)``, exactly as Stable Diffusion's pipeline encodes prompts."""
        tok = self.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def codes_to_latents(self, ids: torch.Tensor, filled: int) -> torch.Tensor:
        """``(B, n)`` ids with the first ``filled`` valid -> model-space grid ``(B, D, h, w)``, NaN where empty."""
        b, g = ids.shape[0], self.grid_size
        dim = self.vqvae.config.vq_embed_dim or self.vqvae.config.latent_channels
        z = self.vqvae.quantize.get_codebook_entry(ids.clamp(min=0).reshape(-1), (b, g, g, dim)).float()
        empty = (torch.arange(g * g, device=z.device) >= filled).view(1, 1, g, g)
        return torch.where(empty, torch.full_like(z, float("nan")), z) * self.vqvae.config.scaling_factor

    def check_request(self, req: ImageRequest) -> None:
        validate_image_request(req, 8, token_sampling=True)
        native = self.native_size
        for side in (req.width, req.height):
            if side is not None and side != native:
                raise ValueError(f"This token prior makes {native}x{native} images only (got {side}).")
        self.scheduler_for(req.scheduler)
        if req.guidance_rescale > 0:
            raise ValueError("Guidance rescale acts on a noise prediction; a token prior guides logits. "
                             "Set it to 0 for this model.")
        if req.num_inference_steps > self.prior.num_tokens:
            raise ValueError(f"Steps set how many trajectory checkpoints to keep while the "
                             f"{self.prior.num_tokens} tokens are written: at most {self.prior.num_tokens} "
                             f"(got {req.num_inference_steps}).")

    @torch.no_grad()
    def generate(self, req: ImageRequest, on_step: Optional[StepCallback] = None,
                 cancel: Optional[CancelFlag] = None) -> ImageResult:
        self.check_request(req)
        prior, n_tok, b = self.prior, self.prior.num_tokens, req.num_images
        seeds = [req.seed + i for i in range(b)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        guided = req.guidance_scale > 1
        cond = self.encode_prompt([req.prompt] * b)
        if guided:
            cond = torch.cat([self.encode_prompt([req.negative_prompt or ""] * b), cond])
        text_kv = prior.text_kv(cond)
        cache: list[dict[str, torch.Tensor]] = [{} for _ in prior.blocks]
        first, end = guided_steps(req.guidance_interval, n_tok)
        marks = sorted({round((k + 1) * n_tok / req.num_inference_steps) for k in range(req.num_inference_steps)})
        ids = torch.zeros(b, n_tok, dtype=torch.long, device=prior.device)
        x_in = prior.bos(len(cond))
        traj_t, traj_x = [], []
        if cancel is not None:
            cancel.raise_if_set(0)
        start = time.perf_counter()
        for i in range(n_tok):
            logits = prior(x_in, text_kv=text_kv, cache=cache, start=i)[:, -1]
            if guided:
                l_u, l_c = logits.chunk(2)
                w = req.guidance_scale if first <= i < end else 1.0
                logits = l_u + w * (l_c - l_u)
            probs = filter_logits(logits, req.temperature, req.top_k).cpu()
            nxt = torch.cat([torch.multinomial(probs[j], 1, generator=generators[j]) for j in range(b)])
            ids[:, i] = nxt.to(ids.device)
            x_in = (torch.cat([nxt, nxt]) if guided else nxt).view(-1, 1).to(prior.device)
            if i + 1 in marks:
                k = marks.index(i + 1)
                grid = self.codes_to_latents(ids, i + 1)
                if req.capture_trajectory:
                    traj_t.append(float(i + 1))
                    traj_x.append(grid.cpu())
                if on_step is not None:
                    on_step(StepEvent(step=k, num_steps=len(marks), timestep=float(i + 1), latents=grid,
                                      pred_x0=grid))
                if cancel is not None:
                    cancel.raise_if_set(k + 1)
        final = self.codes_to_latents(ids, n_tok) / self.vqvae.config.scaling_factor
        decoded = self.vqvae.decode(final.to(self.vqvae.dtype), force_not_quantize=True).sample
        trajectory = None
        if traj_t:
            stacked = torch.stack(traj_x)
            trajectory = Trajectory(tuple(traj_t), stacked, stacked.clone())
        warnings = [w for w in (overflow_warning(self.tokenizer, req.prompt, "prompt"),
                                overflow_warning(self.tokenizer, req.negative_prompt, "negative prompt")) if w]
        native = self.native_size
        return ImageResult(images=to_pil(decoded), seeds=seeds, request=req, model_id=self.model_id,
                           family=self.family, scheduler=SCHEDULER_NAME, width=native, height=native,
                           duration_s=time.perf_counter() - start, trajectory=trajectory, warnings=warnings,
                           extra={"tokens": n_tok, "network_evaluations": n_tok})


def save_token_prior_folder(folder: Path, vqvae: VQModel, prior: TokenPriorTransformer, text_encoder: Any,
                            tokenizer: Any) -> Path:
    """Write a model folder this family loads (safetensors only)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vqvae.save_pretrained(folder / "vqvae", safe_serialization=True)
    prior.save_pretrained(folder / "prior", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
             "vqvae": ["diffusers", "VQModel"], "prior": ["pipelines.token_prior", "TokenPriorTransformer"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder
