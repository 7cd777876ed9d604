"""Inside the Model, forward process: the handlers directly, then through a running studio's API."""
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from gradio_client import Client
from PIL import Image

import gradio as gr
from pipelines import forward_process as fp
from studio.tabs.inside_forward import (Prepared, noise_view, predict, predictable_models, prepare,
                                        schedule_figure)


@pytest.fixture(scope="module")
def services(tiny_services):
    return tiny_services


def test_the_slider_view_is_the_schedulers_add_noise(services):
    prepared, described = prepare(services, "World sample", None, None, 7, 11)
    assert described.startswith("Picture: Shapes world sample:") and prepared.x0.shape == (3, 64, 64)
    again, _ = prepare(services, "World sample", None, None, 7, 11)
    assert torch.equal(again.noise, prepared.noise)  # the noise seed fixes eps
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    for t in (0, 300, 999):
        image, numbers = noise_view(prepared, "cosine", t)
        expected = theirs.add_noise(prepared.x0, prepared.noise, torch.tensor([t]))  # (3, 64, 64)
        pixels = ((expected.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
        assert np.array_equal(np.asarray(image), pixels)
        assert numbers.startswith(f"**t = {t}** (cosine) · a_t = √ᾱ_t = ")
    flow_image, flow_numbers = noise_view(prepared, "flow matching", 499)
    assert "b_t = σ = 0.5 " in flow_numbers and "SNR = a²/b² = 1 " in flow_numbers
    assert "ᾱ-equivalent = 0.5" in flow_numbers and flow_image.size == (64, 64)


def test_noise_drowns_the_picture_as_t_grows(services):
    prepared, _ = prepare(services, "World sample", None, None, 3, 0)
    clean = np.asarray(fp.to_image(prepared.x0), dtype=float)
    errors = [np.abs(np.asarray(noise_view(prepared, "linear", t)[0], dtype=float) - clean).mean()
              for t in (0, 100, 400, 999)]
    assert errors == sorted(errors) and errors[0] < 5 < errors[-1]


def test_an_upload_is_shrunk_for_the_view(services):
    upload = Image.new("RGB", (600, 300), (10, 200, 90))
    prepared, described = prepare(services, "Upload", upload, None, None, 0)
    assert "uploaded image" in described and prepared.x0.shape == (3, 128, 256) and "256×128" in described


def test_the_plot_marks_t_on_each_schedule(services):
    fig = schedule_figure(["linear", "flow matching"], "cosine", 250)
    names = [trace.name for trace in fig.data if trace.mode == "lines"]
    assert names == ["cosine"] * 2 + ["linear"] * 2 + ["flow matching"] * 2
    markers = [trace for trace in fig.data if trace.mode == "markers"]
    assert [m.x[0] for m in markers] == [250] * 6
    assert markers[0].y[0] == pytest.approx(fp.signal_noise("cosine", 250).alpha_bar)
    assert markers[1].y[0] == pytest.approx(fp.signal_noise("cosine", 250).log_snr)
    last = schedule_figure([], "flow matching", 999)  # log-SNR = -inf at pure noise: a gap, not an error
    assert last.data[3].y[0] is None


def test_predict_on_the_tiny_model(services):
    estimate, true_x0, shown, line = predict(services, "World sample", None, None, 7, 0, "cosine", 500,
                                             "local/tiny-sd", "a red circle", 1)
    assert estimate.size == true_x0.size == shown.size == (16, 16)
    assert line.startswith("Model timestep used: **359**") and "chosen cosine t = 500" in line
    assert "latent MSE(x̂₀, x₀)" in line and "dB" in line
    *_, flow_line = predict(services, "World sample", None, None, 7, 0, "flow matching", 100, "local/tiny-sd3", "",
                            1)
    assert flow_line.startswith("Model timestep used: **101**")
    listed = [mid for _, mid in predictable_models(services)]
    assert "local/tiny-sd" in listed and "local/tiny-dit" in listed and "local/tiny-audioldm" not in listed


@pytest.mark.parametrize(("args", "message"), [
    (("Upload", None, None, None, 0), "Upload an image first"),
    (("Gallery item", None, 999999, None, 0), "not an image in the gallery"),
    (("Gallery item", None, None, None, 0), "Type a gallery item number"),
    (("World sample", None, None, -1, 0), "World seed"),
    (("World sample", None, None, 1, -1), "Noise seed must be a whole number"),
    (("World sample", None, None, 1, 2.5), "Noise seed must be a whole number"),
    (("Somewhere", None, None, 1, 0), "Choose an image source"),
])
def test_bad_pictures_are_errors_with_a_message(services, args, message):
    with pytest.raises(gr.Error, match=message):
        prepare(services, *args)


def test_bad_slider_input_is_an_error_with_a_message(services):
    prepared, _ = prepare(services, "World sample", None, None, 7, 0)
    with pytest.raises(gr.Error, match="t must be a whole number from 0 to 999"):
        noise_view(prepared, "linear", 1000)
    with pytest.raises(gr.Error, match="Unknown schedule 'karras'"):
        noise_view(prepared, "karras", 10)
    with pytest.raises(gr.Error, match="Choose a picture first"):
        noise_view(None, "linear", 10)
    with pytest.raises(gr.Error, match="Unknown schedule"):
        schedule_figure(["linear", "nope"], "linear", 10)
    assert isinstance(prepared, Prepared)


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("no/such-model", {}, "Unknown model id"),
    (None, {}, "Choose a model"),
    ("local/tiny-sd-broken", {}, "corrupt or truncated"),
    ("local/tiny-audioldm", {}, "latent-diffusion, DiT and flow-matching models; local/tiny-audioldm is a audio_ldm"),
    ("local/tiny-sd", {"guidance": "lots"}, "Guidance scale must be a number"),
    ("local/tiny-sd", {"guidance": 99}, "guidance scale must be a number from 0 to 30"),
    ("local/tiny-sd", {"t": -3}, "t must be a whole number"),
    ("local/tiny-sd", {"source": "Upload"}, "Upload an image first"),
])
def test_bad_predictions_are_errors_with_a_message(services, model, extra, message):
    values = dict(source="World sample", t=10, guidance=1)
    values.update(extra)
    with pytest.raises(gr.Error, match=message):
        predict(services, values["source"], None, None, 7, 0, "linear", values["t"], model, "", values["guidance"])


def test_through_the_api(studio):
    client = Client(studio.url, verbose=False)
    first, numbers = client.predict("scaled-linear", 100, api_name="/forward_noise")
    assert numbers.startswith("**t = 100** (scaled-linear)") and Image.open(first).size == (64, 64)
    client.predict("World sample", None, None, 12, 5, api_name="/forward_image")
    second, _ = client.predict("scaled-linear", 100, api_name="/forward_noise")
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    estimate, true_x0, shown, line = client.predict("World sample", None, None, 12, 5, "linear", 500,
                                                    "local/tiny-sd", "a red circle", 1, api_name="/forward_predict")
    assert Image.open(estimate).size == (16, 16) and line.startswith("Model timestep used: **708**")
    with pytest.raises(Exception, match="greater than maximum value 999"):  # Gradio's own range check
        client.predict("World sample", None, None, 12, 5, "linear", 1500, "local/tiny-sd", "", 1,
                       api_name="/forward_predict")
    with pytest.raises(Exception, match="Noise seed must be a whole number"):
        client.predict("World sample", None, None, 12, -5, "linear", 10, "local/tiny-sd", "", 1,
                       api_name="/forward_predict")
