"""The builtin mini-CLIP: exact text-tower conversion, tokenizer parity, save/load, train/resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import mini_clip

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "clip" / "shapes-clip"
PROMPTS = [
    "a small red circle in the top left on a black background",
    "a large cyan triangle at the bottom",
    "a circle",
    "a shape on a gray background",
    "a photo of a purple star, in the center.",
    "Two   Blue SQUARES and a diamond's edge (x2)",
    "",
    "a very long caption " + "with many repeated words " * 12,
]


@pytest.fixture(scope="module")
def random_model() -> torch.nn.Module:
    return mini_clip.create_model(seed=0).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return mini_clip.get_tokenizer()


def _open_clip_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states of the open_clip text tower (after ln_final), as SD consumes them."""
    x = model.token_embedding(ids) + model.positional_embedding
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def _check_conversion(model: torch.nn.Module, tokenizer, tmp_path: Path) -> float:
    clip_dir = mini_clip.save_clip(model, tmp_path / "clip")
    te_dir, tok_dir = mini_clip.export_sd_text_parts(clip_dir, tmp_path / "sd")
    from transformers import CLIPTextModel

    hf = CLIPTextModel.from_pretrained(te_dir, torch_dtype=torch.float32).eval()
    assert hf.config.hidden_act == "gelu" and hf.config.pad_token_id == 0
    reloaded = mini_clip.load_clip(clip_dir)  # the fp16-stored weights both sides
    ids = tokenizer(PROMPTS)
    with torch.no_grad():
        diff = (hf(input_ids=ids).last_hidden_state - _open_clip_hidden(reloaded, ids)).abs().max().item()
    assert diff < 1e-4, diff
    return diff


def test_text_encoder_conversion_is_exact(random_model, tokenizer, tmp_path):
    _check_conversion(random_model, tokenizer, tmp_path)


@pytest.mark.skipif(not (SHIPPED / mini_clip.WEIGHTS_FILE).is_file(), reason="no shipped shapes-clip weights")
def test_shipped_text_encoder_conversion_is_exact(tokenizer, tmp_path):
    _check_conversion(mini_clip.load_clip(SHIPPED), tokenizer, tmp_path)


def test_hf_tokenizer_matches_open_clip(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    from pipelines.clip_vocab import write_hf_clip_tokenizer

    hf_tok = CLIPTokenizer.from_pretrained(write_hf_clip_tokenizer(tmp_path / "tok", mini_clip.CONTEXT_LENGTH, "!"))
    # open_clip truncates to 31 tokens + EOT; transformers truncates to 32 with the EOT kept too.
    ours = hf_tok(PROMPTS, padding="max_length", max_length=mini_clip.CONTEXT_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
    assert hf_tok.pad_token_id == mini_clip.PAD_ID
    assert torch.equal(ours, tokenizer(PROMPTS))


def test_trimmed_text_encoding_matches_open_clip(random_model, tokenizer):
    from pipelines.training.clip import encode_text_trimmed

    ids = tokenizer(PROMPTS[:4])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(random_model, ids), random_model.encode_text(ids), atol=1e-5)


def test_save_load_round_trip(random_model, tmp_path):
    folder = mini_clip.save_clip(random_model, tmp_path / "clip")
    config = json.loads((folder / mini_clip.CONFIG_FILE).read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"} and config["model_cfg"] == mini_clip.MODEL_CFG
    assert sorted(p.name for p in folder.iterdir()) == sorted([mini_clip.CONFIG_FILE, mini_clip.WEIGHTS_FILE])
    loaded = mini_clip.load_clip(folder)
    for key, value in random_model.state_dict().items():
        got = loaded.state_dict()[key]
        if value.is_floating_point():  # stored as fp16, loaded as fp32
            assert got.dtype == torch.float32 and torch.equal(got, value.half().float()), key
        else:  # BatchNorm counters keep their integer type
            assert torch.equal(got, value), key


def test_zero_shot_accuracy_shape(random_model, tokenizer):
    from pipelines.worlds import shapes

    recipes = [r for r, _ in shapes.sample_dataset(5, 12, holdout="include")]
    acc = mini_clip.zero_shot_accuracy(random_model, tokenizer, recipes, shapes.render_batch(recipes))
    assert set(acc) == {"colour", "shape", "position", "background", "size"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_positives_include_single_attribute_matches():
    from pipelines.training.clip import make_batch, positives_matrix

    recipes, images, captions = make_batch(0, 0, 32)
    assert images.shape == (32, 64, 64, 3)
    positives = positives_matrix(recipes, captions)
    assert positives.diagonal().all() and positives.sum() > 32


def test_train_checkpoint_and_resume(tmp_path):
    from pipelines import train

    def run(run_dir: Path, *extra: str) -> dict:
        return train.main(["clip", "--steps", "4", "--batch-size", "8", "--warmup", "2", "--run-dir", str(run_dir),
                           "--out", str(run_dir / "out"), "--eval-n", "8", "--checkpoint-every", "2", *extra])

    run(tmp_path / "full")
    assert run(tmp_path / "split", "--stop-at", "3") == {"step": 3}
    assert (tmp_path / "split" / "checkpoint.pt").is_file() and not (tmp_path / "split" / "out").exists()
    run(tmp_path / "split", "--resume")
    full, split = (_losses(tmp_path / name / "loss.jsonl") for name in ("full", "split"))
    assert len(full) == len(split) == 4 and full == pytest.approx(split, rel=1e-5, abs=1e-6)
    a = mini_clip.load_clip(tmp_path / "full" / "out").state_dict()
    b = mini_clip.load_clip(tmp_path / "split" / "out").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)


@pytest.mark.slow
def test_a_few_hundred_steps_reduce_the_loss(tmp_path):
    from pipelines import train

    train.main(["clip", "--steps", "200", "--batch-size", "128", "--warmup", "30", "--run-dir", str(tmp_path),
                "--out", str(tmp_path / "out"), "--eval-n", "100"])
    losses = _losses(tmp_path / "loss.jsonl")
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / mini_clip.WEIGHTS_FILE).is_file(), reason="no shipped shapes-clip weights")
def test_shipped_weights_meet_the_zero_shot_bar():
    from pipelines.training.clip import heldout_report

    report = heldout_report(mini_clip.load_clip(SHIPPED), mini_clip.get_tokenizer(), 1000)
    assert report["seen"]["colour"] >= 0.95 and report["seen"]["shape"] >= 0.90, report


def test_locked_text_training_changes_only_the_image_tower(tmp_path):
    from pipelines import train

    source = mini_clip.create_model(seed=3)
    src_dir = mini_clip.save_clip(source, tmp_path / "src")
    train.main(["clip", "--steps", "3", "--batch-size", "8", "--warmup", "1", "--run-dir", str(tmp_path / "run"),
                "--out", str(tmp_path / "out"), "--eval-n", "8", "--lock-text-from", str(src_dir)])
    before, after = mini_clip.load_clip(src_dir).state_dict(), mini_clip.load_clip(tmp_path / "out").state_dict()
    text = [k for k in after if mini_clip.is_text_key(k)]
    assert "text_projection" in text and "token_embedding.weight" in text
    assert all(torch.equal(before[k], after[k]) for k in text)
    visual = [k for k in after if k.startswith("visual.") and after[k].is_floating_point()]
    assert any(after[k].shape != before[k].shape or not torch.equal(after[k], before[k]) for k in visual)


def test_a_saved_tokenizer_compacts_to_vocab_and_merges_with_the_same_ids(tokenizer, tmp_path):
    """transformers 5 saves a CLIP tokenizer as tokenizer.json; ``compact_tokenizer`` rewrites it as vocab.json +
    merges.txt (real SD's layout, 4x faster to load) giving the same ids; other tokenizers are left alone."""
    from transformers import AutoTokenizer, CLIPTokenizer

    from pipelines.clip_vocab import compact_tokenizer, write_hf_clip_tokenizer

    saved = tmp_path / "saved"
    CLIPTokenizer.from_pretrained(write_hf_clip_tokenizer(tmp_path / "tok", mini_clip.CONTEXT_LENGTH, "!")
                                  ).save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file() and not (saved / "vocab.json").exists()
    assert compact_tokenizer(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["merges.txt", "special_tokens_map.json",
                                                        "tokenizer_config.json", "vocab.json"]
    compacted = CLIPTokenizer.from_pretrained(saved)
    ids = compacted(PROMPTS, padding="max_length", max_length=mini_clip.CONTEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    assert torch.equal(ids, tokenizer(PROMPTS)) and compacted.pad_token_id == mini_clip.PAD_ID
    assert not compact_tokenizer(saved)  # nothing left to compact
    other = tmp_path / "other"  # a word-level tokenizer (the tones world's kind) stays as it is
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word = Tokenizer(models.WordLevel({"[UNK]": 0, "beep": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word, unk_token="[UNK]").save_pretrained(other)
    assert not compact_tokenizer(other) and (other / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(other)("beep").input_ids == [1]
