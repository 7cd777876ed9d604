"""Teacher targets (``--teacher``): the shipped shapes-ldm distilled into the DiT trainer."""
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LDM = ROOT / "assets" / "models" / "shapes-ldm"


def _schedules():
    from diffusers import DDPMScheduler

    from pipelines.training.dit import SCHEDULER_CFG

    config = json.loads((LDM / "scheduler" / "scheduler_config.json").read_text())
    teacher = DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return DDPMScheduler(**SCHEDULER_CFG).alphas_cumprod, teacher.alphas_cumprod


def test_timestep_map_matches_noise_levels_and_marks_what_the_teacher_cannot_reach():
    from pipelines.training.teacher import timestep_map

    student, teacher = _schedules()
    mapped, reach = timestep_map(student, teacher)
    assert mapped.shape == reach.shape == (1000,)
    # at each reached student step, the teacher's alpha_cumprod at the mapped fractional step (linear
    # interpolation of its log-SNR) is the student's
    t = torch.arange(1000)[reach]
    lo, frac = mapped[reach].floor().long(), mapped[reach] - mapped[reach].floor()
    hi = (lo + 1).clamp(max=999)
    log_snr = (teacher / (1 - teacher)).log()
    at = (log_snr[lo] * (1 - frac) + log_snr[hi] * frac).exp()
    assert torch.allclose(at / (1 + at), student[t].float(), rtol=1e-3)
    # unreached: noisier than the teacher's last step (DiT's high t) or cleaner than its first
    assert not reach[999] and reach[300] and reach[700]
    assert bool(((student[~reach] < teacher[-1]) | (student[~reach] > teacher[0])).all())
    assert (torch.diff(mapped[reach]) >= 0).all()


def test_teacher_targets_read_the_label_and_keep_the_drawn_noise_out_of_reach(tmp_path):
    from pipelines.training import latents as lat
    from pipelines.training.dit import class_names, pool_labels
    from pipelines.training.teacher import Teacher

    student, _ = _schedules()
    teacher = Teacher(LDM, [f"a {n}" for n in class_names()], torch.device("cpu"), student_alphas=student)
    pool = lat.load_latent_pool(lat.build_latent_pool(LDM / "vae", tmp_path / "pool.pt", 16, seed=3))
    x0, labels = pool["latents"].float(), pool_labels(pool["recipes"])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), 300)
    t[:2] = 999  # beyond the teacher's schedule: the drawn noise stays the target
    a = student[t].view(-1, 1, 1, 1).float()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise

    def x0_error(rows):
        eps = teacher.epsilon_targets(x_t, t, rows, noise)
        assert torch.equal(eps[:2], noise[:2]) and not torch.equal(eps[2:], noise[2:])
        return ((x_t[2:] - (1 - a[2:]).sqrt() * eps[2:]) / a[2:].sqrt() - x0[2:]).pow(2).mean().item()

    right = x0_error(labels)
    wrong = x0_error((labels + 7) % len(class_names()))  # another colour and shape
    empty = x0_error(torch.full_like(labels, teacher.null_row))
    # the teacher's x0 estimate is close to the truth under the right label, worse under a wrong one or none
    assert right < 0.02 and 2 * right < wrong and right < empty
    full = teacher.epsilon_targets(x_t, t, labels, noise)
    teacher.mix = 0.5  # --teacher-mix 0.5: halfway between the teacher and the drawn noise
    assert torch.allclose(teacher.epsilon_targets(x_t, t, labels, noise)[2:], 0.5 * full[2:] + 0.5 * noise[2:], atol=1e-5)


def test_dit_trains_on_teacher_targets_and_records_it(tmp_path):
    from pipelines.train import main as train_main

    run = tmp_path / "dit"
    small = ["--hidden", "64", "--layers", "1", "--batch-size", "4", "--warmup", "1"]
    train_main(["dit", "--run-dir", str(run), "--pool", "64", "--steps", "2", *small, "--teacher", str(LDM)])
    info = json.loads((run / "transformer" / "training.json").read_text())
    assert json.loads(info["teacher"]) == {"folder": str(LDM), "mix": 1.0}
    losses = [json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    with pytest.raises(SystemExit, match="no unet/ folder"):
        train_main(["dit", "--run-dir", str(tmp_path / "bad"), "--latents", str(run / "latents.pt"), "--steps", "1",
                    *small, "--teacher", str(LDM / "vae")])
    with pytest.raises(SystemExit, match="--teacher-mix 0.0: it must be in"):
        train_main(["dit", "--run-dir", str(tmp_path / "bad"), "--latents", str(run / "latents.pt"), "--steps", "1",
                    *small, "--teacher", str(LDM), "--teacher-mix", "0"])


def test_velocity_targets_are_the_teachers_estimate_on_the_flow_line(tmp_path):
    from pipelines.training import latents as lat
    from pipelines.training.teacher import Teacher
    from pipelines.worlds import shapes

    pool = lat.load_latent_pool(lat.build_latent_pool(LDM / "vae", tmp_path / "pool.pt", 16, seed=4))
    colours, shape_names = list(shapes.COLOURS), list(shapes.SHAPES)
    captions = [f"a {colours[int(r[0])]} {shape_names[int(r[1])]}" for r in pool["recipes"]]
    prompts = sorted(set(captions) | {f"a {c} {s}" for c in colours[:2] for s in shape_names})
    teacher = Teacher(LDM, prompts, torch.device("cpu"))
    assert teacher.null_row == len(prompts)  # "" appended as the unconditional row
    rows = torch.tensor([prompts.index(c) for c in captions])
    x0 = pool["latents"].float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    s = torch.full((16,), 0.3)
    s[:2] = torch.tensor([0.999, 0.0005])  # SNR beyond the teacher's last step / above its first: drawn target
    x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise

    def x0_error(prompt_rows):
        v = teacher.velocity_targets(x_s, s, prompt_rows, noise, x0)
        assert torch.equal(v[:2], (noise - x0)[:2]) and not torch.equal(v[2:], (noise - x0)[2:])
        # x_s = x0 + s v on the line, so the target implies an x0 estimate
        return (x_s[2:] - s[2:].view(-1, 1, 1, 1) * v[2:] - x0[2:]).pow(2).mean().item()

    right = x0_error(rows)
    wrong = x0_error(torch.tensor([prompts.index(captions[(i + 5) % 16]) for i in range(16)]))
    assert right < 0.02 and 2 * right < wrong


def test_flow_trains_on_teacher_targets(tmp_path):
    from pipelines.train import main as train_main

    run = tmp_path / "flow"
    args = ["flow", "--run-dir", str(run), "--random-text", "--pool", "32", "--hidden", "32", "--layers", "1",
            "--head-dim", "16", "--batch-size", "4", "--steps", "2", "--threads", "1"]
    with pytest.raises(SystemExit, match="shapes-ldm/unet: no unet/ folder"):
        train_main([*args, "--teacher", str(LDM / "unet")])
    train_main([*args, "--teacher", str(LDM), "--teacher-mix", "0.5"])
    info = json.loads((run / "pack" / "training.json").read_text())
    assert json.loads(info["teacher"]) == {"folder": str(LDM), "mix": 0.5}
    cached = torch.load(run / "teacher_captions.pt", weights_only=True)
    assert cached["captions"] == torch.load(run / "captions.pt", weights_only=True)["captions"]
