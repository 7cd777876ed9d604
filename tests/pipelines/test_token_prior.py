"""VQGAN + token prior family: the folder format through the registry, sampling with guidance on logits,
temperature and top-k, checkpoint events, determinism, and the training target end to end."""
import json

import numpy as np
import pytest
import torch

from pipelines.devices import resolve_device
from pipelines.events import CancelFlag, GenerationCancelled
from pipelines.families import load_model
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest
from pipelines.token_prior import TokenPriorTransformer, filter_logits


@pytest.fixture(scope="module")
def tiny_vq(tiny_models_dir):
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    entry = registry.get("local/tiny-vqgan")
    assert entry.family == "vqgan_prior"
    return load_model(entry, resolve_device("cpu"))


def test_cached_decoding_matches_the_full_causal_pass():
    torch.manual_seed(0)
    prior = TokenPriorTransformer(vocab_size=16, grid_size=3, width=32, layers=2, heads=4, text_dim=8).eval()
    ids, text = torch.randint(0, 16, (2, 9)), torch.randn(2, 5, 8)
    with torch.no_grad():
        full = prior(torch.cat([prior.bos(2), ids[:, :-1]], 1), text_states=text)
        kv, cache, x, steps = prior.text_kv(text), [{} for _ in prior.blocks], prior.bos(2), []
        for i in range(9):
            steps.append(prior(x, text_kv=kv, cache=cache, start=i)[:, -1])
            x = ids[:, i:i + 1]
        # causal: changing a later token leaves earlier logits alone
        changed = ids.clone()
        changed[:, 5] = (changed[:, 5] + 1) % 16
        again = prior(torch.cat([prior.bos(2), changed[:, :-1]], 1), text_states=text)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again[:, :6], full[:, :6])
    assert not torch.allclose(again[:, 6:], full[:, 6:])


def test_filter_logits_temperature_and_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = filter_logits(logits, 1.0, 2)
    assert (p[0, 2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0))
    assert filter_logits(logits, 0.5, 0)[0, 0] > filter_logits(logits, 1.0, 0)[0, 0]  # colder = peakier
    torch.testing.assert_close(filter_logits(logits, 1.0, 0), logits.softmax(-1))


def test_generate_events_trajectory_and_determinism(tiny_vq):
    events = []
    req = ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0, num_images=2, seed=5,
                       temperature=0.9, top_k=8)
    result = tiny_vq.generate(req, on_step=events.append)
    n = tiny_vq.prior.num_tokens
    assert [e.step for e in events] == [0, 1, 2, 3] and [e.timestep for e in events] == [n / 4 * k for k in (1, 2, 3, 4)]
    first, last = events[0].latents, events[-1].latents
    assert torch.isnan(first).any() and not torch.isnan(last).any()  # cells fill in; all written at the end
    traj = result.trajectory
    assert traj.latents.shape[:2] == (4, 2) and torch.equal(traj.latents[-1], last.cpu())
    # the last checkpoint decodes to the returned image
    decoded = tiny_vq.preview.decode(traj.latents[-1])
    assert np.array_equal(np.asarray(decoded[1]), np.asarray(result.images[1]))
    params = result.params()
    assert params["scheduler"] == "autoregressive" and params["temperature"] == 0.9 and params["top_k"] == 8
    assert params["network_evaluations"] == n
    alone = tiny_vq.generate(ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0, seed=6,
                                          temperature=0.9, top_k=8))
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(result.images[1]))  # image i = seed + i
    other = tiny_vq.generate(ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0, seed=7,
                                          temperature=0.9, top_k=8))
    assert not torch.equal(other.trajectory.latents[-1], alone.trajectory.latents[-1])


def test_top_k_one_is_greedy_and_ignores_the_seed(tiny_vq):
    a = tiny_vq.generate(ImageRequest("a blue square", num_inference_steps=1, guidance_scale=1.0, seed=0, top_k=1))
    b = tiny_vq.generate(ImageRequest("a blue square", num_inference_steps=1, guidance_scale=1.0, seed=9, top_k=1))
    assert torch.equal(a.trajectory.latents, b.trajectory.latents)


def test_bad_requests_say_why(tiny_vq):
    for req, words in [(ImageRequest("x", scheduler="ddim"), "no noise scheduler"),
                       (ImageRequest("x", guidance_rescale=0.5), "Guidance rescale"),
                       (ImageRequest("x", num_inference_steps=10_00), "at most"),
                       (ImageRequest("x", width=32), "images only"),
                       (ImageRequest("x", temperature=0.0), "Temperature"),
                       (ImageRequest("x", top_k=-1), "Top-k")]:
        with pytest.raises(ValueError, match=words):
            tiny_vq.generate(req)
    with pytest.raises(ValueError, match="not noise"):
        tiny_vq.denoiser


def test_cancel_between_checkpoints(tiny_vq):
    flag = CancelFlag()
    with pytest.raises(GenerationCancelled) as info:
        tiny_vq.generate(ImageRequest("x", num_inference_steps=4), on_step=lambda e: flag.cancel(), cancel=flag)
    assert info.value.completed_steps == 1


def test_diffusion_families_refuse_token_options(tiny_sd):
    with pytest.raises(ValueError, match="Temperature and top-k"):
        tiny_sd.generate(ImageRequest("x", temperature=0.7, num_inference_steps=1))


def test_prior_trains_resumes_and_exports_a_loadable_folder(tmp_path):
    from pipelines.train import main as train_main

    run_vq = tmp_path / "vq"
    train_main(["vqgan", "--run-dir", str(run_vq), "--steps", "2", "--widths", "8,16,16", "--codebook", "32",
                "--batch-size", "4", "--disc-start", "5", "--threads", "1"])
    run = tmp_path / "prior"
    args = ["prior", "--run-dir", str(run), "--vqgan-dir", str(run_vq / "vqgan"), "--random-text", "--pool", "40",
            "--width", "32", "--layers", "1", "--heads", "2", "--batch-size", "4", "--steps", "4",
            "--checkpoint-every", "2", "--threads", "1"]
    assert train_main([*args, "--stop-at", "2"])["steps_done"] == 2 and not (run / "pack").exists()
    train_main([*args, "--resume"])
    steps = [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    pool = torch.load(run / "tokens.pt", weights_only=True)
    assert pool["tokens"].shape == (40, 256) and int(pool["tokens"].max()) < 32
    registry = ModelRegistry(builtin_dir=None, user_dir=tmp_path)
    model = load_model(registry.get("local/prior/pack"), resolve_device("cpu"))
    result = model.generate(ImageRequest("a red circle", num_inference_steps=2, guidance_scale=2.0))
    assert result.images[0].size == (64, 64) and json.loads((run / "pack" / "training.json").read_text())["prior_step"] == 4


def test_cfg_decomposition_refuses_a_token_model_with_the_reason(tiny_vq):
    from pipelines.cfg_decomposition import decompose

    with pytest.raises(ValueError, match="codebook ids, not noise"):
        decompose(tiny_vq, ImageRequest("a red circle", num_inference_steps=2, guidance_scale=3.0))


def test_ship_stores_fp16_and_links_components_shared_with_another_model(tiny_models_dir, tmp_path):
    from safetensors import safe_open

    from pipelines.training.ship import ship

    other = tmp_path / "other"
    other.mkdir()
    import shutil

    shutil.copytree(tiny_models_dir / "tiny-vqgan" / "tokenizer", other / "tokenizer")
    dest = tmp_path / "models" / "shipped"
    linked = ship(tiny_models_dir / "tiny-vqgan", dest, share=[other])
    assert linked == ["tokenizer -> ../../other/tokenizer"] and (dest / "tokenizer").is_symlink()
    with safe_open(str(dest / "prior" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    model = load_model(ModelRegistry(builtin_dir=None, user_dir=tmp_path / "models").get("local/shipped"),
                       resolve_device("cpu"))
    assert model.prior.dtype == torch.float32  # loads at the device's dtype
    assert model.generate(ImageRequest("a red circle", num_inference_steps=1)).images[0].size == (16, 16)


def test_equivalent_components_ignore_bookkeeping_but_not_weights(tiny_models_dir, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from pipelines.training.ship import equivalent

    src = tiny_models_dir / "tiny-vqgan" / "text_encoder"
    copy = tmp_path / "te"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(cfg | {"dtype": "float16", "transformers_version": "0"}))
    assert equivalent(src, copy)
    weights = next(copy.glob("*.safetensors"))
    tensors = load_file(str(weights))
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(weights))
    assert not equivalent(src, copy)
    assert equivalent(tiny_models_dir / "tiny-vqgan" / "tokenizer", tiny_models_dir / "tiny-sd" / "tokenizer")
