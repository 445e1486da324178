"""The benchmark's record and table: per-method summary statistics, the
environment (versions, device, BLAS) and the Rich rendering. No timing happens here."""

import os
import platform
import statistics
from importlib import metadata
from typing import Optional

import mlx.core as mx

from ..blas import blas_info
from .runs import Method, Run

SCHEMA = "medusa-mlx-bench/1"

def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Everything needed to judge whether two result files are comparable."""
    blas = blas_info()
    linux_cpu = platform.system() == "Linux" and "cpu" in str(mx.default_device()).lower()
    fast = blas["library"] in ("openblas", "Accelerate")
    # On a Linux CPU, MLX's bundled reference BLAS makes every matmul ~30x slower
    # and flattens the verify-cost curve: such timings say nothing about Medusa.
    representative = fast or not linux_cpu
    load = _load_average()
    cpus = os.cpu_count() or 1
    return {
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "medusa_mlx": _version("medusa-mlx"),
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "cpu_count": _cpu_count(),
        # Thread settings change BLAS timings a lot on a small shared CPU.
        "threads_env": {
            k: os.environ[k]
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MEDUSA_NO_OPENBLAS")
            if k in os.environ
        },
        "load_average": load,
        # Other processes competing for the CPU make every timing noisy.
        "busy": load is not None and load[0] > 0.75 * cpus,
        "blas": blas,
        "fast_blas": fast,
        "representative": representative,
    }


def _cpu_count() -> Optional[int]:
    return os.cpu_count()


def _load_average() -> Optional[list[float]]:
    """1/5/15-minute load: a busy machine explains noisy timings."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def spread(values: list[float]) -> dict:
    """Median and spread of per-prompt figures (the median resists the odd
    prompt that hit a busy moment on a shared machine)."""
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "stdev": None, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(method: Method, baseline: Method) -> dict:
    tps = [r.tokens_per_s for r in method.runs if r.tokens_per_s is not None]
    ratios = [
        r.tokens_per_s / b.tokens_per_s
        for r, b in zip(method.runs, baseline.runs)
        if r.tokens_per_s and b.tokens_per_s
    ]
    steps = sum(r.steps for r in method.runs)
    decode_tokens = sum(r.decode_tokens for r in method.runs)
    decode_s = sum(r.decode_s for r in method.runs)
    record = {
        "name": method.name,
        "kind": method.kind,
        "tree": method.tree,
        "tree_size": method.tree_size,
        "tokens_per_s": spread(tps),
        "end_to_end_tokens_per_s": spread(
            [len(r.tokens) / r.total_s for r in method.runs if r.total_s > 0]
        ),
        "speedup_median": statistics.median(ratios) if ratios else None,
        "speedup_per_prompt": ratios,
        "generated_tokens": [len(r.tokens) for r in method.runs],
        "steps": steps,
        "mean_tokens_per_step": decode_tokens / steps if steps else None,
        "mean_accepted_per_step": sum(r.accepted for r in method.runs) / steps if steps else None,
        "ms_per_step_timed": 1e3 * decode_s / steps if steps else None,
        "peak_memory_gb": max((r.peak_memory for r in method.runs), default=0) / 1e9,
        "output_equal": all(method.equal) if method.equal else None,
        "output_equal_per_prompt": method.equal,
        "step_ms": _profile_split(method.profiles),
    }
    return record


def _profile_split(profiles: list[Run]) -> Optional[dict]:
    steps = [t for run in profiles for t in run.timings]
    if not steps:
        return None
    ms = {
        phase: 1e3 * _mean([getattr(t, phase) for t in steps])
        for phase in ("total", "heads", "verify", "accept")
    }
    # Medusa's own cost per step: everything but the backbone's forward.
    ms["overhead_fraction"] = (ms["heads"] + ms["accept"]) / ms["verify"]
    ms["profiled_steps"] = len(steps)
    return ms


def dtype_of(backbone) -> str:
    from mlx.utils import tree_flatten

    dtypes = {str(v.dtype).replace("mlx.core.", "") for _, v in tree_flatten(backbone.parameters())}
    if "uint32" in dtypes:
        return "quantized"
    dense = sorted(dtypes - {"int32"})
    return "/".join(dense) if dense else "unknown"


def _fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render(result: dict, console=None) -> None:
    """The headline table (Rich), the step breakdown and the verify-cost curve."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped to a file: do not squeeze to 80 columns
            console = Console(width=150)
    env = result["environment"]
    cfg = result["config"]
    if not env["representative"]:
        console.print(
            "[bold red]WARNING: MLX is using the reference BLAS on this Linux CPU "
            f"({env['blas'].get('path')}). These timings are NOT representative: install "
            "OpenBLAS (apt install libopenblas0) and import medusa_mlx before mlx.[/]"
        )
    if env.get("busy"):
        console.print(
            f"[bold yellow]NOTE: the machine is busy (load {env['load_average'][0]:.1f} on "
            f"{env['cpu_count']} cores): timings are noisy; compare medians, not single runs.[/]"
        )
    title = (
        f"{cfg['model']} | heads: {cfg['heads']} | {cfg['dtype']} | {cfg['num_prompts']} prompts "
        f"x {cfg['max_tokens']} tokens | {env['device']} | BLAS: {env['blas']['library']}"
    )
    table = Table(title=title)
    for column in ("method", "tree", "tok/s", "min-max", "x base", "tok/step",
                   "acc/step", "ms/step", "heads", "verify", "acc+cache", "ovh",
                   "peak MB", "exact"):
        table.add_column(column, justify="left" if column in ("method", "tree") else "right")
    for m in result["methods"]:
        tps = m["tokens_per_s"]
        prof = m.get("step_ms") or {}
        overhead = prof.get("overhead_fraction")
        table.add_row(
            escape(m["name"]),  # "medusa [DIR]" (--compare-heads) is not markup
            m.get("tree") or "-",
            _fmt(tps["median"]),
            f"{_fmt(tps['min'])}-{_fmt(tps['max'])}",
            _fmt(m.get("speedup_median"), ".2f") + "x",
            _fmt(m["mean_tokens_per_step"], ".2f"),
            _fmt(m["mean_accepted_per_step"], ".2f"),
            _fmt(m.get("ms_per_step_timed")),
            _fmt(prof.get("heads")),
            _fmt(prof.get("verify")),
            _fmt(prof.get("accept")),
            "-" if overhead is None else f"{100 * overhead:.0f}%",
            _fmt(1e3 * m["peak_memory_gb"], ".0f"),
            {True: "yes", False: "[bold red]NO[/]", None: "-"}[m["output_equal"]],
        )
    if not env["representative"]:
        table.caption = "[bold red]reference BLAS: not representative[/]"
    else:
        table.caption = (
            "tok/s: median decode tokens/s over prompts (prefill excluded); x base: median "
            "per-prompt ratio to mlx-lm greedy; ms/step: timed runs; heads / verify / "
            "acc+cache: ms per step from separate profile runs; ovh = (heads + acc+cache) / "
            "verify; exact: output == plain greedy"
        )
    console.print(table)
    curve = result.get("verify_cost")
    if curve:
        cost = Table(title=f"verify cost: one forward over k new tokens, {curve['context_tokens']} cached")
        cost.add_column("k", justify="right")
        cost.add_column("ms (median)", justify="right")
        cost.add_column("x one token", justify="right")
        cost.add_column("ms (fastest)", justify="right")
        cost.add_column("x one token (fastest)", justify="right")
        for k in curve["sizes"]:
            cost.add_row(
                str(k),
                f"{1e3 * curve['seconds'][k]:.1f}",
                f"{curve['relative'][k]:.2f}",
                f"{1e3 * curve['seconds_min'][k]:.1f}",
                f"{curve['relative_min'][k]:.2f}",
            )
        console.print(cost)
