"""One figure of a benchmark report (``medusa-bench --plot FILE.png``).

Three panels: decode speed per method (median over prompts, whiskers from the
slowest to the fastest prompt, the ratio to mlx-lm greedy written on each bar),
tokens per verification step, and the machine's verify-cost curve. Speed and
acceptance side by side show why a method wins: a tree that accepts more can
still lose when the curve makes it expensive. matplotlib is an optional extra
(``pip install 'medusa-mlx[plot]'``); the benchmark itself does not need it.

    python -m medusa_mlx.bench.plot benchmarks/smollm2.json benchmarks/smollm2.png
"""

from pathlib import Path


def method_label(method: dict) -> str:
    name = method["name"]
    if method.get("tree"):
        name += f"\n{method['tree']}"
    return name


def plot_report(report: dict, path) -> Path:
    """Write the figure for a ``medusa-mlx-bench`` report dict to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed (CI, ssh)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install 'medusa-mlx[plot]'") from e
    methods = report["methods"]
    labels = [method_label(m) for m in methods]
    speed = [m["tokens_per_s"]["median"] for m in methods]
    low = [m["tokens_per_s"]["median"] - m["tokens_per_s"]["min"] for m in methods]
    high = [m["tokens_per_s"]["max"] - m["tokens_per_s"]["median"] for m in methods]
    steps = [m.get("mean_tokens_per_step") or 1.0 for m in methods]
    colours = ["#888888" if m["kind"] == "baseline" else
               "#c9a227" if "oracle" in m["name"] else "#2a6fbb" for m in methods]

    fig, (ax_speed, ax_steps, ax_cost) = plt.subplots(
        1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    x = range(len(methods))
    ax_speed.bar(x, speed, yerr=[low, high], color=colours, capsize=3)
    for i, m in enumerate(methods):
        ratio = m.get("speedup_median")
        if ratio is not None:
            ax_speed.annotate(f"{ratio:.2f}x", (i, speed[i] + high[i]), ha="center",
                              va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax_speed.set_ylabel("decode tokens/s (median, min-max over prompts)")
    ax_speed.set_title("speed (ratio to mlx-lm greedy)")
    ax_steps.bar(x, steps, color=colours)
    for i, s in enumerate(steps):
        ax_steps.annotate(f"{s:.2f}", (i, s), ha="center", va="bottom", fontsize=8)
    ax_steps.set_ylabel("tokens per verification step")
    ax_steps.set_title("acceptance")
    for ax in (ax_speed, ax_steps):
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    curve = report.get("verify_cost") or {}
    # Keys are ints in a fresh run's record and strings once it went through JSON.
    relative = {int(k): v for k, v in (curve.get("relative") or {}).items()}
    if relative:
        sizes = sorted(relative)
        ax_cost.plot(sizes, [relative[k] for k in sizes], marker="o")
        ax_cost.set_xscale("log", base=2)
        ax_cost.set_xticks(sizes)
        ax_cost.set_xticklabels([str(k) for k in sizes])
    ax_cost.set_xlabel("tokens verified in one forward")
    ax_cost.set_ylabel("cost relative to one token")
    ax_cost.set_title(f"verify cost ({curve.get('context_tokens', '?')} cached)")
    env = report.get("environment", {})
    config = report.get("config", {})
    blas = (env.get("blas") or {}).get("library", "?")
    fig.suptitle(f"{config.get('model', '?')} · heads: {config.get('heads', '?')} · "
                 f"{env.get('device', '?')} · BLAS {blas} · mlx {env.get('mlx', '?')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    import json

    from ..cli import ArgumentParser, run_cli

    def run(argv):
        parser = ArgumentParser(prog="python -m medusa_mlx.bench.plot",
                                         description="Draw a saved benchmark report (--json) as a PNG.")
        parser.add_argument("report", help="a JSON report written by medusa-bench --json")
        parser.add_argument("output", help="the PNG to write")
        args = parser.parse_args(argv)
        with open(args.report, encoding="utf-8") as f:
            report = json.load(f)
        if not isinstance(report, dict) or not isinstance(report.get("methods"), list):
            raise ValueError(f"{args.report} is not a medusa-bench report")
        print(f"wrote {plot_report(report, args.output)}")

    run_cli(run, argv)


if __name__ == "__main__":
    main()
