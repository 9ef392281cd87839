"""Tables and figures of the mechanism diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _layers(values: list[float] | None, spec: str = ".2f") -> str:
    return "-" if values is None else " / ".join(format(v, spec) for v in values)


def diagnostics_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per model; per-layer values separated by '/' (layer 0 first)."""
    lines = [
        "| model | prev-token (best head) | induction (best head) | mass on previous token | "
        "score variance explained by distance | TAPA median abs(phase) at d=1 (rad) | TAPA mean cos at d=1 | "
        "TAPA cos variance explained by distance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {_layers(s['previous_token'])} | {_layers(s['induction'])} | {_layers(s['within_1'])} "
            f"| {_layers(s['score_distance_share'])} | {_layers(s.get('phase_median_d1'))} "
            f"| {_layers(s.get('mean_cos_d1'))} | {_layers(s.get('cos_distance_share'))} |"
        )
    return "\n".join(lines)


def plot_phase_and_mass(diagnostics: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Left: TAPA's median abs(phase) against distance, one line per (model, layer);
    right: attention mass within the last d tokens (best head of the last layer) per model."""
    from tapa.utils.report import pyplot

    plt = pyplot()

    styles, markers = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v", "P", "X")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    i = 0
    for name, full in diagnostics.items():
        for li, layer in enumerate(full["layers"]):
            if "phase" not in layer:
                continue
            xs = [int(d) for d in layer["phase"]]
            left.plot(
                xs,
                [layer["phase"][str(d)]["median_abs"] for d in xs],
                ls=styles[li % 4],
                marker=markers[i % 7],
                ms=4,
                label=f"{name} layer {li}",
            )
        i += 1
    left.set_xscale("log", base=2)
    left.set_xlabel("distance m - n (log scale)")
    left.set_ylabel("median abs(phase) (rad)")
    left.set_title("TAPA phase 2 pi d^alpha q_P.k_P / sqrt(D_P)", fontsize=10)
    for j, (name, full) in enumerate(diagnostics.items()):
        last = full["layers"][-1]["attention_within"]
        best = max(last, key=lambda h: h[0])
        right.plot(full["distances"], best, ls=styles[j % 4], marker=markers[j % 7], ms=4, label=name)
    if diagnostics:
        any_run = next(iter(diagnostics.values()))
        ds, length = any_run["distances"], any_run["length"]
        queries = range(max(ds), length)  # as attention_profile averages: m >= max(d), m + 1 keys each
        uniform = [sum(d / (m + 1) for m in queries) / len(queries) for d in ds]
        right.plot(ds, uniform, color="grey", ls=":", lw=1, label="uniform over the history")
    right.set_xscale("log", base=2)
    right.set_ylim(0, 1.02)
    right.set_xlabel("d (log scale)")
    right.set_ylabel("attention mass on the last d tokens")
    right.set_title("most local head of the last layer", fontsize=10)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
