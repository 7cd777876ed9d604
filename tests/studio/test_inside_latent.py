"""Inside the Model, latent compression: the handler's parts directly, then through a running studio's API."""
import math

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from studio.tabs.inside_latent import compress, summary_markdown, view_outputs


@pytest.fixture(scope="module")
def services(tiny_services):
    return tiny_services


def test_a_world_sample_through_the_tiny_model(services):
    view, described = compress(services, "local/tiny-sd", "World sample", None, None, 7)
    assert described.startswith("Shapes world sample:")
    assert view.pixel_shape == (3, 16, 16) and view.latent_shape == (4, 8, 8) and view.ratio == 3.0
    assert "centre-cropped" not in view.preprocessing and "resized from 64×64" in view.preprocessing
    text, original, recon, channels = view_outputs(view, "local/tiny-sd", described)
    assert text.startswith("**pixels 3×16×16 = 768 values → latent 4×8×8 = 256 values: 3.0× fewer**")
    assert f"{view.psnr_db:.2f} dB" in text and "z × " in text
    assert original is view.input_image and recon is view.reconstruction
    assert [label for _, label in channels] == [c.label for c in view.channels] and len(channels) == 4


def test_an_upload_and_a_token_model(services):
    upload = Image.new("RGB", (40, 30), (10, 200, 90))
    view, described = compress(services, "local/tiny-vqgan", "Upload", upload, None, None)
    assert described == "uploaded image" and "centre-cropped from 40×30 to 30×30" in view.preprocessing
    assert view.tokens == 16 and "ids from a codebook of 32" in summary_markdown(view, "local/tiny-vqgan", described)
    assert view.ratio == math.prod(view.pixel_shape) / math.prod(view.latent_shape)


@pytest.mark.parametrize(("args", "message"), [
    (("local/tiny-sd", "Upload", None, None, 0), "Upload an image first"),
    (("local/tiny-sd", "Gallery item", None, 999999, 0), "not an image in the gallery"),
    (("local/tiny-sd", "World sample", None, None, -1), "World seed"),
    (("local/tiny-audioldm", "World sample", None, None, 0), "has no image VAE to show"),
    (("local/tiny-animatediff", "World sample", None, None, 0), "has no image VAE to show"),
    (("no/such-model", "World sample", None, None, 0), "Unknown model id"),
    ((None, "World sample", None, None, 0), "Pick a model"),
    (("local/tiny-sd-broken", "World sample", None, None, 0), "corrupt or truncated"),
])
def test_bad_input_is_a_value_error_with_a_message(services, args, message):
    with pytest.raises(ValueError, match=message):
        compress(services, *args)


def test_through_the_api(studio):
    client = Client(studio.url, verbose=False)
    text, original, recon, channels = client.predict("local/tiny-sd", "Upload",
                                                     handle_file(str(_png(studio.gallery_dir.parent))), None, 0,
                                                     api_name="/latent_compression")
    assert "pixels 3×16×16 = 768 values → latent 4×8×8 = 256 values: 3.0× fewer" in text
    assert Image.open(original).size == (16, 16) and Image.open(recon).size == (16, 16)
    assert len(channels) == 4 and channels[0]["caption"].startswith("channel 0 (")
    # the dropdown lists image models only, so an audio model is refused before the handler runs
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("local/tiny-audioldm", "World sample", None, None, 0, api_name="/latent_compression")
    with pytest.raises(Exception, match="Upload an image first"):
        client.predict("local/tiny-sd", "Upload", None, None, 0, api_name="/latent_compression")
    with pytest.raises(Exception, match="corrupt or truncated"):
        client.predict("local/tiny-sd-broken", "World sample", None, None, 0, api_name="/latent_compression")
    text = client.predict("local/tiny-dit", "World sample", None, None, 5, api_name="/latent_compression")[0]
    assert "latent 4×8×8 = 256 values: 3.0× fewer" in text  # still up after the errors


def _png(folder):
    path = folder / "latent-upload.png"
    Image.new("RGB", (32, 32), (250, 120, 0)).save(path)
    return path
