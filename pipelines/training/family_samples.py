"""Sample grids of flow and DiT runs (``--sample-every``), as :class:`pipelines.training.ldm_samples.SampleGrids`
draws them for latent diffusion: the run's own pipeline (diffusers' ``StableDiffusion3Pipeline`` /
``DiTPipeline``) on a copy of the network holding the EMA weights, entry ``i`` with seed ``sample-seed + i`` (a CPU
generator), the global RNG states restored afterwards so sampling never changes training; written through the
run's :class:`pipelines.training.monitor.SampleLog`."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.training import common
from pipelines.training.ldm_samples import sample_grid
from pipelines.training.monitor import SampleLog

# DiT grids: eight of the Shapes classes (colour, shape) spread over the palette and the shapes
DIT_SAMPLE_LABELS: tuple[str, ...] = ("red circle", "blue square", "green triangle", "yellow star",
                                      "purple diamond", "orange circle", "pink cross", "cyan square")


class _Grids:
    """Shared part: the EMA copy, the seeds, the file. Subclasses build the pipeline and call it."""

    sampler = ""

    def __init__(self, log: SampleLog, cls: Any, cfg: dict[str, Any], args: argparse.Namespace,
                 device: torch.device, entries: Sequence[str]) -> None:
        self.log, self.cls, self.cfg, self.device = log, cls, cfg, device
        self.entries = list(entries)
        self.steps, self.guidance, self.seed = int(args.sample_steps), float(args.sample_guidance), int(args.sample_seed)
        self.pipe: Any = None

    def _build(self, network: torch.nn.Module) -> Any:
        raise NotImplementedError

    def _generate(self, generators: list[torch.Generator]) -> list[Any]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, step: int, model: torch.nn.Module, ema: common.EMA) -> Path:
        if self.pipe is None:
            self.pipe = self._build(self.cls(**self.cfg)).to(self.device)
            self.pipe.set_progress_bar_config(disable=True)
        net = self.network()
        net.load_state_dict(common.network_state(model.state_dict()))  # non-float buffers, then the EMA
        ema.copy_to(net)
        net.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = self._generate([torch.Generator().manual_seed(self.seed + i) for i in range(len(self.entries))])
        title = f"step {step}  EMA  {self.steps} {self.sampler} steps  guidance {self.guidance:g}"
        record = {"prompts": list(self.entries), "seed": self.seed,
                  "seeds": [self.seed + i for i in range(len(self.entries))], "num_inference_steps": self.steps,
                  "guidance_scale": self.guidance, "height": images[0].height, "width": images[0].width,
                  "weights": "ema"}
        return self.log.write(step, sample_grid(images, self.entries, title), record)

    def network(self) -> torch.nn.Module:
        return self.pipe.transformer


class FlowGrids(_Grids):
    """Prompts through the run's ``StableDiffusion3Pipeline`` (flow-match Euler steps)."""

    sampler = "Euler"

    def __init__(self, log: SampleLog, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device,
                 build_pipeline: Callable[[Any, Path, Path], Any], text: Path) -> None:
        from diffusers import SD3Transformer2DModel

        prompts = [p.strip() for p in str(args.sample_prompts).split("|") if p.strip()]
        super().__init__(log, SD3Transformer2DModel, cfg, args, device, prompts)
        self.build_pipeline, self.vae_dir, self.text = build_pipeline, Path(args.vae_dir), Path(text)
        self.t5_tokens = int(args.t5_tokens)  # the zero T5 block the run trains with

    def _build(self, network: torch.nn.Module) -> Any:
        return self.build_pipeline(network, self.vae_dir, self.text)

    def _generate(self, generators: list[torch.Generator]) -> list[Any]:
        return self.pipe(prompt=list(self.entries), num_inference_steps=self.steps, guidance_scale=self.guidance,
                         height=64, width=64, generator=generators, max_sequence_length=self.t5_tokens).images


class DiTGrids(_Grids):
    """Class names through the run's ``DiTPipeline`` (DPM-Solver++ on DiT's schedule)."""

    sampler = "DPM-Solver++"

    def __init__(self, log: SampleLog, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device,
                 id2label: dict[int, str], scheduler_cfg: dict[str, Any]) -> None:
        from diffusers import DiTTransformer2DModel

        wanted = [p.strip() for p in str(args.sample_prompts).split("|") if p.strip()]
        names = set(id2label.values())
        labels = [w for w in wanted if w in names] or list(id2label.values())[:8]
        super().__init__(log, DiTTransformer2DModel, cfg, args, device, labels)
        self.id2label, self.scheduler_cfg, self.vae_dir = id2label, scheduler_cfg, Path(args.vae_dir)

    def _build(self, network: torch.nn.Module) -> Any:
        from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DPMSolverMultistepScheduler

        return DiTPipeline(transformer=network, vae=AutoencoderKL.from_pretrained(self.vae_dir, use_safetensors=True),
                           scheduler=DPMSolverMultistepScheduler.from_config(DDPMScheduler(**self.scheduler_cfg).config),
                           id2label=self.id2label)

    def _generate(self, generators: list[torch.Generator]) -> list[Any]:
        labels = self.pipe.get_label_ids(list(self.entries))
        # DiTPipeline takes one generator: draw each entry's noise from its own seed, as the grids elsewhere do
        return [self.pipe([label], guidance_scale=self.guidance, num_inference_steps=self.steps,
                          generator=gen).images[0] for label, gen in zip(labels, generators)]
