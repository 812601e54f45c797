"""Honest lineage: every module a DVC stage's command can import is among the stage's deps, and the library has no
import cycles. A change to any code a stage runs must make `dvc status` report that stage as changed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pianola"


def module_files() -> dict[str, Path]:
    """pianola's modules by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def owning_module(name: str) -> str | None:
    """The module `name` names, or the module holding it (`pianola.data.sources.Source` -> its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(node: ast.AST, here: str) -> set[str]:
    """The pianola modules the statements under `node` import (at any depth: functions included), each with the
    packages above it, which Python imports first."""
    found = set()
    for child in ast.walk(node):
        names = []
        if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("pianola"):
            names = [f"{child.module}.{alias.name}" for alias in child.names]
        elif isinstance(child, ast.Import):
            names = [alias.name for alias in child.names if alias.name.startswith("pianola")]
        for name in names:
            module = owning_module(name)
            while module and module != here:
                found.add(module)
                module = owning_module(module.rpartition(".")[0]) if "." in module else None
    return found


GRAPH = {name: imports_of(ast.parse(path.read_text()), name) for name, path in MODULES.items()}


def closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH.get(module, ()))
    return seen


def command_modules(command: str) -> set[str]:
    """What `pianola COMMAND` can import: the CLI's own module-level imports and those of the command's function."""
    tree = ast.parse(MODULES["pianola.cli"].read_text())
    function = command.replace("-", "_")
    body = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function), None)
    assert body is not None, f"pianola/cli.py has no command {command}"
    top = set().union(*(imports_of(node, "pianola.cli") for node in tree.body
                        if isinstance(node, ast.Import | ast.ImportFrom)))
    return {"pianola.cli"} | closure({"pianola"} | top | imports_of(body, "pianola.cli"))


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", list(stages()))
def test_every_module_a_stage_imports_is_among_its_deps(stage: str) -> None:
    spec = stages()[stage]
    command = " ".join(spec["cmd"].split())
    assert command.startswith("pianola "), command
    deps = [str(dep) for dep in spec["deps"]]
    missing = sorted(str(MODULES[m].relative_to(ROOT)) for m in command_modules(command.split()[1])
                     if not covered(MODULES[m], deps))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not depend on: {', '.join(missing)}"


def test_the_library_has_no_import_cycles() -> None:
    """Not even through imports inside functions: one direction of imports, stage by stage. (A module's own
    packages, which Python imports before it, are not counted: a package may gather its modules.)"""
    graph = {v: {w for w in ws if not v.startswith(w + ".")} for v, ws in GRAPH.items()}
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on.discard(w)
                component.append(w)
            on.discard(v)
            if component:
                cycles.append(sorted([v, *component]))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_a_change_to_decoding_makes_dvc_report_generate_changed(tmp_path: Path) -> None:
    """In a copy of the project (git, DVC, a lock file of the stage as it is), editing the timed tokenizer's
    decoding must mark `generate` changed: it decodes every piece it writes."""
    repo = tmp_path / "repo"
    for name in ("pianola", "params.yaml", "dvc.yaml"):
        source = ROOT / name
        (shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
         if source.is_dir() else shutil.copy(source, repo / name))

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=repo, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    for out in ("models/candidate", "data/raw", "outputs/generated"):
        (repo / out).mkdir(parents=True)
        (repo / out / "placeholder").write_text("x")
    (repo / "metrics").mkdir()
    (repo / "metrics" / "generate.json").write_text("{}")
    # Record the generate stage as it is now (`dvc commit` writes its lock without running it).
    run(sys.executable, "-m", "dvc", "commit", "-f", "-q", "generate")
    assert "generate" not in run(sys.executable, "-m", "dvc", "status", "generate")
    timed = repo / "pianola" / "tokenizers" / "timed.py"
    timed.write_text(timed.read_text().replace("def decode(", "def decode(  # edited\n        ", 1))
    status = run(sys.executable, "-m", "dvc", "status", "generate")
    assert "generate:" in status and "modified:" in status and "pianola/tokenizers" in status, status
