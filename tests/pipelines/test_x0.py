"""predict_x0 against each scheduler's own estimate of the clean sample."""
import diffusers
import pytest
import torch

from pipelines.schedulers import SCHEDULERS, make_scheduler
from pipelines.x0 import noise_level, predict_x0, supports_x0

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# Schedulers whose step() returns pred_original_sample.
RETURNS_X0 = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]
# Multistep solvers keep x0 internally: convert_model_output() is their own estimate.
CONVERTS_X0 = ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"]


def _scheduler(cls_name, prediction_type):
    cls = getattr(diffusers, cls_name)
    sched = cls(**SD_SCHEDULE, prediction_type=prediction_type)
    sched.set_timesteps(10)
    return sched


def _sample(sched):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g) * sched.init_noise_sigma, g


# EulerAncestralDiscreteScheduler itself raises NotImplementedError for sample prediction.
PAIRS = [(c, p) for c in RETURNS_X0 for p in ("epsilon", "v_prediction", "sample")
         if (c, p) != ("EulerAncestralDiscreteScheduler", "sample")]


@pytest.mark.parametrize(("cls_name", "prediction_type"), PAIRS)
def test_matches_pred_original_sample(cls_name, prediction_type):
    sched = _scheduler(cls_name, prediction_type)
    sample, g = _sample(sched)
    for t in sched.timesteps[:6]:
        output = torch.randn(sample.shape, generator=g)
        ours = predict_x0(sched, output, t, sample)
        sched.scale_model_input(sample, t)
        step = sched.step(output, t, sample, generator=g)
        torch.testing.assert_close(ours, step.pred_original_sample, rtol=1e-4, atol=1e-4)
        sample = step.prev_sample


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("cls_name", CONVERTS_X0)
def test_matches_multistep_conversion(cls_name, prediction_type):
    sched = _scheduler(cls_name, prediction_type)
    sample, g = _sample(sched)
    for t in sched.timesteps[:6]:
        output = torch.randn(sample.shape, generator=g)
        ours = predict_x0(sched, output, t, sample)
        if sched.step_index is None:
            sched._init_step_index(t)
        theirs = sched.convert_model_output(output, sample=sample)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        sample = sched.step(output, t, sample).prev_sample


def test_epsilon_x0_recovers_the_clean_sample_exactly():
    """Noise a known x0 with the scheduler's own add_noise; the true eps must give x0 back."""
    sched = _scheduler("DDIMScheduler", "epsilon")
    x0 = torch.rand(1, 4, 8, 8) * 2 - 1
    eps = torch.randn(1, 4, 8, 8)
    t = sched.timesteps[3]
    x_t = sched.add_noise(x0, eps, t.unsqueeze(0))
    torch.testing.assert_close(predict_x0(sched, eps, t, x_t), x0, rtol=1e-4, atol=1e-4)


def test_every_listed_scheduler_is_supported():
    base = _scheduler("DDIMScheduler", "epsilon")
    for name in SCHEDULERS:
        sched = make_scheduler(name, base.config)
        assert supports_x0(sched), name
        sched.set_timesteps(5)
        level = noise_level(sched, sched.timesteps[0])
        assert 0 < level.alpha <= 1 and level.sigma > 0


def test_unknown_scheduler_is_an_error():
    class Mystery:
        config = {}

    assert not supports_x0(Mystery())
    with pytest.raises(ValueError, match="Mystery"):
        predict_x0(Mystery(), torch.zeros(1), 0, torch.zeros(1))
