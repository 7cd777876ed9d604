"""Tiny random-weight models saved in the real diffusers formats.

They exercise the exact loading and sampling code of real checkpoints in seconds (as
diffusers' own ``get_dummy_components`` do); tests and benchmarks build them on the fly.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .clip_vocab import write_hf_clip_tokenizer


def build_tiny_sd(folder: Path, *, prediction_type: str = "epsilon", sample_size: int = 8,
                  block_channels: tuple[int, ...] = (32, 64), seed: int = 0,
                  time_cond_proj_dim: int | None = None) -> Path:
    """Save a random-weight StableDiffusionPipeline folder (model_index.json + components).

    Latents are ``sample_size`` x ``sample_size`` x 4; the VAE downsamples by 2 per block
    beyond the first, so images are ``sample_size * 2**(len(block_channels)-1)`` pixels.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=block_channels, layers_per_block=1, sample_size=sample_size,
        in_channels=4, out_channels=4, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_channels) - 1) + ("UpBlock2D",),
        time_cond_proj_dim=time_cond_proj_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=[16] * len(block_channels), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * len(block_channels),
        up_block_types=["UpDecoderBlock2D"] * len(block_channels), norm_num_groups=8, sample_size=sample_size,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77,
    ))
    tok_dir = write_hf_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return folder


TINY_DIT_LABELS = {0: "red circle", 1: "blue square, cube", 2: "green triangle"}


def build_tiny_dit(folder: Path, *, learned_sigma: bool = True, seed: int = 0,
                   id2label: dict[int, str] | None = None) -> Path:
    """Save a random-weight ``DiTPipeline`` folder in DiT-XL-2-256's layout: a ``DiTTransformer2DModel``
    (8 output channels with ``learned_sigma``, as XL-2), a VAE, a DDIM scheduler on DiT's linear
    schedule, and ``id2label`` in ``model_index.json``."""
    import json

    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                        out_channels=8 if learned_sigma else 4, num_layers=2, sample_size=8,
                                        patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                                        norm_elementwise_affine=False)
    vae = AutoencoderKL(block_out_channels=[16, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8, sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    index_path = Path(folder) / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(k): v for k, v in (id2label or TINY_DIT_LABELS).items()}
    index_path.write_text(json.dumps(index, indent=2))
    return Path(folder)


def build_tiny_sd3(folder: Path, *, seed: int = 0) -> Path:
    """Save a random-weight ``StableDiffusion3Pipeline`` folder (as diffusers' own SD3 tests build it):
    an ``SD3Transformer2DModel``, two ``CLIPTextModelWithProjection`` encoders with their tokenizers,
    no T5 (``text_encoder_3`` = None, which SD3 allows), a VAE with a shift factor, and the
    ``FlowMatchEulerDiscreteScheduler``. Latents 8x8x4, images 16x16."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
    text_config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
                                 intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
                                 vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
    text_encoder = CLIPTextModelWithProjection(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    vae = AutoencoderKL(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    tok_dir = write_hf_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return Path(folder)


def build_tiny_vqgan_prior(folder: Path, *, seed: int = 0, codebook: int = 32, grid: int = 4) -> Path:
    """Save a random-weight VQGAN + token prior folder (:mod:`pipelines.token_prior`'s layout): a diffusers
    ``VQModel`` (16x16 images, a ``grid`` x ``grid`` grid of ``codebook`` ids), a ``TokenPriorTransformer``,
    a CLIP text encoder and tokenizer."""
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .token_prior import TokenPriorTransformer, save_token_prior_folder

    torch.manual_seed(seed)
    side = 16
    blocks = 1 + (side // grid).bit_length() - 1
    vqvae = VQModel(in_channels=3, out_channels=3, sample_size=side, latent_channels=4, vq_embed_dim=4,
                    num_vq_embeddings=codebook, block_out_channels=[8] * blocks, layers_per_block=1,
                    down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                    norm_num_groups=4, mid_block_add_attention=False)
    prior = TokenPriorTransformer(vocab_size=codebook, grid_size=grid, width=32, layers=2, heads=4, text_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77))
    tok_dir = write_hf_clip_tokenizer(Path(folder) / "_tokenizer_src")
    save_token_prior_folder(folder, vqvae, prior, text_encoder, CLIPTokenizer.from_pretrained(tok_dir))
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return Path(folder)


def build_tiny_open_clip_vit(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight open_clip ViT (32 px images, 8 px patches) in open_clip's hub layout
    (``open_clip_config.json`` + ``open_clip_model.safetensors``), as ``local-dir:`` loads it."""
    import json

    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 32, "quick_gelu": False,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**{k: v for k, v in cfg.items()})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def build_tiny_hf_clip(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight transformers ``CLIPModel`` folder (30 px images) with its tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 30, "patch_size": 6},
        projection_dim=24)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    write_hf_clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(folder)
    return folder


def build_tiny_t5_tokenizer(folder: Path, model_max_length: int = 16) -> Path:
    """A SentencePiece-style (Unigram) ``T5TokenizerFast`` trained on Shapes captions: T5's pieces ("▁" marks
    a word start), ``</s>`` appended, ``<pad>`` id 0; saved as an SD3 folder's ``tokenizer_3`` would be."""
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    corpus = ["a small red circle in the top left on a black background", "a large blue star moving right",
              "a green triangle at the bottom on a white background"] * 20
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(corpus, vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    inner = sp._tokenizer
    inner.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = T5TokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                          extra_ids=0, model_max_length=model_max_length)
    tok.save_pretrained(folder)
    return folder


def build_tiny_audioldm(folder: Path, *, seed: int = 0, vocoder: str = "hifigan") -> Path:
    """A random-weight AudioLDM folder (diffusers ``AudioLDMPipeline``: mel VAE with 1 channel, CLAP text
    encoder, a UNet conditioned on the CLAP text embedding as a class embedding, SpeechT5 HiFi-GAN vocoder,
    a byte-level BPE Roberta tokenizer with no merges), as a real AudioLDM folder is laid out.
    ``vocoder="griffin_lim"``: the builtin tones-ldm's weightless Griffin-Lim vocoder instead (16 mel bands,
    hop 256, 4 iterations)."""
    import json

    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, RobertaTokenizer, SpeechT5HifiGan,
                              SpeechT5HifiGanConfig)

    from .clip_vocab import _bytes_to_unicode

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16), class_embed_type="simple_projection", projection_class_embeddings_input_dim=8,
        class_embeddings_concat=True, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1, latent_channels=4, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text = ClapTextModelWithProjection(ClapTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=8, intermediate_size=37, num_attention_heads=1,
        num_hidden_layers=1, vocab_size=1000, projection_dim=8, layer_norm_eps=1e-5))
    vocab_dir = Path(folder) / "_vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list(_bytes_to_unicode().values())
    (vocab_dir / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)
    if vocoder == "griffin_lim":
        from .audio_ldm import GriffinLimVocoder

        voc = GriffinLimVocoder(n_fft=1024, hop_length=256, n_mels=16, n_iter=4)
    elif vocoder == "hifigan":
        voc = SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            normalize_before=False))
    else:
        raise ValueError(f"vocoder must be 'hifigan' or 'griffin_lim', not {vocoder!r}")
    AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
                     vocoder=voc).save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(vocab_dir)
    return Path(folder)


def _tiny_clip_text(folder: Path):
    """A random CLIP text tower (width 32) and a CLIP tokenizer written into ``folder/_tokenizer_src``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77))
    tok_dir = write_hf_clip_tokenizer(Path(folder) / "_tokenizer_src")
    return text_encoder, CLIPTokenizer.from_pretrained(tok_dir), tok_dir


def _tiny_video_vae():
    """A random 4-channel AutoencoderKL that doubles the side (8x8 latents -> 16x16 frames)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, sample_size=16)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def build_tiny_text_to_video(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight ModelScope-style text-to-video folder (diffusers ``TextToVideoSDPipeline``: a
    ``UNet3DConditionModel`` with temporal convolutions and attention, a CLIP text tower, a VAE that decodes
    each frame, DDIM as ModelScope ships it). Latents 4 x F x 8 x 8, frames 16 x 16."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4)
    text_encoder, tokenizer, tok_dir = _tiny_clip_text(folder)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=True)
    pipe = TextToVideoSDPipeline(vae=_tiny_video_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(tok_dir)
    return Path(folder)


def build_tiny_animatediff(folder: Path, *, seed: int = 0, motion_max_seq_length: int = 32,
                           unet_layout: str = "2d") -> Path:
    """A random-weight AnimateDiff folder (diffusers ``AnimateDiffPipeline``) in the builtin motion-ldm's
    layout: an image ``UNet2DConditionModel`` in ``unet/`` and a ``MotionAdapter`` (temporal attention,
    ``motion_max_seq_length`` frames at most) in ``motion_adapter/``, which the pipeline joins into a
    ``UNetMotionModel`` when it loads; a CLIP text tower, a VAE, DPM-Solver++ (epsilon);
    ``feature_extractor`` and ``image_encoder`` null. ``unet_layout="motion"`` saves the joined
    ``UNetMotionModel`` instead (what ``AnimateDiffPipeline.save_pretrained`` writes). Frames 16 x 16."""
    import json

    from diffusers import AnimateDiffPipeline, DPMSolverMultistepScheduler, MotionAdapter, UNet2DConditionModel

    if unet_layout not in ("2d", "motion"):
        raise ValueError(f"unet_layout must be '2d' or 'motion', not {unet_layout!r}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4,
                            motion_num_attention_heads=2, motion_max_seq_length=motion_max_seq_length)
    text_encoder, tokenizer, tok_dir = _tiny_clip_text(folder)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            prediction_type="epsilon", algorithm_type="dpmsolver++")
    vae = _tiny_video_vae()
    folder = Path(folder)
    if unet_layout == "motion":
        AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=adapter,
                            scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
        _remove_tree(tok_dir)
        return folder
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
             "motion_adapter": adapter, "scheduler": scheduler}
    for name, part in parts.items():
        part.save_pretrained(folder / name, **({} if name in ("tokenizer", "scheduler") else {"safe_serialization": True}))
    import diffusers

    index = {"_class_name": "AnimateDiffPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None]}
    for name, part in parts.items():
        library = "transformers" if name in ("text_encoder", "tokenizer") else "diffusers"
        index[name] = [library, type(part).__name__]
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    _remove_tree(tok_dir)
    return folder
