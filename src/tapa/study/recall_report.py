"""The recall study's report: accuracy by method x length (mean and spread over seeds), by
depth at the longest length, and a figure."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tapa.experiment.stages import finished_seconds

STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def accuracy_summary(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> length -> (mean accuracy, sample sd over seeds (0 for one seed), seeds)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method, seeds in results["runs"].items():
        lengths = next(iter(seeds.values()))["lengths"]
        for length in lengths:
            accs = [s["lengths"][length]["accuracy"] for s in seeds.values()]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            out.setdefault(method, {})[length] = (statistics.fmean(accs), sd, len(accs))
    return out


def recall_table(results: dict[str, Any]) -> str:
    summary = accuracy_summary(results)
    if not summary:
        return "(no runs yet)"
    lengths = list(next(iter(summary.values())))
    l0 = results["study"]["seq_len"]
    head = " | ".join(f"{n} ({int(n) // l0}x)" for n in lengths)
    lines = [f"| method | seeds | {head} |", "|---|---|" + "---|" * len(lengths)]
    for method, rows in summary.items():
        cells = " | ".join(f"{rows[n][0]:.1%} ± {rows[n][1]:.1%}" for n in lengths)
        lines.append(f"| {method} | {next(iter(rows.values()))[2]} | {cells} |")
    return "\n".join(lines)


def depth_table(results: dict[str, Any], length: str) -> str:
    bins = len(next(iter(next(iter(results["runs"].values())).values()))["lengths"][length]["by_depth"])
    head = " | ".join(f"{i / bins:.1f}-{(i + 1) / bins:.1f}" for i in range(bins))
    lines = [f"| method | {head} |", "|---|" + "---|" * bins]
    for method, seeds in results["runs"].items():
        per_bin = [statistics.fmean(s["lengths"][length]["by_depth"][i] for s in seeds.values()) for i in range(bins)]
        lines.append(f"| {method} | " + " | ".join(f"{v:.1%}" for v in per_bin) + " |")
    return "\n".join(lines)


def measured_lengths(results: dict[str, Any]) -> list[str]:
    """The lengths (as results.json keys) every run was scored at."""
    return list(next(iter(next(iter(results["runs"].values())).values()))["lengths"])


def seed_table(results: dict[str, Any]) -> str:
    """One row per (method, seed): final training loss and accuracy at every length, so a
    seed that did not learn the task shows as itself, not only as a wide spread."""
    lengths = measured_lengths(results)
    lines = [
        "| method | seed | final training loss | " + " | ".join(lengths) + " |",
        "|---|---|---|" + "---|" * len(lengths),
    ]
    for method, seeds in results["runs"].items():
        for seed, run in seeds.items():
            cells = " | ".join(f"{run['lengths'][n]['accuracy']:.1%}" for n in lengths)
            lines.append(f"| {method} | {seed} | {run['final_loss']:.3f} | {cells} |")
    return "\n".join(lines)


def plot_recall(results: dict[str, Any], path: Path) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    summary = accuracy_summary(results)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (method, rows) in enumerate(summary.items()):
        xs = [int(n) for n in rows]
        ys = [rows[n][0] for n in rows]
        err = [rows[n][1] for n in rows]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            ls=STYLES[i % len(STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            ms=5,
            capsize=3,
            label=method,
        )
    ax.axhline(results["chance"], color="grey", lw=0.8, ls=":", label="chance (1/V)")
    ax.axvline(results["study"]["seq_len"], color="grey", lw=0.8, ls="--", label="training length L0")
    ax.set_xscale("log", base=2)
    xs = [results["study"]["seq_len"] * f for f in results["study"]["length_factors"]]
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("sequence length (tokens, log scale)")
    ax.set_ylabel("recall accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shortcut_levels(task: dict[str, Any]) -> tuple[float, float]:
    """Accuracy of two shortcuts that need no key -> value association.

    Pairs: naming one of the values planted in the context at random (1 / n_pairs), and
    doing so while skipping the values already answered in the query block (mean over
    queries j of 1 / (n_pairs - j)); planted values may repeat, which raises both slightly.
    Segment: naming one of the segment's tokens at random (1 / segment), and one not yet
    seen in the query copy (before token j + 1, j + 1 are seen: mean over j of
    1 / (segment - 1 - j))."""
    if task.get("kind") == "segment":
        n = task["segment"]
        return 1 / n, sum(1 / m for m in range(1, n)) / (n - 1)
    n, q = task["n_pairs"], task["n_queries"]
    return 1 / n, sum(1 / (n - j) for j in range(q)) / q


def task_text(task: dict[str, Any], chance: float) -> tuple[str, str, str]:
    """(what the task is, what the two shortcuts are, what a depth is) for the report."""
    if task.get("kind") == "segment":
        return (
            f"Task: a segment of {task['segment']} distinct tokens (alphabet of {task['n_tokens']}), random filler, "
            f"then the same segment again; the model must predict tokens 2..{task['segment']} of the repeat by "
            f"finding each token's earlier occurrence and copying its successor ({task['segment'] - 1} lookups per "
            f"sequence; chance {chance:.1%}). In training the first copy starts anywhere, so the gap between the "
            "copies varies and no fixed offset solves it.",
            "any segment token, and any not yet seen in the repeat",
            "the first copy's start",
        )
    return (
        f"Task: {task['n_pairs']} key-value pairs planted in random filler, then {task['n_queries']} of the keys "
        f"again; the model must name each key's value ({task['n_values']} possible values: chance {chance:.1%}).",
        "any value seen in the context, and any value seen and not yet answered",
        "the queried pair",
    )


def write_recall_report(results: dict[str, Any], out: Path) -> None:
    study, task = results["study"], results["study"]["task"]
    (out / "figures").mkdir(exist_ok=True)
    plot_recall(results, out / "figures" / "recall_by_length.png")
    longest = str(study["seq_len"] * study["length_factors"][-1])
    what, shortcuts, depth = task_text(task, results["chance"])
    low, high = shortcut_levels(task)
    text = [
        "# Recall past the training length",
        "",
        f"{what} Models: d_model {study['d_model']}, {study['n_layers']} layers, "
        f"{study['n_heads']} heads, trained {study['steps']} steps of {study['batch_size']} sequences at "
        f"L0 = {study['seq_len']}, each method at its default LR, then tested on {study['eval_sequences']} "
        "sequences per length with the queried keys spread over every depth.",
        "",
        f"Accuracy (mean ± sd over seeds). Two shortcuts that use no key -> value association ({shortcuts}) "
        f"score {low:.0%} and {high:.0%}: only accuracy well above these shows retrieval.",
        "",
        recall_table(results),
        "",
        "![Recall accuracy against length; one line per method, error bars = sd over seeds]"
        "(figures/recall_by_length.png)",
        "",
        "*Figure: recall accuracy against sequence length (log scale); the dashed line is the training length, "
        "the dotted line chance.*",
        "",
        "Per seed (accuracy by length):",
        "",
        seed_table(results),
        "",
    ]
    for length in dict.fromkeys([str(2 * study["seq_len"]), longest]):
        if length not in measured_lengths(results):
            continue
        text += [
            f"Accuracy by depth of {depth} at {length} tokens (0 = start of the context, 1 = its end; "
            "mean over seeds):",
            "",
            depth_table(results, length),
            "",
        ]
    text += [
        f"Compute: {finished_seconds(out) / 60:.1f} min of stages in all (this invocation "
        f"{results.get('wall_seconds', 0) / 60:.1f} min; finished stages are reused, not re-run).",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
