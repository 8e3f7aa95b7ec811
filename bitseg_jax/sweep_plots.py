"""Figures of the evaluation sweeps in the style of the paper's Figs. 4-6 (`evaluation.run_eval`).

Each function takes the records `run_eval` writes (a sweep's JSON: "step", "values" and one
"results" entry per value) and returns a matplotlib `Figure` with an ARI and an IoU (hiou_e)
panel. Figures are built with the object API (no pyplot), so importing this module never
changes the user's matplotlib backend (notebooks keep their inline plots) and needs no display.
"""

import numpy as np
from matplotlib.figure import Figure

_METRIC_LABELS = {"ari": "ARI", "hiou_e": "IoU (hiou_e)"}


def _plain_ticks(ax, values) -> None:
    """Ticks at the given x values, labelled 2, 8, 100 rather than 2×10⁰ on log axes."""
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()


def steps(curves: dict[str, dict]) -> Figure:
    """Fig. 4: metric vs sampling steps, one curve per sampler.

    Args:
      curves: sampler label (e.g. "DDPM") -> the record of its steps sweep.
    """
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, _METRIC_LABELS):
        for label, rec in curves.items():
            values = rec["values"]
            scores = [r[key] for r in rec["results"]]
            ax.plot(values, scores, "o-", label=f"{label} (step {rec['step']})")
        ax.set_xscale("log")
        _plain_ticks(ax, sorted({v for rec in curves.values() for v in rec["values"]}))
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(_METRIC_LABELS[key])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Metric vs. number of sampling steps (cf. paper Fig. 4)")
    return fig


def guidance(record: dict) -> Figure:
    """Fig. 5: metric vs guidance weight, the best value marked."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    values = np.asarray(record["values"], np.float64)
    for ax, key in zip(axes, _METRIC_LABELS):
        scores = np.asarray([r[key] for r in record["results"]])
        ax.plot(values, scores, "o-")
        best = int(np.nanargmax(scores))
        ax.axvline(values[best], color="gray", linestyle="--", label=f"best w = {values[best]:g}")
        ax.set_xscale("symlog", linthresh=0.1)
        _plain_ticks(ax, list(values))
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(_METRIC_LABELS[key])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Metric vs. guidance weight, step {record['step']} (cf. paper Fig. 5)")
    return fig


def best_of_n(record: dict) -> Figure:
    """Fig. 6: best-of-N (oracle) score vs N, one curve per guidance weight."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, _METRIC_LABELS):
        for value, result in zip(record["values"], record["results"]):
            curve = result[f"best_of_n_{key}"]
            ax.plot(np.arange(1, len(curve) + 1), curve, "o-", label=f"w = {value:g}")
        ax.set_xscale("log", base=2)
        num = max(len(r[f"best_of_n_{key}"]) for r in record["results"])
        _plain_ticks(ax, [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= num])
        ax.set_xlabel("samples per image N")
        ax.set_ylabel(f"best-of-N {_METRIC_LABELS[key]}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Best-of-N vs. N per guidance weight, step {record['step']} (cf. paper Fig. 6)")
    return fig
