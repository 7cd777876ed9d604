"""The Embedding Map's service: gallery items embedded once and reused, maps cached, clear messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import embedding_space as es
from pipelines.worlds import shapes
from studio.embedding_map import EmbeddingMapService
from studio.gallery import Gallery


def _fill(gallery: Gallery, n: int, seed: int = 3) -> list[shapes.ShapeRecipe]:
    rng = np.random.default_rng(seed)
    recipes = [shapes.sample_recipe(rng, holdout="include") for _ in range(n)]
    for i, r in enumerate(recipes):
        prompt = shapes.caption(r, None, 0.0) if i % 3 else "a shape"  # repeated prompt: one text point
        gallery.save_image(shapes.render(r), params={"prompt": prompt, "seed": i},
                           fields={"family": "latent_diffusion" if i % 2 else "dit", "model_id": f"m{i % 2}",
                                   "guidance": float(i % 4)})
    return recipes


@pytest.fixture()
def service(tmp_path):
    torch.set_num_threads(2)
    gallery = Gallery.open(tmp_path / "gallery")
    yield EmbeddingMapService(gallery)
    gallery.close()


class Counting:
    """Wraps an embedder and counts what goes through its towers."""

    def __init__(self, inner):
        self.inner, self.images, self.texts = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed_images(self, images, **kw):
        self.images += len(images)
        return self.inner.embed_images(images, **kw)

    def embed_texts(self, texts, **kw):
        self.texts += len(texts)
        return self.inner.embed_texts(texts, **kw)


def test_empty_gallery_says_how_to_fill_it(service):
    with pytest.raises(ValueError, match="no generations yet.*Generate"):
        service.build_map(es.BUILTIN_CLIP_ID, "pca")


def test_map_has_images_and_distinct_prompts_and_reuses_cached_embeddings(service):
    _fill(service.gallery, 12)
    counting = Counting(service.embedder(es.BUILTIN_CLIP_ID))
    service._embedders[es.BUILTIN_CLIP_ID] = counting
    first = service.build_map(es.BUILTIN_CLIP_ID, "umap", 2)
    kinds = [p.kind for p in first.points]
    distinct_prompts = len({p.label for p in first.points if p.kind == "image"})
    assert kinds.count("image") == 12 and kinds.count("prompt") == distinct_prompts < 12
    assert first.coords.shape == (len(first.points), 2) and np.isfinite(first.coords).all()
    assert counting.images == 12 and counting.texts == distinct_prompts
    assert first.stats["embedded"] == 12 + distinct_prompts and not first.stats["projection_cached"]

    again = service.build_map(es.BUILTIN_CLIP_ID, "umap", 2)  # second open: nothing recomputed
    assert counting.images == 12 and counting.texts == distinct_prompts
    assert again.stats["reused"] == 12 + distinct_prompts and again.stats["projection_cached"]
    np.testing.assert_array_equal(again.coords, first.coords)

    service.gallery.save_image(shapes.render(shapes.sample_recipe(np.random.default_rng(99))),
                               params={"prompt": "a shape"}, fields={})
    third = service.build_map(es.BUILTIN_CLIP_ID, "pca", 3)  # incremental: only the new image
    assert counting.images == 13 and counting.texts == distinct_prompts
    assert third.stats["embedded"] == 1 and third.coords.shape == (len(third.points), 3)


def test_cached_vectors_equal_fresh_ones(service):
    _fill(service.gallery, 4)
    result = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    emb = service.embedder(es.BUILTIN_CLIP_ID)
    image_points = [p for p in result.points if p.kind == "image"]
    fresh = emb.embed_images([Image.open(p.path).convert("RGB") for p in image_points])
    cached = np.stack([v for p, v in zip(result.points, result.vectors) if p.kind == "image"])
    np.testing.assert_allclose(cached, fresh, atol=1e-6)


def test_added_texts_and_images_join_the_map(service):
    _fill(service.gallery, 5)
    upload = Image.new("L", (100, 80), 200)
    result = service.build_map(es.BUILTIN_CLIP_ID, "tsne", 2, texts=["a red circle", "", "a red circle", "a blue star"],
                               images=[("grey.png", upload)])
    added = [p for p in result.points if p.kind in ("text", "upload")]
    assert [(p.kind, p.label) for p in added] == [("text", "a red circle"), ("text", "a blue star"), ("upload", "grey.png")]
    assert result.coords.shape == (len(result.points), 2)


def test_colour_by_judged_attribute_reads_the_images(service):
    recipes = _fill(service.gallery, 6)
    result = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    by_gen = {p.gen_id: p for p in result.points if p.kind == "image"}
    for gen_id, recipe in zip(sorted(by_gen), recipes):  # rows were saved in recipe order
        assert service.category(by_gen[gen_id], "judged colour") == recipe.colour
        assert service.category(by_gen[gen_id], "guidance") == float((gen_id - 1) % 4)
    followed = {service.category(p, "prompt followed (judge)") for p in by_gen.values()}
    assert followed <= {"yes", "not a Shapes prompt"} and "yes" in followed
    with pytest.raises(ValueError, match="unknown colouring"):
        service.category(result.points[0], "mood")


def test_unknown_model_is_a_clear_error(service):
    with pytest.raises(es.EmbeddingModelError, match="No CLIP model 'local/nope'"):
        service.embedder("local/nope")


def test_the_same_map_again_is_served_from_memory_until_the_gallery_changes(service):
    _fill(service.gallery, 6)
    first = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    again = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    assert again.points is first.points and again.stats["embedded"] == 0 and again.stats["projection_cached"]
    newest = max(p.gen_id for p in first.points if p.kind == "image")
    service.gallery.delete(newest)
    fewer = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    assert newest not in {p.gen_id for p in fewer.points if p.kind == "image"}
    service.gallery.save_image(Image.new("RGB", (64, 64), (40, 70, 220)), params={"prompt": "a blue square"}, fields={})
    more = service.build_map(es.BUILTIN_CLIP_ID, "pca")
    assert "a blue square" in {p.label for p in more.points} and more.stats["embedded"] >= 1


def test_a_damaged_image_file_is_left_out_of_the_map_and_counted(service):
    _fill(service.gallery, 6)
    rows, _ = service.gallery.search(__import__("studio.gallery.query", fromlist=["GalleryQuery"]).GalleryQuery())
    victim = rows[0]
    path = service.gallery.store.resolve(victim.media_path)
    path.write_bytes(path.read_bytes()[:50])  # truncated, as a crash or a bad disk leaves it
    result = service.build_map(es.BUILTIN_CLIP_ID, "pca", include_prompts=False)
    assert result.stats["unreadable"] == 1
    assert victim.id not in {p.gen_id for p in result.points} and len(result.points) == 5
    assert result.coords.shape == (5, 2) and np.isfinite(result.coords).all()
