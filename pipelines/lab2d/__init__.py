"""The 2-D lab: a DDPM and a flow-matching model side by side on 2-D toy data, on the CPU in seconds.

One small MLP architecture (:class:`MLP`) is trained on the same points as a DDPM and as a flow, and the models
are sampled from the same starting noise so that their trajectories can be compared particle by
particle:

- **DDPM** (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): the linear beta schedule of
  the paper (1e-4 to 0.02 over T = 1000 steps), ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, and
  the network predicts ``eps`` (the paper's "simple" loss, an MSE on eps with t uniform).
  It is sampled twice, on "trailing" timesteps (the first step starts at t = T - 1, pure noise, so that
  a budget of 1, 2, 4 ... steps is a meaningful run rather than a truncated chain): with its own
  ancestral sampler (the paper's Algorithm 2, fresh noise at every step; row "ddpm") and with the
  deterministic DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit Models", eta = 0; row
  "ddim"), the probability-flow ODE of the same network.
- **Flow matching / rectified flow** (Lipman et al. 2023, "Flow Matching for Generative Modeling";
  Liu et al. 2023, "Flow Straight and Fast: ... Rectified Flow"), in diffusers' convention (that of
  ``FlowMatchEulerDiscreteScheduler`` and SD3): ``x_t = (1 - t) x0 + t noise`` for t in [0, 1]
  (t = 1 is noise), the network predicts the velocity ``v = noise - x0``, and sampling integrates
  ``dx/dt = v(x, t)`` from t = 1 to t = 0 with Euler steps on a uniform grid.
- **Reflow** (Liu et al. 2023, the "2-rectified flow"): the flow model fine-tuned on straight lines
  between noise and the points its own ODE carries that noise to (:func:`train_reflow`).

Why four rows: the DDPM's own sampler adds fresh noise at every step, so its particles random-walk to
the data (straightness about 0.07 at 50 steps on two moons, falling as steps rise) while flow's move
along a smooth ODE (about 0.56): flow's paths are the straighter. DDIM turns the same DDPM network
into an ODE too, and flow matching's *training* lines are straight, but noise and data are paired at
random, so the lines cross and the learned ODE averages them: its sampling paths bend. On these toy
sets (data at the noise's scale) they bend *more* than the DDIM paths, as measured by
:func:`straightness`: at 50 steps on two moons about 0.56 for flow against 0.77 for DDIM, and the
same ordering (0.57 against 0.82) with the exact velocity and eps of the empirical data in place of
the networks, so it is not a training artefact. The linear path shrinks the cloud towards the data
mean half-way (variance 0.5 at t = 0.5) and particles fly inwards before turning out to their moon;
the variance-preserving DDPM path keeps the cloud's scale (see also Gao et al. 2024, "Diffusion
Meets Flow Matching: Two Sides of the Same Coin"). Reflow is what makes the paths straight (about
0.997), and with them one Euler step is about as good as 50.

The samplers are written out here (a dozen lines each) rather than borrowed from diffusers'
schedulers: the lab is about seeing the math, and the trajectories it records are exactly the
states the update rules produce.

Measures (see their docstrings): :func:`straightness` of trajectories (1.0 = every particle moves
on a straight line) and :func:`distance`, the energy distance between samples and data.

Nothing here imports ``studio`` or ``gradio``; only numpy and torch. Everything runs on the CPU:
the networks are so small that a GPU would mostly add transfer overhead.

Layout: :mod:`.data` (the toy datasets), :mod:`.models` (the MLP, its time embedding, the DDPM schedule),
:mod:`.training` (:class:`Lab`, :func:`train_ddpm`, :func:`train_flow`, :func:`train_reflow`), :mod:`.sampling`
(:func:`sample`, time grids, :func:`straightness`, :func:`distance`) and :mod:`.comparison` (:func:`compare`,
:func:`format_table`, the CLI). Everything is re-exported here: ``from pipelines.lab2d import compare``.

CLI: ``python -m pipelines.lab2d [--dataset two_moons] [--steps 1,2,4,8,16,50] [--train-steps N]``.
"""
from __future__ import annotations

# The public API (and the private helpers), re-exported from the modules that now hold them.
from .data import (_GENERATORS, DATASETS, _checkerboard, _eight_gaussians, _swiss_roll, _two_moons,  # noqa: F401
                   sample_dataset)
from .models import (MLP, MODELS, NUM_TRAIN_TIMESTEPS, _frequencies, linear_alphas_cumprod,  # noqa: F401
                     timestep_embedding)
from .sampling import (ROWS, SAMPLERS, _euler, _mean_pairwise_distance, ddim_timesteps, distance,  # noqa: F401
                       sample, straightness, time_grid)
from .training import (DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_REFLOW_LR, DEFAULT_REFLOW_STEPS,  # noqa: F401
                       DEFAULT_TRAIN_STEPS, Lab, _new_net, _Threads, _train, _training_points, train_ddpm, train_flow,
                       train_reflow)
from .comparison import DEFAULT_STEPS, Comparison, compare, format_table, main  # noqa: F401
