"""Copy a trained model folder into ``assets/models``: ``python -m pipelines.training.ship SRC DEST [--share DIR]``.

Weights are stored as fp16 safetensors (loading upcasts them to the device's dtype; the builtin models
are small enough that fp16 storage changes no judged result, which the evaluation commands check on
the shipped copy). Components whose files are byte-identical to a component of ``--share`` (another
shipped model, e.g. the shapes-ldm's text encoder and tokenizer) or to another component of the same
folder (SD3's two CLIP slots) become relative symlinks instead of second copies, so every family can
ship the shared mini-CLIP text tower once.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

SHAREABLE = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae")


def to_fp16(folder: Path) -> None:
    """Rewrite every floating-point tensor of the folder's safetensors files as fp16 (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.safetensors")):
        if path.is_symlink():
            continue
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=meta)


def same_files(a: Path, b: Path) -> bool:
    """Two component folders with the same file names and byte-identical contents."""
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if names != sorted(p.name for p in b.iterdir() if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def link(component: Path, target: Path) -> None:
    shutil.rmtree(component)
    os.symlink(os.path.relpath(target.resolve(), component.parent.resolve()), component, target_is_directory=True)


def ship(src: Path, dest: Path, share: Sequence[Path] = (), fp16: bool = True) -> list[str]:
    """Copy ``src`` to ``dest`` (replacing it); returns the components turned into symlinks."""
    if dest.exists() or dest.is_symlink():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=False)
    if fp16:
        to_fp16(dest)
    linked = []
    for name in SHAREABLE:
        comp = dest / name
        if not comp.is_dir() or comp.is_symlink():
            continue
        for candidate in [*(Path(s) / name for s in share), *(dest / other for other in SHAREABLE if other != name)]:
            if candidate.resolve() != comp.resolve() and same_files(comp, candidate.resolve()):
                link(comp, candidate)
                linked.append(f"{name} -> {os.readlink(comp)}")
                break
    return linked


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.training.ship", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--share", type=Path, action="append", default=[], help="a shipped model folder to share with")
    p.add_argument("--keep-fp32", action="store_true")
    args = p.parse_args(argv)
    if not (args.src / "model_index.json").is_file():
        sys.exit(f"{args.src}: not a model folder (no model_index.json)")
    for line in ship(args.src, args.dest, args.share, fp16=not args.keep_fp32):
        print("shared:", line)
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file() and not any(
        part.is_symlink() for part in [f, *f.parents]))
    print(f"{args.dest}: {size / 2**20:.1f} MiB of its own files")


if __name__ == "__main__":
    main()
