"""What the models actually read: text BPE tokens, image patches, VQ codebook ids (Tokenizer Viewer).

- :func:`text_tokens`: a prompt as the ids a text encoder receives (start, byte-pair pieces, end,
  padding), cut at its context length exactly as the tokenizer cuts, with the cut pieces listed.
  Works for open_clip's ``SimpleTokenizer`` (the builtin mini-CLIP: 32 tokens) and any transformers
  tokenizer (CLIP's 77, T5's SentencePiece pieces of an SD3 folder).
- :func:`patch_view`: how a CLIP image tower cuts an image into a grid: patch size, sequence order,
  similarity of the learned position embeddings, and the attention of the class (pooling) token
  over the grid. A ViT's grid is its patches; the builtin's ModifiedResNet pools a 2x2 grid of its
  last feature map through attention with a mean token (CLIP's ``AttentionPool2d``).
- :func:`vq_encode` / :func:`vq_decode` / :func:`edit_tokens`: an image as a VQGAN token grid, decoded
  back, and edited region by region.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_SANE_LENGTH = 100_000  # transformers' "no limit" model_max_length is ~1e30


@dataclass
class Token:
    id: int
    piece: str
    kind: str  # "start" | "end" | "pad" | "text"


@dataclass
class TokenView:
    name: str
    limit: int  # context length the encoder reads
    kept: list[Token]  # exactly the ids the encoder receives (padding included)
    cut: list[Token] = field(default_factory=list)  # pieces that did not fit
    note: str = ""

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.kept]


def _is_open_clip(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "encode") and hasattr(tokenizer, "decoder")


def text_tokens(tokenizer: Any, text: str, name: str = "", limit: Optional[int] = None) -> TokenView:
    """The tokens ``tokenizer`` gives ``text``, kept (as the encoder reads them) and cut."""
    if _is_open_clip(tokenizer):
        ctx = int(limit or tokenizer.context_length)
        body = tokenizer.encode(text)
        full = [tokenizer.sot_token_id, *body, tokenizer.eot_token_id]
        kept_ids = full[:ctx]
        if len(full) > ctx:  # open_clip: truncate, then the last kept slot becomes the end token
            kept_ids[-1] = tokenizer.eot_token_id
        cut_ids = body[ctx - 2:] if len(full) > ctx else []
        piece = lambda i: tokenizer.decoder.get(i, f"<{i}>")  # noqa: E731
        kept = [Token(i, piece(i), "start" if k == 0 else ("end" if i == tokenizer.eot_token_id else "text"))
                for k, i in enumerate(kept_ids)]
        kept += [Token(0, piece(0), "pad") for _ in range(ctx - len(kept_ids))]
        return TokenView(name or "open_clip", ctx, kept, [Token(i, piece(i), "text") for i in cut_ids],
                         "open_clip pads with id 0")
    ctx = int(limit or tokenizer.model_max_length)
    if ctx > MAX_SANE_LENGTH:
        ctx = 512
    full = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    enc = tokenizer(text, truncation=True, max_length=ctx, padding="max_length" if tokenizer.pad_token else False)
    kept_ids = list(enc["input_ids"])
    specials = set(tokenizer.all_special_ids)
    mask = enc.get("attention_mask") or [1] * len(kept_ids)
    pieces = tokenizer.convert_ids_to_tokens(kept_ids)
    kept = []
    for k, (i, p, m) in enumerate(zip(kept_ids, pieces, mask)):
        kind = "pad" if not m else ("start" if i == tokenizer.bos_token_id and k == 0 else
                                    "end" if i in specials else "text")
        kept.append(Token(int(i), p, kind))
    n_text = sum(1 for t in kept if t.kind == "text")
    body = [i for i in full if i not in specials]
    cut_ids = body[n_text:]
    return TokenView(name or type(tokenizer).__name__, ctx, kept,
                     [Token(int(i), p, "text") for i, p in zip(cut_ids, tokenizer.convert_ids_to_tokens(cut_ids))],
                     f"pads with {tokenizer.pad_token!r}" if tokenizer.pad_token else "")


# -- image patches -----------------------------------------------------------------------------------
@dataclass
class PatchView:
    kind: str  # "vit" | "attention-pool"
    grid: int  # cells per side
    cell: int  # pixels per cell side (at the tower's input size)
    image_size: int
    pos_similarity: np.ndarray  # (grid*grid, grid*grid) cosine of the position embeddings of the cells
    cls_attention: np.ndarray  # (grid, grid): attention of the class / pooling token, averaged over heads
    note: str


def _cos(m: torch.Tensor) -> np.ndarray:
    m = F.normalize(m.detach().float().cpu(), dim=-1)
    return (m @ m.T).numpy()


@torch.no_grad()
def patch_view(embedder: Any, image: Image.Image) -> PatchView:
    """The grid a CLIP image tower reads ``image`` as (see module docstring)."""
    rgb, _ = embedder.prepare(image)
    if embedder.choice.kind == "transformers":
        return _hf_patch_view(embedder, rgb)
    visual = embedder.model.visual
    x = embedder._preprocess(rgb).unsqueeze(0).to(embedder.device)
    if hasattr(visual, "attnpool"):  # ModifiedResNet: attention pooling over the last feature map
        pool = visual.attnpool
        seen: dict[str, torch.Tensor] = {}
        handle = pool.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
        visual(x)
        handle.remove()
        fmap = seen["x"]  # (1, C, H, W)
        grid = fmap.shape[-1]
        tokens = fmap.flatten(2).permute(0, 2, 1)[0]  # (HW, C)
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + pool.positional_embedding
        q = F.linear(tokens[:1], pool.q_proj.weight, pool.q_proj.bias)
        k = F.linear(tokens, pool.k_proj.weight, pool.k_proj.bias)
        attn = _head_attention(q, k, pool.num_heads)[0, 1:]
        return PatchView("attention-pool", grid, embedder.image_size // grid, embedder.image_size,
                         _cos(pool.positional_embedding[1:]), attn.reshape(grid, grid).cpu().numpy(),
                         "a ResNet tower: its attention pool reads the last feature map as a grid of cells "
                         "plus a mean token (the query), with learned position embeddings")
    # open_clip VisionTransformer: class token + patches through the blocks; attention of the last block.
    patch = int(visual.conv1.kernel_size[0])
    grid = embedder.image_size // patch
    block = visual.transformer.resblocks[-1]
    seen = {}
    handle = block.ln_1.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))
    visual(x)
    handle.remove()
    h = seen["x"]
    _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)  # (N, L, L) either layout
    attn = weights[0, 0, -grid * grid:]
    pos = visual.positional_embedding[-grid * grid:]
    return PatchView("vit", grid, patch, embedder.image_size, _cos(pos), attn.reshape(grid, grid).cpu().numpy(),
                     f"a ViT: {grid}x{grid} patches of {patch} px in raster order after the class token")


def _head_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(Lq, Lk) softmax attention averaged over heads."""
    d = q.shape[-1] // heads
    qh = q.view(q.shape[0], heads, d).transpose(0, 1)
    kh = k.view(k.shape[0], heads, d).transpose(0, 1)
    return torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, dim=-1).mean(0)


@torch.no_grad()
def _hf_patch_view(embedder: Any, rgb: Image.Image) -> PatchView:
    vm = embedder.model.vision_model
    patch = int(vm.config.patch_size)
    grid = embedder.image_size // patch
    x = embedder._processor(images=[rgb], return_tensors="pt")["pixel_values"].to(embedder.device)
    h = vm(pixel_values=x, output_hidden_states=True).hidden_states[-2]  # the last layer's input
    last = vm.encoder.layers[-1]
    hn = last.layer_norm1(h)[0]
    a = last.self_attn
    attn = _head_attention(a.q_proj(hn[:1]), a.k_proj(hn), a.num_heads)[0, 1:]
    pos = vm.embeddings.position_embedding.weight[1:]
    return PatchView("vit", grid, patch, embedder.image_size, _cos(pos), attn.reshape(grid, grid).cpu().numpy(),
                     f"a ViT: {grid}x{grid} patches of {patch} px in raster order after the class token")


# -- VQGAN codes ------------------------------------------------------------------------------------
def _to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def vq_image_size(vq: Any) -> int:
    return int(vq.config.sample_size)


@torch.no_grad()
def vq_encode(vq: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """(N, h, w) codebook ids of images (converted to RGB and resized to the VQGAN's size)."""
    size = vq_image_size(vq)
    x = torch.cat([_to_tensor(im, size) for im in images]).to(vq.device, vq.dtype)
    h = vq.encode(x).latents
    _, _, (_, _, ids) = vq.quantize(h)
    return ids.reshape(len(images), h.shape[-2], h.shape[-1]).cpu()


@torch.no_grad()
def vq_decode(vq: Any, grid: torch.Tensor) -> Image.Image:
    """The image of one (h, w) id grid."""
    h, w = grid.shape
    codes = vq.quantize.get_codebook_entry(grid.flatten().to(vq.device), (1, h, w, vq.config.vq_embed_dim))
    x = vq.decode(codes.to(vq.dtype), force_not_quantize=True).sample[0].float().clamp(-1, 1)
    return Image.fromarray(((x.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8))


def edit_tokens(grid: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], *, code: Optional[int] = None,
                source: Optional[torch.Tensor] = None, vocab: Optional[int] = None) -> torch.Tensor:
    """A copy of ``grid`` with the region rows[0]..rows[1], cols[0]..cols[1] (inclusive) set to ``code`` or
    to the same cells of ``source``."""
    h, w = grid.shape
    r0, r1 = sorted(int(r) for r in rows)
    c0, c1 = sorted(int(c) for c in cols)
    if not (0 <= r0 and r1 < h and 0 <= c0 and c1 < w):
        raise ValueError(f"the region must lie in the {h}x{w} grid (rows 0-{h - 1}, columns 0-{w - 1})")
    out = grid.clone()
    if (code is None) == (source is None):
        raise ValueError("set the region either to one codebook id or to another image's tokens")
    if code is not None:
        if vocab is not None and not 0 <= int(code) < vocab:
            raise ValueError(f"codebook id {code} is outside 0-{vocab - 1}")
        out[r0:r1 + 1, c0:c1 + 1] = int(code)
    else:
        if tuple(source.shape) != (h, w):
            raise ValueError("the other image's token grid has another size")
        out[r0:r1 + 1, c0:c1 + 1] = source[r0:r1 + 1, c0:c1 + 1]
    return out
