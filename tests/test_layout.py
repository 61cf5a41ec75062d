"""The package's layout: imports run one way, data stays pure, private names stay private.

Tiers, from the bottom: models → engine → the root's notation (scope, presets, mappings, specs, soft prompts,
results, their resolution into jobs, storage) → runs (run directories, shards, executors, run options) → the
root's driver (``run``, ``sweep``) and plots → testing → data → lenses → experiments → cli and serve. A module
may import its own tier and the tiers below it, never one above. ``patchscopes.errors`` is the shared leaf every
tier may import; ``patchscopes/__init__.py`` is the facade that re-exports the public API and is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "patchscopes"

# Lower rank: closer to the bottom. A module may import modules of its rank or lower.
TIERS = {
    "models": 0,
    "engine": 1,
    "root": 2,  # the paper's notation: scope, presets, mappings, specs, soft_prompt, results, resolve, storage
    "runs": 3,  # run directories, shards, executors and RunOptions: they run resolved jobs
    "driver": 4,  # the root's run() and sweep(): scopes through runs/ into results
    "plots": 4,  # figures of results (the sweep heatmap, ps.show): beside the driver
    "testing": 5,  # tiny models and the coverage matrix: they run the driver
    "data": 6,
    "lenses": 7,
    "vectors": 7,  # directions to describe (SAEs, steering vectors): beside the lenses, below experiments
    "experiments": 8,
    "cli": 9,
    "serve": 9,  # the browser explorer: a front end like the CLI
}
DRIVER = {"patchscopes.runner", "patchscopes.sweep"}
LEAVES = {"patchscopes.errors"}
FACADES = {"patchscopes"}
# Folders added later take their place here; an unknown folder fails the test so it must be placed on purpose.


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tier(module: str) -> str:
    if module in DRIVER:
        return "driver"
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1] if parts[1] in TIERS and parts[1] != "driver" else "root"


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) of every absolute or relative import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "patchscopes")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "patchscopes":
                out.append((node.lineno, target, [a.name for a in node.names]))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))
FACADE_SOURCES = {name: module for _, module, names in imports(PACKAGE / "__init__.py") for name in names}
"""Where the facade takes each public name from (``run`` → ``patchscopes.runner``)."""


def test_every_folder_has_a_tier():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(TIERS), f"place {sorted(folders - set(TIERS))} in TIERS (tests/test_layout.py)"


def test_every_folder_says_what_it_holds():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"{init.parent.name}/__init__.py must say what it holds and imports"


def wrong_way(own: str, found: list[tuple[int, str, list[str]]]) -> list[str]:
    """The imports of module ``own`` that go up the tiers."""
    if own in FACADES or own in LEAVES:
        return []
    mine = TIERS[tier(own)]
    wrong = []
    for line, target, names in found:
        if target in LEAVES:
            continue
        # `from patchscopes import x` counts as importing x from the module the facade takes it from.
        targets = [FACADE_SOURCES.get(n, f"patchscopes.{n}") for n in names] if target in FACADES else [target]
        wrong += [f"line {line}: {own} ({tier(own)}) imports {t} ({tier(t)})"
                  for t in targets if TIERS[tier(t)] > mine]
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path: Path):
    wrong = wrong_way(module_name(path), imports(path))
    assert not wrong, "imports against the layers' direction:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").rglob("*.py")), ids=lambda p: module_name(p))
def test_data_loads_no_model(path: Path):
    banned = ("patchscopes.models", "patchscopes.engine", "patchscopes.runner", "patchscopes.sweep")
    bad = [t for _, t, _ in imports(path) if t.startswith(banned)]
    assert not bad, f"{module_name(path)} imports {bad}: data code must not load or run a model"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_crosses_modules(path: Path):
    bad = [
        f"line {line}: {name} from {target}"
        for line, target, names in imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, f"{module_name(path)} imports private names: {bad}"


def test_outside_the_engine_no_hooks_or_padding():
    """Hidden states are read through ``patchscopes.engine.capture_states``, never through engine helpers."""
    helpers = ("patchscopes.engine.hooks", "patchscopes.engine.padding", "patchscopes.engine.layer_skipping",
               "patchscopes.engine.prefix")
    bad = []
    for path in MODULES:
        if tier(module_name(path)) == "engine":
            continue
        bad += [f"{module_name(path)}: {t}" for _, t, _ in imports(path) if t.startswith(helpers)]
    assert not bad, bad


def test_the_check_sees_a_wrong_import():
    """The walker is not vacuous: upward imports are caught, downward ones pass."""
    assert wrong_way("patchscopes.engine.batched", [(3, "patchscopes.experiments.attributes", ["x"])])
    assert wrong_way("patchscopes.models.loading", [(3, "patchscopes", ["run"])])
    assert wrong_way("patchscopes.data.relations", [(3, "patchscopes.lenses", ["Lens"])])
    assert not wrong_way("patchscopes.cli.app", [(3, "patchscopes.engine", ["BatchBudget"])])
    assert not wrong_way("patchscopes.engine.batched", [(3, "patchscopes.errors", ["PatchscopesError"])])
    # the root's tiers are ordered too: notation below runs/, runs/ below the driver
    assert wrong_way("patchscopes.scope", [(3, "patchscopes.runner", ["run"])])
    assert wrong_way("patchscopes.results", [(3, "patchscopes.runs.run_dir", ["RunDir"])])
    assert wrong_way("patchscopes.runs.executors", [(3, "patchscopes", ["sweep"])])
    assert wrong_way("patchscopes.resolve", [(3, "patchscopes", ["run"])])  # run comes from the driver
    assert not wrong_way("patchscopes.runner", [(3, "patchscopes.runs.executors", ["LocalExecutor"])])
    assert not wrong_way("patchscopes.runs.shards", [(3, "patchscopes.resolve", ["resolve_jobs"])])


ROOT_MODULES = {"__init__", "errors", "mappings", "presets", "resolve", "results", "runner", "scope", "soft_prompt",
                "specs", "storage", "sweep"}
"""The root holds the paper's notation and the driver only: a new module goes into the wing a newcomer would look
in (``testing/``, ``plots/``, ``runs/``...), or this list grows on purpose, never past 12."""


def test_the_root_stays_quiet():
    found = {p.stem for p in PACKAGE.glob("*.py")}
    assert len(ROOT_MODULES) <= 12
    assert found == ROOT_MODULES, (f"root modules added: {sorted(found - ROOT_MODULES)}, gone: "
                                   f"{sorted(ROOT_MODULES - found)}; put new code in a wing (see docs/architecture.md)")


def test_the_engine_stays_readable():
    """Issue 20's bound: the engine folder is under 2,200 lines, so a newcomer can read it; a feature that needs
    more makes room (a helper moved to where it belongs, a twin folded) rather than growing it."""
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (PACKAGE / "engine").glob("*.py"))
    assert lines < 2200, f"the engine folder has {lines} lines"
