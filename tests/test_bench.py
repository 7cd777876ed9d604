"""The benchmark suite's plumbing: result lines, the gathered table, and one real (tiny) benchmark run."""
from bench.__main__ import BENCHES, render
from bench.report import emit, parse


def test_results_round_trip_through_the_output_lines(capsys):
    print("some table line")
    emit("overhead", "studio / raw", 1.0123, "x", "<= 1.03", True)
    emit("families", "ms per step", 28.5, "ms")
    rows = parse(capsys.readouterr().out)
    assert rows == [
        {"bench": "overhead", "measure": "studio / raw", "value": 1.0123, "unit": "x", "goal": "<= 1.03", "met": True},
        {"bench": "families", "measure": "ms per step", "value": 28.5, "unit": "ms", "goal": None, "met": None},
    ]
    table = render(rows)
    assert "| overhead | studio / raw | 1.0123 x | <= 1.03 | yes |" in table
    assert "| families | ms per step | 28.5 ms |  |  |" in table


def test_every_listed_benchmark_is_a_module_with_a_main():
    import importlib

    for name in BENCHES:
        assert callable(importlib.import_module(f"bench.{name}").main), name


def test_the_families_benchmark_times_a_tiny_model(tiny_models_dir, capsys):
    from bench.families import main

    main(["--models-dir", str(tiny_models_dir), "--only", "local/tiny-sd", "--runs", "1", "--threads", "1"])
    rows = parse(capsys.readouterr().out)
    assert [r["measure"] for r in rows] == ["local/tiny-sd seconds per image (25 steps)", "local/tiny-sd ms per step"]
    assert all(r["value"] > 0 for r in rows)


def test_the_flow_t5_block_benchmark_reports_both_ratios(capsys):
    from bench.flow_t5_block import main

    out = main(["--batch", "2", "--repeats", "1", "--threads", "1"])
    rows = parse(capsys.readouterr().out)
    assert [r["bench"] for r in rows] == ["flow_t5_block", "flow_t5_block"]
    assert out["train_256_s"] > 0 and out["train_8_s"] > 0
    assert [r["value"] for r in rows] == [out["train_ratio_256_over_8"], out["sample_ratio_256_over_8"]]
