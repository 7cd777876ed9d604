"""The CLIP BPE vocabulary, offline: open_clip ships it; transformers wants vocab.json + merges.txt.

Both tokenizers implement OpenAI CLIP's byte-level BPE over the same 49,408-entry vocabulary,
so converting the file is exact. Only the special tokens' spellings differ
(open_clip ``<start_of_text>`` vs transformers ``<|startoftext|>``, ids 49406 and 49407).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # as in OpenAI CLIP's simple_tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def open_clip_bpe_path() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


def write_hf_clip_tokenizer(out_dir: Path, model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Path:
    """Write a transformers CLIPTokenizer folder (vocab.json, merges.txt, configs) to ``out_dir``.

    ``pad_token="!"`` (id 0) matches open_clip, which pads with zeros (as SD 2.x does);
    OpenAI CLIP and SD 1.x pad with ``<|endoftext|>``.
    """
    merges = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out_dir


def compact_tokenizer(folder: Path) -> bool:
    """Rewrite a CLIP BPE ``tokenizer.json`` (what transformers 5's ``save_pretrained`` writes) as ``vocab.json`` +
    ``merges.txt``, the layout real Stable Diffusion folders ship; True when it did.

    Both give the same ids. transformers 5 parses a 3.6 MB ``tokenizer.json`` with Python's json four times while
    loading (0.3-0.6 s on these cores) and the two plain files in a quarter of that: it is the largest part of
    loading the builtin model. Other tokenizers (not BPE, or not CLIPTokenizer) are left alone (False)."""
    folder = Path(folder)
    source, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not (source.is_file() and config_file.is_file()):
        return False
    config = json.loads(config_file.read_text())
    model = json.loads(source.read_text()).get("model", {})
    if config.get("tokenizer_class") != "CLIPTokenizer" or model.get("type") != "BPE":
        return False
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if k in config}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    source.unlink()
    return True
