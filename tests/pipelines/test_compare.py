"""Compare families: matched network evaluations (counted), each family's trajectory frames and judge scores."""
import pytest

from pipelines.compare import matched_request, parse_nfe, run_comparison
from pipelines.devices import resolve_device
from pipelines.families import load_model
from pipelines.registry import ModelRegistry


@pytest.fixture(scope="module")
def four_families(tiny_models_dir):
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    out = []
    for name in ("tiny-sd", "tiny-dit", "tiny-sd3", "tiny-vqgan"):
        entry = registry.get(f"local/{name}")
        out.append((entry.id, load_model(entry, resolve_device("cpu")), entry.path))
    return out


def test_families_run_side_by_side_with_counted_evaluations(four_families):
    runs = list(run_comparison(four_families, "a red circle", seed=3, nfe=3, frames=3))
    assert [r.family for r in runs] == ["latent_diffusion", "dit", "flow_matching", "vqgan_prior"]
    by_family = {r.family: r for r in runs}
    for family in ("latent_diffusion", "dit", "flow_matching"):
        assert by_family[family].network_evaluations == 3 and by_family[family].request.num_inference_steps == 3
    token = by_family["vqgan_prior"]
    assert token.network_evaluations == 16  # 4 x 4 grid: one evaluation per token, whatever the budget
    assert token.request.num_inference_steps == 3  # trajectory checkpoints
    for run in runs:
        assert len(run.frames) == 3 and run.frames[0].size == run.frames[-1].size
        assert run.adherence is not None and 0 <= run.adherence <= 1 and run.seconds > 0
        assert run.result.seeds == [3] and run.metrics()["network_evaluations"] == run.network_evaluations


def test_matched_request_uses_each_models_defaults(four_families, tmp_path):
    from pipelines.default_settings import write_default_settings

    write_default_settings(tmp_path, 4.0, 25, "euler", temperature=0.5, top_k=7)
    _, sd, _ = four_families[0]
    _, vq, _ = four_families[3]
    req = matched_request(sd, tmp_path, "x", 1, 8)
    assert (req.num_inference_steps, req.guidance_scale, req.scheduler) == (8, 4.0, "euler")
    req = matched_request(vq, tmp_path, "x", 1, 100)
    assert (req.num_inference_steps, req.temperature, req.top_k, req.scheduler) == (16, 0.5, 7, None)


@pytest.mark.parametrize("value", [0, -2, "lots", 2.5, 10_000])
def test_bad_budgets_say_why(value):
    with pytest.raises(ValueError, match="Network evaluations"):
        parse_nfe(value)


def test_family_table_rows_count_evaluations_and_judge(four_families):
    from pipelines.evaluation.families import evaluate_row, format_table
    from pipelines.worlds import shapes

    recipes = [r for r in shapes.eval_prompts() if not r.is_holdout][:2]
    model_id, sd, folder = four_families[0]
    row = evaluate_row(sd, folder, recipes, 3, "ddim")
    assert row["network_evaluations"] == 3 and row["steps"] == 3 and row["scheduler"] == "ddim"
    assert all(0 <= row[k] <= 1 for k in ("colour", "shape", "position", "all")) and row["seconds_per_image"] > 0
    _, vq, vq_folder = four_families[3]
    token = evaluate_row(vq, vq_folder, recipes, None, None)
    assert token["network_evaluations"] == 16 and token["steps"] is None
    table = format_table([row, token])
    assert "ddim" in table and "vqgan_prior" in table and len(table.splitlines()) == 3
