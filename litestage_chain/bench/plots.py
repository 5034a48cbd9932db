"""PNG plots of a results table: accuracy vs speedup, per-stage sensitivity, generated tokens vs skipped sub-layers.

matplotlib is an optional dependency (the ``bench`` extra) and is imported lazily with the non-interactive Agg
backend, so the library and the rest of the command work without it and plotting never needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litestage_chain.bench.report import PointSummary
from litestage_chain.errors import InvalidInputError

STAGE_NAMES = ("recall", "analysis", "summary")
CURVE_METHODS = ("uniform", "uniform-exit", "adaskip", "unified", "exit-depth")
SINGLE_METHODS = ("litestage", "litestage-noexit", "litestage-noskip")
ACCURACY_VS_SPEEDUP = "accuracy_vs_speedup.png"
STAGE_SENSITIVITY = "stage_sensitivity.png"
TOKENS_VS_SKIPPED = "tokens_vs_skipped.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise InvalidInputError(
            "plots need matplotlib: pip install 'litestage-chain[bench]' (or pip install matplotlib)"
        ) from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * value


def _error(row: PointSummary) -> tuple[float, float]:
    if row.accuracy is None or row.ci_low is None or row.ci_high is None:
        return (0.0, 0.0)
    # clamped: at 0% or 100% accuracy float rounding can put the bound a hair past the estimate
    return (max(0.0, 100.0 * (row.accuracy - row.ci_low)), max(0.0, 100.0 * (row.ci_high - row.accuracy)))


def _full(rows: Sequence[PointSummary]) -> PointSummary | None:
    return next((row for row in rows if row.method == "full"), None)


def plot_accuracy_vs_speedup(rows: Sequence[PointSummary], path: Path, title: str) -> Path | None:
    """Every swept method as a curve from the full model (count 0) outwards; LiteStage as single points."""
    plt = _pyplot()
    full = _full(rows)
    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = False
    for method in CURVE_METHODS:
        curve = sorted((r for r in rows if r.method == method), key=lambda r: r.count)
        if not curve:
            continue
        if full is not None:
            curve = [full, *curve]
        errors = list(zip(*(_error(r) for r in curve), strict=True))
        axes.errorbar(
            [r.speedup for r in curve], [_percent(r.accuracy) for r in curve], yerr=errors,
            marker="o", markersize=4, capsize=2, linewidth=1.2, label=method,
        )
        drawn = True
    for method, marker in zip(SINGLE_METHODS, ("*", "P", "X"), strict=True):
        for row in (r for r in rows if r.method == method):
            axes.errorbar(
                [row.speedup], [_percent(row.accuracy)], yerr=[[_error(row)[0]], [_error(row)[1]]],
                marker=marker, markersize=14, linestyle="none", capsize=3, label=method, zorder=5,
            )
            drawn = True
    if full is not None:
        axes.scatter([1.0], [_percent(full.accuracy)], marker="s", s=60, color="black", label="full model", zorder=6)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
    axes.set_xlabel("speedup vs the full model (mean seconds per question, same run)")
    axes.set_ylabel("accuracy % (95% Wilson interval)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_stage_sensitivity(rows: Sequence[PointSummary], path: Path, title: str) -> Path | None:
    """Accuracy vs sub-layers skipped in one stage alone (``stage-only`` points), one curve per stage."""
    plt = _pyplot()
    full = _full(rows)
    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = False
    for stage in STAGE_NAMES:
        curve = sorted((r for r in rows if r.method == "stage-only" and r.stage == stage), key=lambda r: r.count)
        if not curve:
            continue
        if full is not None:
            curve = [full, *curve]
        errors = list(zip(*(_error(r) for r in curve), strict=True))
        counts = [0 if r.method == "full" else r.count for r in curve]
        axes.errorbar(counts, [_percent(r.accuracy) for r in curve], yerr=errors, marker="o", capsize=2, label=stage)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("sub-layers skipped in this stage only (others run the full model)")
    axes.set_ylabel("accuracy % (95% Wilson interval)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(plt, figure, path)


def plot_tokens_vs_skipped(rows: Sequence[PointSummary], path: Path, title: str) -> Path | None:
    """Mean generated tokens per stage vs skipped sub-layers, uniform budget with and without early exit."""
    plt = _pyplot()
    full = _full(rows)
    variants = [(m, label) for m, label in (("uniform", "no early exit"), ("uniform-exit", "early exit"))
                if any(r.method == m for r in rows)]
    if not variants:
        return None
    figure, axes = plt.subplots(1, len(STAGE_NAMES), figsize=(12, 4), sharey=False)
    for axis, stage in zip(axes, STAGE_NAMES, strict=True):
        for method, label in variants:
            curve = sorted((r for r in rows if r.method == method), key=lambda r: r.count)
            if full is not None:
                curve = [full, *curve]
            counts = [r.skipped.get(stage, 0) for r in curve]
            axis.plot(counts, [r.tokens.get(stage, 0.0) for r in curve], marker="o", label=label)
        for row in (r for r in rows if r.method in SINGLE_METHODS):
            axis.scatter([row.skipped.get(stage, 0)], [row.tokens.get(stage, 0.0)], marker="*", s=120,
                         label=row.method, zorder=5)
        axis.set_title(stage)
        axis.set_xlabel("skipped sub-layers in the stage")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean generated tokens per question")
    axes[-1].legend(fontsize=8)
    figure.suptitle(title)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(rows: Sequence[PointSummary], out_dir: str | Path, benchmark: str) -> list[Path]:
    """Write every plot the rows have data for into `out_dir`; return the files written."""
    folder = Path(out_dir)
    written = [
        plot_accuracy_vs_speedup(rows, folder / ACCURACY_VS_SPEEDUP, f"{benchmark}: accuracy vs speedup"),
        plot_stage_sensitivity(rows, folder / STAGE_SENSITIVITY, f"{benchmark}: per-stage sensitivity"),
        plot_tokens_vs_skipped(rows, folder / TOKENS_VS_SKIPPED, f"{benchmark}: generated tokens vs skipped sub-layers"),
    ]
    return [path for path in written if path is not None]
