"""The benchmark's plumbing: schema, output-equality flags, CLI (not speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from medusa_mlx.bench import cli, report, runs
from medusa_mlx.bench import prompts as bench_prompts
from medusa_mlx.model import attach_heads
from tiny_models import tiny_model
from required_data import require_file

REPO = Path(__file__).resolve().parents[1]
METHOD_KEYS = {
    "name", "kind", "tree", "tree_size", "tokens_per_s", "end_to_end_tokens_per_s",
    "speedup_median", "speedup_per_prompt", "generated_tokens", "steps",
    "mean_tokens_per_step", "mean_accepted_per_step", "ms_per_step_timed",
    "peak_memory_gb", "output_equal", "output_equal_per_prompt", "step_ms",
}


@pytest.fixture(scope="module")
def tiny():
    return attach_heads(tiny_model("llama"), num_heads=4, seed=1)


def test_methods_reproduce_greedy_including_draft_and_oracle(tiny):
    methods = runs.make_methods(["chain-2", "tree-16"], tiny, draft=True,
                                 num_draft=2, oracle_trees=["chain-4"])
    prompts = [[1, 5, 9, 17], [3, 33, 2, 64, 7]]
    runs.run_methods(methods, tiny, tiny.backbone, prompts, max_tokens=24, eos=set(),
                      num_draft=2, profile=True, log=lambda _: None)
    records = [report.summarize(m, methods[0]) for m in methods]
    assert [r["kind"] for r in records] == ["baseline", "draft", "medusa", "medusa", "oracle"]
    for r in records:
        assert METHOD_KEYS <= set(r)
        assert r["output_equal"] is True, r["name"]
        assert r["generated_tokens"] == [24, 24]
    oracle = records[-1]
    # An oracle on chain-4 accepts all 4 guesses whenever max_tokens leaves room.
    assert oracle["mean_accepted_per_step"] > 3
    for r in records[2:]:
        split = r["step_ms"]
        assert split["profiled_steps"] > 0
        assert split["overhead_fraction"] == pytest.approx(
            (split["heads"] + split["accept"]) / split["verify"]
        )
    assert records[0]["step_ms"] is None  # the baseline is not profiled


def test_read_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert bench_prompts.read_prompts(path) == ["a", "b"]
    path.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":1:"):
        bench_prompts.read_prompts(path)


def test_reference_blas_is_flagged_and_warned(monkeypatch):
    monkeypatch.setattr(report, "blas_info", lambda: {"library": "reference", "path": "/x/libblas.so.3"})
    monkeypatch.setattr(report.platform, "system", lambda: "Linux")
    env = report.environment()
    assert env["fast_blas"] is False and env["representative"] is False
    result = {
        "environment": env,
        "config": {"model": "m", "heads": "h", "dtype": "float32", "num_prompts": 1, "max_tokens": 1},
        "methods": [],
        "verify_cost": None,
    }
    console = Console(record=True, width=200)
    report.render(result, console)
    assert "NOT representative" in console.export_text()


def _stories(shared_dir: Path) -> Path:
    return require_file(shared_dir / "data" / "stories260K.bin")


def test_benchmark_record_on_stories260k(shared_dir):
    args = cli.configure_parser().parse_args([
        "--model", str(_stories(shared_dir)), "--trees", "chain-2,tree-8,auto",
        "--oracle", "--max-tokens", "12", "--num-prompts", "2",
        "--verify-sizes", "1,4", "--verify-repeats", "1",
    ])
    result = cli.benchmark(args, log=lambda _: None)  # shipped stories260K heads
    assert result["schema"] == report.SCHEMA
    env = result["environment"]
    for key in ("mlx", "mlx_lm", "device", "platform", "blas", "fast_blas", "representative"):
        assert key in env
    cfg = result["config"]
    assert cfg["num_prompts"] == 2 and cfg["max_tokens"] == 12 and cfg["dtype"] == "float32"
    assert cfg["trees"] == ["chain-2", "tree-8", "auto"]
    assert set(result["verify_cost"]["relative"]) == {1, 4}
    assert all(m["output_equal"] for m in result["methods"])
    json.dumps(result)  # every figure must be serialisable


def test_cli_writes_json(shared_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n', encoding="utf-8")
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "medusa_mlx.bench", "--model", str(_stories(shared_dir)),
         "--prompts", str(prompts), "--trees", "chain-2", "--oracle", "--max-tokens", "8",
         "--verify-sizes", "1,2", "--verify-repeats", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["config"]["prompt_source"] == str(prompts)
    assert [m["kind"] for m in result["methods"]] == ["baseline", "medusa", "oracle"]
    assert all(m["output_equal"] for m in result["methods"])
    assert set(result["verify_cost"]["relative_min"]) == {"1", "2"}
    assert "mlx-lm greedy" in proc.stdout


def test_plot_draws_a_stored_report(tmp_path):
    pytest.importorskip("matplotlib")
    from medusa_mlx.bench.plot import plot_report

    report = json.loads((Path(__file__).parents[1] / "benchmarks" / "smollm2.json").read_text())
    out = plot_report(report, tmp_path / "fig" / "smollm2.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # three panels, not a blank
    # A fresh run's record (``--plot`` without a JSON round trip) has int curve keys.
    curve = report["verify_cost"]
    fresh = {**report, "verify_cost": {**curve, "relative": {int(k): v for k, v in
                                                             curve["relative"].items()}}}
    assert plot_report(fresh, tmp_path / "fresh.png").read_bytes() == data


def test_plot_cli_refuses_what_is_not_a_report(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1}')
    r = subprocess.run([sys.executable, "-m", "medusa_mlx.bench.plot", str(bad), str(tmp_path / "x.png")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_lookup_methods_on_the_grounded_set(shared_dir, tmp_path):
    """--lookup adds lookup alone and heads + lookup per tree; both exact, in
    the JSON like the others; --prompts grounded is the shipped set."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "medusa_mlx.bench", "--model", str(_stories(shared_dir)),
         "--prompts", "grounded", "--num-prompts", "1", "--trees", "chain-2,tree-8",
         "--lookup", "--max-tokens", "24", "--verify-sizes", "", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    names = [(m["name"], m["tree"]) for m in result["methods"]]
    assert names == [("mlx-lm greedy", None), ("lookup (no heads)", None), ("medusa", "chain-2"),
                     ("medusa+lookup", "chain-2"), ("medusa", "tree-8"), ("medusa+lookup", "tree-8")]
    assert all(m["output_equal"] for m in result["methods"])
    assert result["config"]["lookup"] and result["config"]["num_prompts"] == 1
    assert result["prompts"][0]["prompt"].startswith("Summarize this passage")
