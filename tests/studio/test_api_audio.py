"""The Audio tab through gradio_client with a tiny AudioLDM: a clip in the gallery as a WAV with its
parameters, the judge's note, and clear refusals."""
import pytest
from gradio_client import Client

from pipelines import audio
from studio.gallery import Gallery


@pytest.fixture(scope="module")
def client(studio):
    return Client(studio.url, verbose=False)


def test_generate_audio_is_saved_as_a_wav_with_its_parameters(client, studio):
    status, sound, picture, *_ = client.predict("local/tiny-audioldm", "a high sine tone", "", 0.5, 2, 2.5, 77,
                                                api_name="/generate_audio")
    assert status.startswith("Done") and "seed 77" in status and "Judge:" in status
    assert sound is not None and picture is not None
    gen_id = int(status.split("gallery item #")[1].split(".")[0])
    gallery = Gallery.open(studio.gallery_dir)
    try:
        row = gallery.get(gen_id)
        assert row.media_type == "audio" and row.family == "audio_ldm" and row.trajectory_frames == 2
        path, _ = gallery.read_media(gen_id)
        samples, rate, params = audio.read_wav(path.read_bytes())
        assert rate == 16_000 and len(samples) == 8000
        assert params["prompt"] == "a high sine tone" and params["seed"] == 77 and params["duration_s"] == 0.5
    finally:
        gallery.close()


def test_a_prompt_outside_the_tones_vocabulary_generates_and_says_the_judge_cannot_score(client):
    status = client.predict("local/tiny-audioldm", "rain on a tin roof", "", 0.5, 1, 2.5, 1,
                            api_name="/generate_audio")[0]
    assert status.startswith("Done") and "cannot score" in status


@pytest.mark.parametrize(("duration", "message"), [(0, "Duration must be from 0.1 to 30"),
                                                   (31, "Duration must be from 0.1 to 30")])
def test_bad_durations_state_the_limit(client, duration, message):
    with pytest.raises(Exception, match=message):
        client.predict("local/tiny-audioldm", "a tone", "", duration, 2, 2.5, 1, api_name="/generate_audio")


def test_audio_models_are_not_offered_as_image_models(client):
    with pytest.raises(Exception, match="makes sound, not images|Unknown model"):
        client.predict("local/tiny-audioldm", "a red circle", "", 2, 5.0, 1, 16, 16, "euler", 1,
                       api_name="/generate")
