"""Per-model default settings (default_settings.json): read, validated, written, used by the Generate tab."""
import json

import pytest

from pipelines.default_settings import (FALLBACK, DefaultSettingsError, read_default_settings,
                                        write_default_settings)


def test_absent_file_gives_the_usual_defaults(tmp_path):
    assert read_default_settings(tmp_path) == FALLBACK
    assert FALLBACK["guidance_scale"] == 7.5


def test_written_settings_read_back(tmp_path):
    write_default_settings(tmp_path, 2.5, 30, "euler", note="measured")
    assert read_default_settings(tmp_path) == {"guidance_scale": 2.5, "num_inference_steps": 30,
                                               "scheduler": "euler", "temperature": 1.0, "top_k": 0}
    assert json.loads((tmp_path / "default_settings.json").read_text())["note"] == "measured"
    write_default_settings(tmp_path, 3.0, 16, temperature=0.8, top_k=40)  # a token model's
    assert read_default_settings(tmp_path) | {"scheduler": None} == {
        "guidance_scale": 3.0, "num_inference_steps": 16, "scheduler": None, "temperature": 0.8, "top_k": 40}


def test_partial_file_is_merged_over_the_fallback(tmp_path):
    (tmp_path / "default_settings.json").write_text('{"guidance_scale": 3}')
    assert read_default_settings(tmp_path) == {**FALLBACK, "guidance_scale": 3.0}


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"guidance": 3}', "unknown setting(s) guidance"),
    ('{"guidance_scale": -1}', "guidance_scale must be"),
    ('{"guidance_scale": "high"}', "guidance_scale must be"),
    ('{"num_inference_steps": 2.5}', "num_inference_steps must be"),
    ('{"scheduler": "warp-drive"}', "scheduler 'warp-drive' is not one of"),
    ('{"temperature": 0}', "temperature must be"),
    ('{"top_k": 2.5}', "top_k must be"),
    ('{"max_sequence_length": 0}', "max_sequence_length must be"),
    ('{"max_sequence_length": 600}', "max_sequence_length must be"),
])
def test_bad_files_are_named_with_the_problem(tmp_path, text, fragment):
    (tmp_path / "default_settings.json").write_text(text)
    with pytest.raises(DefaultSettingsError, match="default_settings.json") as info:
        read_default_settings(tmp_path)
    assert fragment in str(info.value)


def test_a_flow_models_t5_block_length_reads_back(tmp_path):
    write_default_settings(tmp_path, 3.0, 20, max_sequence_length=8)
    assert read_default_settings(tmp_path) == {**FALLBACK, "guidance_scale": 3.0, "num_inference_steps": 20,
                                               "max_sequence_length": 8}


def test_write_refuses_invalid_values(tmp_path):
    with pytest.raises(DefaultSettingsError):
        write_default_settings(tmp_path, float("nan"))
    assert not (tmp_path / "default_settings.json").exists()
