"""The builtin mini-CLIP: a small open_clip model of the procedural Shapes world.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision") embeds images and captions in one space with a symmetric contrastive loss. This
module defines a CPU-sized variant ("shapes-clip": CLIP's ModifiedResNet image tower over 64x64
renders and its causal text transformer over 32 BPE tokens), registers it with open_clip, saves and loads
it in open_clip's own folder layout (``open_clip_config.json`` + ``open_clip_model.safetensors``),
measures zero-shot accuracy per Shapes attribute, and converts the text tower *exactly* into a
transformers ``CLIPTextModel`` so a diffusers StableDiffusionPipeline can use it as
``text_encoder/`` (SD conditions on the per-token hidden states after the final LayerNorm).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MODEL_NAME = "shapes-clip"
CONTEXT_LENGTH = 32
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0  # open_clip pads with 0 ("!")
CONFIG_FILE, WEIGHTS_FILE = "open_clip_config.json", "open_clip_model.safetensors"

# Exact GELU (quick_gelu False) so the transformers export (hidden_act "gelu") is exact. MLP ratio
# 2 keeps the text tower small: the 49408 x 128 token embedding alone is 12.6 MB in fp16 (the whole
# shipped file is 17.3 MB). The image tower is CLIP's ModifiedResNet (conv stem, bottlenecks,
# attention pooling; Radford et al. 2021): a 4-layer ViT of the same size learnt shape ~10x slower
# per step from scratch, a known weakness of ViTs without conv inductive biases on small data. The
# shipped model was trained in two stages: width 8 with the text tower (zero-shot shape stalled near
# 65%, 4 stem channels), then this width-16 tower against the locked text tower (shape 99.9%).
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 64, "layers": [2, 2, 2, 2], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 128, "heads": 4,
                 "layers": 4, "mlp_ratio": 2.0},
}
# Renders are already 64x64 RGB; the normalisation maps uint8 [0, 255] to [-1, 1].
PREPROCESS_CFG: dict[str, Any] = {"size": 64, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                  "interpolation": "bicubic", "resize_mode": "shortest"}

# Zero-shot prompt templates per attribute ("{}" is the class phrase), as in CLIP's prompt ensembles.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("a {} shape", "a photo of a {} object", "a {} thing"),
    "shape": ("a {}", "a photo of a {}", "a {} shape"),
    "position": ("a shape {}", "an object {}"),
    "background": ("a shape on a {} background", "an object on a {} background"),
    "size": ("a {} shape", "a {} object"),
}
ATTRIBUTES = tuple(TEMPLATES)
_REGISTERED: list[Path] = []


def register_model_config() -> None:
    """Register the "shapes-clip" config with open_clip (``add_model_config``), once per process."""
    import open_clip

    if MODEL_NAME in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="shapes-clip-config-"))
    (folder / f"{MODEL_NAME}.json").write_text(json.dumps(MODEL_CFG, indent=2))
    open_clip.add_model_config(folder / f"{MODEL_NAME}.json")
    _REGISTERED.append(folder)


def model_cfg(vision_width: int | None = None) -> dict[str, Any]:
    """``MODEL_CFG`` (a copy), optionally with another image-tower width."""
    cfg = json.loads(json.dumps(MODEL_CFG))
    if vision_width is not None:
        cfg["vision_cfg"]["width"] = int(vision_width)
    return cfg


def create_model(seed: int | None = None, vision_width: int | None = None) -> torch.nn.Module:
    """A randomly initialised shapes-clip (an ``open_clip.CLIP``), fp32 on the CPU.

    ``vision_width`` overrides the image tower's width (open_clip's ``create_model`` keyword
    overrides of the registered config); the model remembers its config for :func:`save_clip`.
    """
    import open_clip

    register_model_config()
    if seed is not None:
        torch.manual_seed(seed)
    cfg = model_cfg(vision_width)
    overrides = {"vision_cfg": cfg["vision_cfg"]} if vision_width is not None else {}
    model = open_clip.create_model(MODEL_NAME, pretrained=None, **overrides)
    model.shapes_clip_cfg = cfg
    return model


def is_text_key(key: str) -> bool:
    """Whether a ``CLIP`` state-dict key belongs to the text tower (everything but ``visual.*`` and
    the contrastive temperature/bias)."""
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


def lock_text_tower(model: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Copy ``source``'s text tower into ``model`` and freeze it; returns the copied keys."""
    state = {k: v for k, v in source.state_dict().items() if is_text_key(k)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if is_text_key(k)]
    if missing or unexpected:
        raise RuntimeError(f"text towers differ: missing={missing} unexpected={unexpected}")
    for name, p in model.named_parameters():
        if is_text_key(name):
            p.requires_grad_(False)
    return sorted(state)


def get_tokenizer() -> Any:
    """open_clip's bundled CLIP BPE tokenizer with a 32-token context."""
    import open_clip

    register_model_config()
    return open_clip.get_tokenizer(MODEL_NAME, context_length=CONTEXT_LENGTH)


def save_clip(model: torch.nn.Module, folder: Path) -> Path:
    """Write open_clip's hub layout: config JSON plus fp16 safetensors (never pickle)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": getattr(model, "shapes_clip_cfg", MODEL_CFG), "preprocess_cfg": PREPROCESS_CFG}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def load_clip(folder: Path) -> torch.nn.Module:
    """Load a saved folder through open_clip's ``local-dir:`` schema (fp16 file -> fp32 model)."""
    import open_clip

    model = open_clip.create_model_from_pretrained(f"local-dir:{Path(folder).resolve()}", return_transform=False)
    model.shapes_clip_cfg = json.loads((Path(folder) / CONFIG_FILE).read_text())["model_cfg"]
    return model.float().eval()


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 renders -> normalised (N, 3, 64, 64) float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def class_names() -> dict[str, tuple[str, ...]]:
    """The Shapes world's classes per attribute (field names of ``ShapeRecipe``)."""
    from pipelines.worlds import shapes

    return {"colour": tuple(shapes.COLOURS), "shape": tuple(shapes.SHAPES), "position": tuple(shapes.POSITIONS),
            "background": tuple(shapes.BACKGROUNDS), "size": tuple(shapes.SIZES)}


def class_phrase(attribute: str, name: str) -> str:
    """The words that name a class in a prompt (positions use the world's phrases)."""
    if attribute == "position":
        from pipelines.worlds import shapes

        return shapes.POSITION_PHRASES[name]
    return name


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, tokenizer: Any, attribute: str) -> torch.Tensor:
    """(classes, embed_dim) unit text embeddings, averaged over the attribute's templates."""
    rows = []
    for name in class_names()[attribute]:
        prompts = [t.format(class_phrase(attribute, name)) for t in TEMPLATES[attribute]]
        emb = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 250) -> torch.Tensor:
    """Unit image embeddings for (N, 64, 64, 3) uint8 renders."""
    chunks = [model.encode_image(images_to_tensor(images[i:i + batch_size]), normalize=True)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer: Any, recipes: Sequence[Any],
                       images: np.ndarray) -> dict[str, float]:
    """Zero-shot accuracy per attribute: argmax cosine similarity over template-averaged class prompts."""
    was_training = model.training
    model.eval()
    image_emb = encode_images(model, images)
    result: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        names = class_names()[attribute]
        pred = (image_emb @ class_embeddings(model, tokenizer, attribute).T).argmax(-1)
        truth = torch.tensor([names.index(getattr(r, attribute)) for r in recipes])
        result[attribute] = float((pred == truth).float().mean()) if len(recipes) else float("nan")
    model.train(was_training)
    return result


def hf_text_config(model_cfg: dict[str, Any] | None = None) -> Any:
    """The transformers ``CLIPTextConfig`` equivalent to the open_clip text tower."""
    from transformers import CLIPTextConfig

    cfg = model_cfg or MODEL_CFG
    text = cfg["text_cfg"]
    return CLIPTextConfig(
        vocab_size=text["vocab_size"], hidden_size=text["width"],
        intermediate_size=int(text["width"] * text.get("mlp_ratio", 4.0)),
        projection_dim=cfg["embed_dim"], num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
        max_position_embeddings=text["context_length"],
        hidden_act="quick_gelu" if cfg.get("quick_gelu") else "gelu", layer_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def text_state_dict_to_hf(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Rename open_clip ``CLIP`` text-tower weights to ``CLIPTextModel`` keys (fused in_proj split to q/k/v)."""
    out = {"embeddings.token_embedding.weight": state["token_embedding.weight"],
           "embeddings.position_embedding.weight": state["positional_embedding"],
           "final_layer_norm.weight": state["ln_final.weight"], "final_layer_norm.bias": state["ln_final.bias"]}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[src + f"attn.in_proj_{kind}"].chunk(3, dim=0)
            out.update({dst + f"self_attn.q_proj.{kind}": q, dst + f"self_attn.k_proj.{kind}": k,
                        dst + f"self_attn.v_proj.{kind}": v})
            pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                     "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
            for a, b in pairs.items():
                out[dst + f"{b}.{kind}"] = state[src + f"{a}.{kind}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf_text_model(model: torch.nn.Module) -> Any:
    """An fp32 ``transformers.CLIPTextModel`` with the open_clip text tower's exact weights."""
    from transformers import CLIPTextModel

    hf = CLIPTextModel(hf_text_config())
    state = text_state_dict_to_hf(model.state_dict(), MODEL_CFG["text_cfg"]["layers"])
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.eval()


def export_text_encoder(model: torch.nn.Module, out_dir: Path, tokenizer_dir: Path | None = None,
                        dtype: torch.dtype = torch.float16) -> Path:
    """Save the text tower as a ``CLIPTextModel`` (safetensors) and, optionally, its HF tokenizer."""
    from pipelines.clip_vocab import write_hf_clip_tokenizer

    hf = to_hf_text_model(model).to(dtype)
    hf.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer_dir is not None:
        write_hf_clip_tokenizer(tokenizer_dir, model_max_length=CONTEXT_LENGTH, pad_token="!")
    return out_dir


def export_sd_text_parts(clip_dir: Path, sd_folder: Path) -> tuple[Path, Path]:
    """Write ``sd_folder/text_encoder/`` and ``sd_folder/tokenizer/`` from a saved shapes-clip folder."""
    model = load_clip(clip_dir)
    export_text_encoder(model, sd_folder / "text_encoder", tokenizer_dir=sd_folder / "tokenizer")
    return sd_folder / "text_encoder", sd_folder / "tokenizer"
