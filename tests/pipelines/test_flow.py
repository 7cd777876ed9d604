"""The flow-matching family on a tiny random-weight Stable Diffusion 3 folder (no T5)."""
import numpy as np
import pytest
import torch

from pipelines.cfg_decomposition import decompose
from pipelines.devices import resolve_device
from pipelines.flow import FlowMatching
from pipelines.model_files import native_image_size
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest


@pytest.fixture(scope="module")
def tiny_flow(tiny_models_dir):
    entry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir).get("local/tiny-sd3")
    assert entry.family == "flow_matching"
    return FlowMatching.load(entry, resolve_device("cpu"))


def test_flow_steps_x0_and_determinism(tiny_flow, tiny_models_dir):
    assert native_image_size(tiny_models_dir / "tiny-sd3") == tiny_flow.native_size == 16
    events = []
    req = ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0, seed=2)
    result = tiny_flow.generate(req, on_step=events.append)
    assert [e.step for e in events] == [0, 1, 2, 3] and all(e.pred_x0 is not None for e in events)
    assert result.images[0].size == (16, 16) and result.scheduler == "FlowMatchEulerDiscreteScheduler"
    traj = result.trajectory
    assert traj.latents.shape == (4, 1, 4, 8, 8)
    # the Euler step to t = 0 lands exactly on the x0 estimate x_t - t * v
    torch.testing.assert_close(traj.pred_x0[-1], traj.latents[-1], atol=1e-5, rtol=1e-5)
    assert traj.timesteps[0] > traj.timesteps[-1]  # t runs from noise (1000) towards data
    again = tiny_flow.generate(req)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_flow_x0_estimate_is_x_t_minus_t_v(tiny_flow):
    """Step 0 by hand: the scheduler's sigma for t, the recorded velocity, x0 = x_t - sigma * v."""
    req = ImageRequest("a blue square", num_inference_steps=3, guidance_scale=2.5, seed=4)
    _, steps = decompose(tiny_flow, req)
    first = steps[0]
    sigma = tiny_flow.pipe.scheduler.sigmas[0].item()
    torch.testing.assert_close(first.x0_guided, first.sample - sigma * first.eps_guided, atol=1e-5, rtol=1e-5)
    for s in steps:
        torch.testing.assert_close(s.eps_guided, s.eps_uncond + 2.5 * s.delta, atol=1e-5, rtol=1e-4)


def test_flow_options_and_refusals(tiny_flow):
    _, steps = decompose(tiny_flow, ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0,
                                                 guidance_interval=(0.0, 0.5)))
    assert [s.scale for s in steps] == [3.0, 3.0, 1.0, 1.0]
    torch.testing.assert_close(steps[3].eps_guided, steps[3].eps_cond, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Guidance rescale is not available"):
        tiny_flow.generate(ImageRequest("x", num_inference_steps=1, guidance_rescale=0.5))
    with pytest.raises(ValueError, match="flow-match scheduler"):
        tiny_flow.generate(ImageRequest("x", num_inference_steps=1, scheduler="ddim"))


def test_flow_target_trains_resumes_and_exports_an_sd3_folder_with_the_pipelines_conditioning(tmp_path):
    """``python -m pipelines.train flow``: the exported folder loads as a flow model through the registry, and the
    conditioning trained on equals what StableDiffusion3Pipeline.encode_prompt gives (CLIP block; zero T5 block)."""
    import json

    from pipelines.devices import resolve_device
    from pipelines.families import load_model
    from pipelines.registry import ModelRegistry
    from pipelines.requests import ImageRequest
    from pipelines.train import main as train_main

    run = tmp_path / "flow"
    args = ["flow", "--run-dir", str(run), "--random-text", "--pool", "32", "--hidden", "32", "--layers", "1",
            "--head-dim", "16", "--batch-size", "4", "--steps", "4", "--checkpoint-every", "2", "--threads", "1"]
    assert train_main([*args, "--stop-at", "2"])["steps_done"] == 2 and not (run / "pack").exists()
    train_main([*args, "--resume"])
    assert [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    entry = ModelRegistry(builtin_dir=None, user_dir=tmp_path).get("local/flow/pack")
    model = load_model(entry, resolve_device("cpu"))
    assert entry.family == "flow_matching" and model.pipe.vae.config.shift_factor == 0.0
    result = model.generate(ImageRequest("a red circle", num_inference_steps=3, guidance_scale=3.0))
    assert result.images[0].size == (64, 64) and result.trajectory.num_steps == 3
    table = torch.load(run / "captions.pt", weights_only=True)
    embeds, _, pooled, _ = model.pipe.encode_prompt(prompt=["a red circle"], prompt_2=["a red circle"], prompt_3=None,
                                                    do_classifier_free_guidance=False)
    row = table["captions"].index("a red circle")
    clip_len = table["embeds"].shape[1]
    torch.testing.assert_close(embeds[0, :clip_len], table["embeds"][row])
    torch.testing.assert_close(pooled[0], table["pooled"][row])
    # the zero T5 block: trained 8 tokens long (--t5-tokens' default), written to the pack, used by the family
    assert json.loads((run / "pack" / "default_settings.json").read_text())["max_sequence_length"] == 8
    assert model.max_sequence_length == 8
    assert _context_lengths(model, ImageRequest("a red circle", num_inference_steps=2, guidance_scale=3.0)) == [
        clip_len + 8, clip_len + 8]
    embeds, *_ = model.pipe.encode_prompt(prompt=["a red circle"], prompt_2=["a red circle"], prompt_3=None,
                                          do_classifier_free_guidance=False, max_sequence_length=8)
    assert embeds[0, clip_len:].abs().max() == 0
    with pytest.raises(SystemExit, match="trained with 8"):  # a resume cannot change the block's length
        train_main([*args, "--steps", "6", "--resume", "--t5-tokens", "16"])
    with pytest.raises(SystemExit, match="patch_size 2 vs 1"):  # nor the transformer's patch size
        train_main([*args, "--steps", "6", "--resume", "--patch-size", "1"])
    # --patch-size 1 (256 image tokens) trains and exports an SD3 folder the family samples
    p1 = tmp_path / "flow-p1"
    train_main([*args[:2], str(p1), *args[3:], "--latents", str(run / "latents.pt"), "--steps", "1",
                "--patch-size", "1"])
    model = load_model(ModelRegistry(builtin_dir=None, user_dir=tmp_path).get("local/flow-p1/pack"),
                       resolve_device("cpu"))
    assert model.pipe.transformer.config.patch_size == 1
    assert model.generate(ImageRequest("a red circle", num_inference_steps=2)).images[0].size == (64, 64)


def test_a_flow_folder_without_settings_gets_the_pipelines_own_t5_block(tiny_flow):
    """A real SD3 folder (no ``max_sequence_length`` in a default_settings.json) runs at diffusers' 256."""
    seen = _context_lengths(tiny_flow, ImageRequest("a red circle", num_inference_steps=1, guidance_scale=1.0))
    assert tiny_flow.max_sequence_length == 256 and seen == [tiny_flow.pipe.tokenizer_max_length + 256]


def _context_lengths(model, req) -> list[int]:
    """The prompt-token count the transformer saw at each step of ``model.generate(req)``."""
    seen = []
    hook = model.pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        model.generate(req)
    finally:
        hook.remove()
    return seen
