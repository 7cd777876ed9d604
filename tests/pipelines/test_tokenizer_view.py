"""pipelines.tokenizer_view: text tokens equal the tokenizers' own output, cuts where they cut; patch grids;
VQ encode -> decode equals the VQGAN's own round trip; token edits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import embedding_space as es, tokenizer_view as tv

VQGAN = es.ASSETS / "tokenizers" / "shapes-vqgan"


@pytest.fixture(scope="module")
def mini_tokenizer():
    import open_clip

    return open_clip.get_tokenizer(f"local-dir:{es.BUILTIN_CLIP_DIR}")


@pytest.mark.parametrize("text", ["a red circle", "", "a small red circle in the top left on a black background " * 3,
                                  "émoji 🎨 and right-to-left עברית", "x" * 10_000])
def test_open_clip_view_ids_equal_open_clips_tokenizer(mini_tokenizer, text):
    view = tv.text_tokens(mini_tokenizer, text)
    assert view.ids == mini_tokenizer([text])[0].tolist() and view.limit == 32
    assert view.kept[0].kind == "start" and any(t.kind == "end" for t in view.kept)
    body = mini_tokenizer.encode(text)
    assert len(view.cut) == max(0, len(body) - 30)
    assert [t.id for t in view.kept if t.kind == "text"] + [t.id for t in view.cut] == body


def test_transformers_clip_view_ids_equal_its_padded_truncated_ids(tmp_path):
    from transformers import CLIPTokenizer

    from pipelines.clip_vocab import write_hf_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_hf_clip_tokenizer(tmp_path / "tok"))
    text = "a red circle, " * 40
    view = tv.text_tokens(tok, text)
    expected = tok(text, truncation=True, max_length=77, padding="max_length")["input_ids"]
    assert view.ids == expected and view.limit == 77
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert [t.id for t in view.kept if t.kind == "text"] == body[:75] and [t.id for t in view.cut] == body[75:]
    short = tv.text_tokens(tok, "a red circle")
    assert [t.kind for t in short.kept[:5]] == ["start", "text", "text", "text", "end"] and not short.cut
    assert all(t.kind == "pad" for t in short.kept[5:])


def test_t5_sentencepiece_pieces_and_cut(tmp_path):
    from transformers import AutoTokenizer

    from pipelines.tiny import build_tiny_t5_tokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_t5_tokenizer(tmp_path / "tokenizer_3", model_max_length=16))
    text = "a small red circle in the top left"
    view = tv.text_tokens(tok, text)
    assert view.ids == tok(text, truncation=True, max_length=16, padding="max_length")["input_ids"]
    assert view.kept[0].piece.startswith("▁") and view.kept[-1].piece == "</s>" and view.kept[-1].kind == "end"
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert [t.id for t in view.kept if t.kind == "text"] + [t.id for t in view.cut] == body
    short = tv.text_tokens(tok, "a red")
    assert short.kept[-1].kind == "pad" and short.kept[-1].id == tok.pad_token_id and not short.cut


def test_patch_grid_of_the_builtin_and_of_a_vit(tmp_path):
    from pipelines.tiny import build_tiny_open_clip_vit

    image = Image.new("RGB", (64, 64), (220, 40, 40))
    builtin = tv.patch_view(es.ClipEmbedder(es.find_clip_models()[0]), image)
    assert builtin.kind == "attention-pool" and builtin.grid == 2 and builtin.cell == 32
    vit = tv.patch_view(es.ClipEmbedder(es.ClipChoice("local/vit", build_tiny_open_clip_vit(tmp_path / "vit"),
                                                      "open_clip")), image)
    assert vit.kind == "vit" and vit.grid == 4 and vit.cell == 8
    for view in (builtin, vit):
        n = view.grid ** 2
        assert view.pos_similarity.shape == (n, n) and view.cls_attention.shape == (view.grid, view.grid)
        np.testing.assert_allclose(np.diag(view.pos_similarity), 1.0, rtol=1e-5)
        assert (view.cls_attention >= 0).all() and view.cls_attention.sum() <= 1.0 + 1e-5


def test_vit_class_attention_matches_the_blocks_own_attention(tmp_path):
    from pipelines.tiny import build_tiny_open_clip_vit

    emb = es.ClipEmbedder(es.ClipChoice("local/vit", build_tiny_open_clip_vit(tmp_path / "vit"), "open_clip"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    view = tv.patch_view(emb, image)
    visual = emb.model.visual
    with torch.no_grad():  # recompute by hand: embed, run all but the last block, attend with the last one's weights
        x = emb._preprocess(image).unsqueeze(0)
        seen = {}
        h = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
        visual(x)
        h.remove()
        block = visual.transformer.resblocks[-1]
        hn = block.ln_1(seen["x"])[0]
        w_q, w_k, _ = block.attn.in_proj_weight.chunk(3)
        b_q, b_k, _ = block.attn.in_proj_bias.chunk(3)
        q, k = hn[:1] @ w_q.T + b_q, hn @ w_k.T + b_k
        heads = block.attn.num_heads
        d = q.shape[-1] // heads
        att = torch.stack([torch.softmax(q[:, i * d:(i + 1) * d] @ k[:, i * d:(i + 1) * d].T / d ** 0.5, -1)
                           for i in range(heads)]).mean(0)[0, 1:]
    np.testing.assert_allclose(view.cls_attention.flatten(), att.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def vq():
    from diffusers import VQModel

    return VQModel.from_pretrained(VQGAN, use_safetensors=True).eval()


def test_vq_view_round_trip_equals_the_vqgans_own(vq):
    from pipelines.worlds import shapes

    image = shapes.render(shapes.sample_recipe(np.random.default_rng(5)))
    grid = tv.vq_encode(vq, [image])[0]
    assert grid.shape == (16, 16)
    ours = np.asarray(tv.vq_decode(vq, grid), np.int16)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        own = vq(x).sample[0].clamp(-1, 1)
    own = ((own.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.int16)
    assert np.abs(ours - own).max() <= 1


def test_wrong_size_and_mode_are_converted_for_the_vqgan(vq):
    grid = tv.vq_encode(vq, [Image.new("L", (100, 30), 128)])
    assert grid.shape == (1, 16, 16)


def test_token_edits(vq):
    grid = torch.zeros(16, 16, dtype=torch.long)
    other = torch.arange(256).view(16, 16)
    set_id = tv.edit_tokens(grid, (2, 3), (5, 4), code=7, vocab=256)
    assert int((set_id == 7).sum()) == 4 and set_id[2:4, 4:6].eq(7).all() and grid.eq(0).all()
    copied = tv.edit_tokens(grid, (0, 0), (0, 15), source=other)
    assert copied[0].tolist() == list(range(16)) and copied[1:].eq(0).all()
    with pytest.raises(ValueError, match="16x16 grid"):
        tv.edit_tokens(grid, (0, 16), (0, 0), code=1)
    with pytest.raises(ValueError, match="outside 0-255"):
        tv.edit_tokens(grid, (0, 0), (0, 0), code=256, vocab=256)
    with pytest.raises(ValueError, match="either"):
        tv.edit_tokens(grid, (0, 0), (0, 0))
    assert tv.vq_decode(vq, copied).size == (64, 64)
