"""Helpers for ``medusa_mlx.bench``: prompt sets, environment record, summary
statistics and the Rich table. No timing happens here."""

import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import mlx.core as mx

from ..blas import blas_info

SCHEMA = "medusa-mlx-bench/1"

CHAT_PROMPTS = [
    "What is the capital of France, and what is it famous for?",
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new programming language.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the water cycle for a ten-year-old.",
]
STORY_OPENINGS = [
    "Once upon a time, there was a little girl named Lily.",
    "Tom had a red ball. One day,",
    "The sun was shining and the birds were singing in the park.",
    "Once upon a time, a small dog lived in a big house.",
    "Sam and his mom went to the store to buy",
    "There was a big tree in the garden.",
]


@dataclass
class Prompt:
    text: str
    ids: list[int] = field(default_factory=list)


def builtin_prompts(chat: bool) -> list[str]:
    """Chat questions and story openings, alternating, for chat models; story
    openings only for base models (a 260K-parameter story model has no use for
    questions, and their answers would only measure noise)."""
    if not chat:
        return list(STORY_OPENINGS)
    mixed = []
    for question, story in zip(CHAT_PROMPTS, STORY_OPENINGS):
        mixed += [question, story]
    return mixed


def read_prompts(path: Path) -> list[str]:
    """One JSON object ``{"prompt": "..."}`` per line; blank lines are skipped."""
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected an object with a "prompt" string')
        prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def encode(tokenizer, text: str) -> list[int]:
    """Chat models get the prompt through their chat template, as a user would."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(ids)
    add_special = tokenizer.bos_token is None or not text.startswith(tokenizer.bos_token)
    return list(tokenizer.encode(text, add_special_tokens=add_special))


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


def _fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render(result: dict, console=None) -> None:
    """The headline table (Rich), the step breakdown and the verify-cost curve."""
    from rich.console import Console
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
            m["name"],
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
