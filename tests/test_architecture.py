"""The library's layers point down only, and nothing imports itself back in a cycle.

The layer order (lower first; a module may import its own package and any lower layer):

    errors, utils, paper               shared helpers and the paper's numbers, no tapa imports above them
    attention, positional              the kernels and position encodings
    model                              the decoder built from them
    data                               corpora, tokenizers, token caches and shards
    hf                                 transformers / GGUF import and export
    train                              the training loop, its config and flags
    evaluate                           perplexity, passkey (and its fine-tune), recall
    theory                             the paper's theorems, bias measurements
    experiment                         cached stages and the run skeleton every experiment shares
    reproduce                          the paper's tables, built from experiment's stages
    study                              the studies beyond the paper (experiment's stages; a few reuse
                                       reproduce's presets and pipeline)
    demo, cli_checks, cli              the command line

Imports inside functions count too (a lazy import is still a dependency). The exported
remote-code files (hf/remote) import only torch and transformers and are skipped.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [
    ("errors", "utils", "paper"),
    ("attention", "positional"),
    ("model",),
    ("data",),
    ("hf",),
    ("train",),
    ("evaluate",),
    ("theory",),
    ("experiment",),
    ("reproduce",),
    ("study",),
    ("demo", "cli_checks", "cli"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the tapa modules it imports (``from tapa.x import y`` counts y when y is a module)."""
    modules = {module_name(p) for p in (SRC / "tapa").rglob("*.py") if "remote" not in p.parts}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in (SRC / "tapa").rglob("*.py"):
        if "remote" in path.parts:
            continue
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tapa":
                targets = [f"{node.module}.{a.name}" for a in node.names]
                graph[name].update(t if t in modules else node.module for t in targets)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.split(".")[0] == "tapa")
    return graph


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tapa"


def test_every_package_has_a_layer():
    packages = {package(m) for m in imports()} - {"tapa"}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS"


def test_no_import_runs_up_the_layers():
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in imports().items()
        for b in targets
        if package(a) in RANK and package(b) in RANK and RANK[package(b)] > RANK[package(a)]
    )
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph = imports()
    # the package __init__ files re-export their modules: an edge to "tapa.x" means its __init__
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ importing its own modules, which import the package, is the Python
    # idiom for re-exports (tapa.model -> tapa.model.config -> tapa.model): not a design cycle
    real = [c for c in cycles if len({package(m) for m in c}) > 1 or not any(m.count(".") == 1 for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_one_home_for_the_optimiser_and_the_update_step():
    """AdamW, the warmup + cosine schedule and the clip/step/zero update are built in
    tapa.train.recipe only; every training loop calls it."""
    makers = {"torch.optim.AdamW(", "clip_grad_norm_(", "LambdaLR(", "WarmupCosine("}
    found = defaultdict(set)
    for path in (SRC / "tapa").rglob("*.py"):
        if "remote" in path.parts:
            continue
        text = path.read_text()
        for maker in makers:
            if maker in text:
                found[maker].add(module_name(path))
    allowed = {"tapa.train.recipe", "tapa.train.schedule"}  # schedule defines WarmupCosine itself
    stray = {maker: sorted(modules - allowed) for maker, modules in found.items() if modules - allowed}
    assert not stray, f"optimiser, schedule or update step built outside tapa.train.recipe: {stray}"
    users = {module_name(p) for p in (SRC / "tapa").rglob("*.py") if "tapa.train.recipe import" in p.read_text()}
    assert {"tapa.train.trainer", "tapa.evaluate.passkey_finetune", "tapa.study.recall", "tapa.demo"} <= users


def test_committed_stage_keys_are_unchanged():
    """The pretraining stages of the committed paper-cpu results (and of the LR sweep run in the
    same folder layout) hash to the same names today: a config field added later must be left
    out at its default, or every cached stage would run again."""
    import json
    from dataclasses import replace

    from tapa.experiment.stages import stage_dir
    from tapa.reproduce.pipeline import pretrain_config
    from tapa.reproduce.presets import get_preset

    docs = SRC.parent / "docs"
    checked = 0
    for name in ("paper-cpu", "paper-cpu-hd64"):
        results = json.loads((docs / name / "results.json").read_text())
        preset = get_preset(name)
        out = Path(f"runs/{name}")
        for method, by_seed in results["pretrain"].items():
            if method.startswith("tapa_a"):
                continue
            for seed, stage in by_seed.items():
                config = pretrain_config(preset, method, int(seed), str(out / "tokenizer" / "tokenizer.json"), None)
                want = Path(stage["run"]).parent.name
                assert stage_dir(out, f"pretrain_{method}_s{seed}", {"train": config.to_dict()}).name == want
                checked += 1
    sweep = json.loads((docs / "study" / "lr-paper-cpu" / "results.json").read_text())
    preset, out = get_preset("paper-cpu"), Path("runs/lr-paper-cpu")
    for method, runs in sweep["runs"].items():
        for row in runs.values():
            swept = replace(preset, lr=((method, row["lr"]),))
            config = pretrain_config(swept, method, 0, str(out / "tokenizer" / "tokenizer.json"), None)
            assert (
                stage_dir(out, f"pretrain_{method}_s0", {"train": config.to_dict()}).name
                == Path(row["run"]).parent.name
            )
            checked += 1
    assert checked >= 20


def test_the_training_loop_never_branches_on_the_parallel_mode():
    """single / DDP / FSDP differences live in tapa.train.parallel's strategies: the trainer
    neither reads ``config.parallel`` nor names a mode."""
    tree = ast.parse((SRC / "tapa" / "train" / "trainer.py").read_text())
    reads = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr == "parallel"
        and isinstance(n.value, ast.Name)
        and n.value.id == "config"
    ]
    modes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in ("fsdp", "ddp")]
    imports = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        and n.module
        and (n.module.endswith(".fsdp") or "DistributedDataParallel" in {a.name for a in n.names})
    ]
    assert not (reads or modes or imports), f"trainer.py branches on the mode at lines {reads + modes + imports}"


def test_the_run_folder_layout_is_spelled_in_one_place():
    """train_config.json, metrics.jsonl and the step_N checkpoint names appear as code only in
    tapa.train.run_dir (RunDir); everyone else asks it."""
    names = {"train_config.json", "metrics.jsonl", "step_", "step_*", "checkpoints/step_*"}
    found = []
    for path in (SRC / "tapa").rglob("*.py"):
        if "remote" in path.parts or path.name == "run_dir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module_name(path)}:{node.lineno} {node.value!r}")
    assert not found, "run-folder names outside tapa.train.run_dir:\n" + "\n".join(found)


def test_no_function_longer_than_80_lines_outside_the_triton_kernels():
    """Small functions with one job; the Triton kernels (one tile loop each) are the exception."""
    long = []
    for path in (SRC / "tapa").rglob("*.py"):
        if path.name == "triton_jit.py" or "remote" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
