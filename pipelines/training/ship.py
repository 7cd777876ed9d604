"""Copy a trained model folder into ``assets/models``: ``python -m pipelines.training.ship SRC DEST [--share DIR]``.

Weights are stored as fp16 safetensors (loading upcasts them to the device's dtype; the builtin models
are small enough that fp16 storage changes no judged result, which the evaluation commands check on
the shipped copy). Components whose files are byte-identical to a component of ``--share`` (another
shipped model, e.g. the shapes-ldm's text encoder and tokenizer) or to another component of the same
folder (SD3's two CLIP slots) become relative symlinks instead of second copies, so every family can
ship the shared mini-CLIP text tower once. "Identical" means :func:`equivalent`: the same bytes, or the
same tensors with configs equal up to version bookkeeping, or tokenizers giving the same ids.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

SHAREABLE = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "vqvae")


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


IGNORED_CONFIG_KEYS = {"dtype", "torch_dtype", "transformers_version", "_diffusers_version", "_name_or_path"}


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in data.items() if k not in IGNORED_CONFIG_KEYS}


def equivalent(a: Path, b: Path) -> bool:
    """Two component folders that load to the same thing: byte-identical files; or the same weights (values
    and dtypes) with configs equal up to version/dtype bookkeeping; or tokenizers (no weights) that give the
    same ids for every caption of the Shapes grammar."""
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if names == sorted(p.name for p in b.iterdir() if p.is_file()) and all(
            filecmp.cmp(a / n, b / n, shallow=False) for n in names):
        return True
    ta, tb = _tensors(a), _tensors(b)
    if ta or tb:
        same = ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and ta[k].equal(tb[k]) for k in ta)
        return same and _config(a) == _config(b)
    try:
        from transformers import CLIPTokenizer

        from pipelines.training.latents import all_captions

        captions = all_captions(include_holdout=True)
        return CLIPTokenizer.from_pretrained(a)(captions).input_ids == CLIPTokenizer.from_pretrained(b)(captions).input_ids
    except (OSError, ValueError):
        return False


def link(component: Path, target: Path) -> None:
    shutil.rmtree(component)
    os.symlink(os.path.relpath(target.resolve(), component.parent.resolve()), component, target_is_directory=True)


def ship(src: Path, dest: Path, share: Sequence[Path] = (), fp16: bool = True) -> list[str]:
    """Copy ``src`` to ``dest`` (replacing it), link shared components, store the rest as fp16; returns the
    components turned into symlinks (a linked component keeps the dtype of what it links to)."""
    if dest.exists() or dest.is_symlink():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=False)
    linked = []
    for name in SHAREABLE:
        comp = dest / name
        if not comp.is_dir() or comp.is_symlink():
            continue
        targets = [Path(s) / name for s in share] + [Path(s) for s in share if Path(s).name == name]
        targets += [dest / other for other in SHAREABLE if other != name and not (dest / other).is_symlink()]
        for candidate in targets:
            if candidate.resolve() != comp.resolve() and equivalent(comp, candidate.resolve()):
                link(comp, candidate)
                linked.append(f"{name} -> {os.readlink(comp)}")
                break
    from pipelines.clip_vocab import compact_tokenizer

    for comp in dest.iterdir():
        if comp.name.startswith("tokenizer") and comp.is_dir() and not comp.is_symlink():
            compact_tokenizer(comp)  # vocab.json + merges.txt: loads in a quarter of the time
    if fp16:
        for comp in dest.iterdir():
            if comp.is_dir() and not comp.is_symlink():
                to_fp16(comp)
    return linked


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.training.ship", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--share", type=Path, action="append", default=[],
                   help="a shipped model folder (or component folder named like the component) to share with")
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
