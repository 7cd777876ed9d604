"""The studio's Generate action through gradio_client against a running studio."""
import pytest
from gradio_client import Client

from studio.gallery import Gallery


@pytest.fixture(scope="module")
def client(studio):
    return Client(studio.url, verbose=False)


def test_generate_through_the_api_is_saved_in_the_gallery(client, studio):
    status, _preview, images, params, *_ = client.predict(
        "local/tiny-sd", "a red circle on a white background", "", 3, 5.0, 1234, 16, 16, "euler", 2,
        api_name="/generate")
    assert status.startswith("Done") and "seed 1234" in status
    assert len(images) == 2
    assert params["seeds"] == [1234, 1235] and params["scheduler"] == "euler"
    gallery = Gallery.open(studio.gallery_dir)
    try:
        rows = [gallery.get(i) for i in params["gallery_ids"]]
        assert [r.seed for r in rows] == [1234, 1235]
        assert all(r.trajectory_frames == 3 and r.params["num_images"] == 1 for r in rows)
    finally:
        gallery.close()


def test_same_seed_through_the_api_gives_the_same_pixels(client):
    from PIL import Image
    import numpy as np

    runs = [client.predict("local/tiny-sd", "a blue square", "", 2, 7.5, 77, 16, 16, "dpmpp_2m", 1,
                           api_name="/generate")[2][0]["image"] for _ in range(2)]
    a, b = (np.asarray(Image.open(p)) for p in runs)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Gradio itself refuses slider values outside the slider's range.
        (("local/tiny-sd", "a red circle", "", 0, 7.5, 1, 16, 16, "ddim", 1), "less than minimum value 1"),
        (("local/tiny-sd", "a red circle", "", 10**6, 7.5, 1, 16, 16, "ddim", 1), "greater than maximum"),
        (("local/tiny-sd", "a red circle", "", 2, -1.0, 1, 16, 16, "ddim", 1), "less than minimum value 0"),
        (("local/tiny-sd", "a red circle", "", 2, 7.5, 1, 20, 16, "ddim", 1), "multiple of 8"),
        (("local/tiny-sd", "a red circle", "", 2, 7.5, 1.5, 16, 16, "ddim", 1), "Seed"),
        (("no/such-model", "a red circle", "", 2, 7.5, 1, 16, 16, "ddim", 1), "Unknown model id"),
        (("local/tiny-sd", "   ", "", 2, 7.5, 1, 16, 16, "ddim", 1), "prompt"),
        (("local/tiny-sd-broken", "a red circle", "", 2, 7.5, 1, 16, 16, "ddim", 1),
         r"tiny-sd-broken/unet/diffusion_pytorch_model\.safetensors is corrupt or truncated"),
    ],
)
def test_bad_input_is_a_clear_error_and_saves_nothing(client, studio, args, message):
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")
        assert gallery.count() == before and gallery.integrity_check() == "ok"
    finally:
        gallery.close()


def test_app_stays_up_after_a_broken_model(client):
    with pytest.raises(Exception, match="corrupt"):
        client.predict("local/tiny-sd-broken", "a red circle", "", 2, 7.5, 1, 16, 16, "ddim", 1, api_name="/generate")
    status = client.predict("local/tiny-sd", "a red circle", "", 2, 7.5, 1, 16, 16, "ddim", 1,
                            api_name="/generate")[0]
    assert status.startswith("Done")


def test_long_prompt_generates_and_says_which_words_were_cut(client):
    prompt = "a red circle " + " ".join(f"filler{i}" for i in range(100)) + " lastword"
    status = client.predict("local/tiny-sd", prompt, "", 2, 7.5, 1, 16, 16, "ddim", 1, api_name="/generate")[0]
    assert status.startswith("Done") and "were cut" in status and "lastword" in status


SWEEP = ("local/tiny-sd", "a red circle on a white background", "", "1, 4", "0", 2, "ddim", 0, 0, 100, True)


def test_guidance_sweep_through_the_api_is_one_saved_group_that_reopens(client, studio):
    status, grid, *rest = client.predict(*SWEEP, api_name="/guidance_sweep")
    assert status.startswith("Done: 2 cells") and len(grid) == 2
    group_id = int(status.split("sweep #")[1].split()[0].rstrip("."))
    gallery = Gallery.open(studio.gallery_dir)
    try:
        members = gallery.group_members(group_id)
        assert [(m.guidance, m.seed, m.steps) for m in members] == [(1.0, 0, 2), (4.0, 0, 2)]
        assert gallery.get_group(group_id).status == "done"
    finally:
        gallery.close()
    reopened = client.predict(group_id, api_name="/guidance_open")
    assert reopened[0].startswith(f"Reopened guidance sweep #{group_id} (done): 2 cells")
    assert len(reopened[1]["value"]) == 2 and reopened[1]["columns"] == 2


def test_a_prompt_batch_from_the_command_line_reopens_in_the_guidance_explorer(client, studio, capsys):
    """``python -m studio.batch`` writes into the running studio's gallery; the Guidance Explorer reopens the batch
    (the Gallery tab's "Open its sweep" button leads there too)."""
    from studio import batch

    prompts = studio.gallery_dir.parent / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n", encoding="utf-8")
    assert batch.main(["--model", "local/tiny-sd", "--prompts-file", str(prompts), "--seeds", "0,1", "--steps", "2",
                       "--scheduler", "ddim", "--device", "cpu", "--no-hf-cache", "--models-dir",
                       str(studio.models_dir), "--gallery-dir", str(studio.gallery_dir)]) == 0
    gallery = Gallery.open(studio.gallery_dir)
    try:
        group = next(g for g in gallery.groups() if g.kind == batch.BATCH_KIND)
    finally:
        gallery.close()
    reopened = client.predict(group.id, api_name="/guidance_open")
    assert reopened[0].startswith(f"Reopened prompt batch #{group.id} (done): 4 cells")
    assert len(reopened[1]["value"]) == 4


@pytest.mark.parametrize(("changes", "message"), [
    ({3: ""}, "Give at least one scale"),
    ({3: "1, strong"}, "'strong' is not a number"),
    ({3: "1,2,3,4,5,6,7,8,9", 4: "0,1,2,3,4,5,6,7"}, "72 cells; a sweep holds at most 64 cells"),
    ({0: "local/tiny-lcm"}, "no classifier-free guidance"),
])
def test_bad_sweeps_are_refused_with_the_reason_and_save_nothing(client, studio, changes, message):
    args = list(SWEEP)
    for k, v in changes.items():
        args[k] = v
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before, groups = gallery.count(), len(gallery.groups())
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/guidance_sweep")
        assert gallery.count() == before and len(gallery.groups()) == groups
    finally:
        gallery.close()


def test_a_dit_model_generates_from_a_typed_label_and_says_which(client, studio):
    status, _preview, images, params, *_ = client.predict(
        "local/tiny-dit", "a cube", "", 2, 3.0, 7, 16, 16, "ddim", 1, api_name="/generate")
    assert status.startswith("Done") and "Class label used: “cube”" in status
    assert params["class_label"] == "cube" and params["class_id"] == 1 and params["family"] == "dit"
    assert len(images) == 1


def test_a_flow_model_generates_with_its_own_scheduler_and_refuses_diffusion_samplers(client, studio):
    status, _preview, images, params, *_ = client.predict(
        "local/tiny-sd3", "a red circle", "", 3, 3.0, 11, 16, 16, "model default", 1, api_name="/generate")
    assert status.startswith("Done") and params["family"] == "flow_matching" and len(images) == 1
    assert params["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        with pytest.raises(Exception, match="flow-match scheduler"):
            client.predict("local/tiny-sd3", "a red circle", "", 3, 3.0, 11, 16, 16, "ddim", 1, api_name="/generate")
        assert gallery.count() == before
    finally:
        gallery.close()


def test_a_token_model_generates_with_temperature_and_top_k(client, studio):
    status, _preview, images, params, *_ = client.predict(
        "local/tiny-vqgan", "a red circle", "", 4, 2.0, 13, 16, 16, "model default", 1, 0.7, 5, api_name="/generate")
    assert status.startswith("Done") and params["family"] == "vqgan_prior" and len(images) == 1
    assert params["temperature"] == 0.7 and params["top_k"] == 5 and params["scheduler"] == "autoregressive"
    gallery = Gallery.open(studio.gallery_dir)
    try:
        row = gallery.get(params["gallery_ids"][0])
        assert row.trajectory_frames == 4 and row.family == "vqgan_prior"
        before = gallery.count()
        with pytest.raises(Exception, match="no noise scheduler"):
            client.predict("local/tiny-vqgan", "a red circle", "", 4, 2.0, 13, 16, 16, "ddim", 1, 1.0, 0,
                           api_name="/generate")
        # a diffusion model ignores the hidden token fields rather than failing
        status, *_ = client.predict("local/tiny-sd", "a red circle", "", 2, 2.0, 13, 16, 16, "ddim", 1, 0.7, 5,
                                    api_name="/generate")
        assert status.startswith("Done") and gallery.count() == before + 1
    finally:
        gallery.close()


def test_compare_families_saves_one_group_with_a_row_per_model(client, studio):
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        status, finals, sheet, table = client.predict(
            ["local/tiny-sd", "local/tiny-dit", "local/tiny-sd3", "local/tiny-vqgan"], 3, "a red circle", "", 5,
            api_name="/compare_families")
        assert status.startswith("Done") and len(finals) == 4 and sheet
        rows = table["data"]
        assert [r[1] for r in rows] == ["latent_diffusion", "dit", "flow_matching", "vqgan_prior"]
        assert [r[2] for r in rows] == [3, 3, 3, 16]  # counted network evaluations
        group = gallery.groups(kind="family_comparison")[0]
        members = gallery.group_members(group.id)
        assert group.status == "done" and len(members) == 4 and gallery.count() == before + 4
        assert {m.family for m in members} == {"latent_diffusion", "dit", "flow_matching", "vqgan_prior"}
        assert all(m.seed == 5 and m.trajectory_frames > 0 for m in members)
        with pytest.raises(Exception, match="Network evaluations"):
            client.predict(["local/tiny-sd"], 500, "a red circle", "", 5, api_name="/compare_families")
        with pytest.raises(Exception, match="Tick at least one model"):
            client.predict([], 3, "a red circle", "", 5, api_name="/compare_families")
        assert gallery.count() == before + 4
    finally:
        gallery.close()
