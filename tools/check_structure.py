"""Structural rules no linter checks: no import cycle inside a package; providers stay small.

For every distribution under packages/ (the template included):
- no import cycle among its own modules (imports under TYPE_CHECKING count too: a cycle
  that only type-checking sees still ties the modules together);
- a provider imports abe-core only through the author interface: `abe.provider`,
  `abe.errors`, `abe.types`, `abe.settings` and, for its benchmark baseline,
  `abe.benchmarking` and `abe.testing`;
- a provider's source, without its raw-client benchmark baseline (`_baseline*.py`), is
  at most 1,000 lines, or the budget `BROKER_BUDGETS` gives it with the reason; the
  template's at most 250;
- no `asyncio.wait_for` in a provider.

    python tools/check_structure.py        # exit status 1 on any failure
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_CORE = ("abe.provider", "abe.errors", "abe.types", "abe.settings", "abe.benchmarking")
BASELINE_ONLY = ("abe.benchmarking", "abe.testing")
PROVIDER_LIMIT = 1000
TEMPLATE_LIMIT = 250
BROKER_BUDGETS = {
    "abe_mq_kafka": (
        1226,
        "group membership with acks, leases and paced commits, SASL and TLS, its own prefetch; "
        "reading 100,000s of records a second (a record's headers read on first use); "
        "aiokafka's rebalance warning named as routine, not an outage",
    ),
    "abe_mq_nats": (1141, "JetStream streams and pull consumers, reconnection, five auth ways"),
    "abe_mq_redis": (1266, "redis-py's URL checked as it reads it, and Redis Cluster"),
}
"""Providers whose broker calls and broker-specific checks need more than PROVIDER_LIMIT
lines (what is shared lives in abe-core): each at its size when the budget was set, so a
change that makes one longer has to say why here."""


def source_roots() -> list[tuple[str, Path, bool, int | None]]:
    """(name, package folder, is a provider, line limit) for each distribution's package."""
    found: list[tuple[str, Path, bool, int | None]] = []
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        for package in sorted((pyproject.parent / "src").iterdir()):
            if package.is_dir() and (package / "__init__.py").exists():
                provider = package.name.startswith("abe_mq_")
                limit = (
                    BROKER_BUDGETS.get(package.name, (PROVIDER_LIMIT, ""))[0] if provider else None
                )
                found.append((package.name, package, provider, limit))
    template = ROOT / "packages/abe-core/src/abe/_templates/provider/src/abe_mq_example"
    found.append(("abe_mq_example", template, True, TEMPLATE_LIMIT))
    return found


def module_name(package: Path, path: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, is_package: bool) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(name: str, package: Path, provider: bool, limit: int | None) -> list[str]:
    problems: list[str] = []
    files = sorted(package.rglob("*.py"))
    modules = {module_name(package, path): path for path in files}
    graph: dict[str, set[str]] = {}
    lines = 0
    for module, path in modules.items():
        imported = imports_of(path, module, path.name == "__init__.py")
        graph[module] = {
            target
            for target in imported
            if target in modules
            and target != module
            and not module.startswith(f"{target}.")
            and not (path.name == "__init__.py" and target.startswith(f"{module}."))
        }
        baseline = path.name.startswith("_baseline")
        if not baseline:
            lines += len(path.read_text().splitlines())
        if provider:
            problems += _provider_rules(path, imported, baseline)
    for group in cycles(graph):
        problems.append(f"{name}: import cycle among {', '.join(group)}")
    if limit is not None and lines > limit:
        problems.append(f"{name}: {lines} lines of source without the baseline (limit {limit})")
    elif limit is not None and limit > PROVIDER_LIMIT:
        print(f"note: {name} has {lines} lines, within its budget: {BROKER_BUDGETS[name][1]}")
    return problems


def _provider_rules(path: Path, imported: list[str], baseline: bool) -> list[str]:
    problems = []
    shown = path.relative_to(ROOT)
    application = _application_names()
    for target in imported:
        if target == "abe" or not target.startswith("abe."):
            continue
        if target.count(".") == 1 and target.split(".")[1] in application:
            continue  # the application API (the template's in-process broker is MemoryBroker)
        allowed = ALLOWED_CORE + (BASELINE_ONLY if baseline else ())
        if not any(target == root or target.startswith(f"{root}.") for root in allowed):
            problems.append(f"{shown}: imports {target}; providers use abe.provider")
    if "asyncio.wait_for(" in path.read_text():
        problems.append(f"{shown}: calls asyncio.wait_for; use abe.provider's deadlines")
    return problems


def _application_names() -> set[str]:
    """`abe.__all__`, read from its source (the lint session does not install abe)."""
    tree = ast.parse((ROOT / "packages/abe-core/src/abe/__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def main() -> int:
    problems = [problem for root in source_roots() for problem in check(*root)]
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {len(source_roots())} packages, no import cycle, providers within bounds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
