"""Embedding Map and Tokenizer Viewer through gradio_client against a running studio."""
import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def client(studio):
    return Client(studio.url, verbose=False)


@pytest.fixture(scope="module")
def gen_ids(client):
    *_, params = client.predict("local/tiny-sd", "a red circle on a white background", "", 2, 5.0, 4321, 16, 16,
                                "euler", 2, api_name="/generate")[:4]
    return params["gallery_ids"]


def test_embedding_map_of_the_gallery_then_from_cache(client, gen_ids):
    first = client.predict("builtin/shapes-clip", "PCA", "2-D", "model", True, True, "a blue star\na red circle",
                           None, api_name="/embedding_map")
    plot, status = first[0], first[1]
    assert plot is not None and "points" in status and "embedded now" in status
    again = client.predict("builtin/shapes-clip", "PCA", "2-D", "model", True, True, "a blue star\na red circle",
                           None, api_name="/embedding_map")[1]
    assert "embedded now: 0" in again and "map from cache" in again


def test_clicking_a_point_opens_the_generation(client, gen_ids):
    out = client.predict(str(gen_ids[0]), api_name="/open_generation")
    assert f"#{gen_ids[0]}" in str(out)
    with pytest.raises(Exception, match="no longer exists"):
        client.predict("999999", api_name="/open_generation")


def test_probes(client, gen_ids):
    text = client.predict("builtin/shapes-clip", "a red circle", "a red square", "a blue circle",
                          api_name="/compare_texts")
    assert "cos(A, B) =" in text and "closer to A" in text
    _, note = client.predict("builtin/shapes-clip", None, gen_ids[0], "red, blue, green", "a {} shape",
                             api_name="/zero_shot")
    assert "resized from 16x16 to 64x64" in note
    with pytest.raises(Exception, match="#999999 is not an image in the gallery"):
        client.predict("builtin/shapes-clip", None, 999999, "red, blue", "{}", api_name="/zero_shot")
    with pytest.raises(Exception, match="two labels"):
        client.predict("builtin/shapes-clip", None, gen_ids[0], "red", "{}", api_name="/zero_shot")


def test_text_tokens_side_by_side_for_an_sd3_folder(client):
    note, view = client.predict("a small red circle", "local/tiny-sd3", api_name="/tokenize")
    assert view.count("class='tok-view'") == 3  # mini-CLIP + the SD3 folder's two CLIP tokenizers
    assert "tokenizer_2" in view and "nothing cut" in view and note == ""


def test_ten_thousand_characters_are_handled_and_the_cut_shown(client):
    note, view = client.predict("a red circle " * 1000, "builtin/shapes-ldm", api_name="/tokenize")
    assert "drops" in note and "limit 32" in view and "more cut" in view


def test_vq_codes_of_a_gallery_image_and_an_edit(client, gen_ids):
    note, grid, recon = client.predict(None, gen_ids[0], "builtin/shapes-vqgan (tokenizer)", api_name="/vq_encode")
    assert "16×16 = 256 tokens" in note and "converted to RGB 64×64" in note and grid.count("<td") == 256
    edited = client.predict("builtin/shapes-vqgan (tokenizer)", "0-7", "0-15", 5, None, api_name="/vq_edit")
    assert edited is not None
    with pytest.raises(Exception, match="16x16 grid"):
        client.predict("builtin/shapes-vqgan (tokenizer)", "0-99", "0", 5, None, api_name="/vq_edit")
