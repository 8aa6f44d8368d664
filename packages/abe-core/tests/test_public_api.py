"""The public surface: each module's `__all__` is exactly what it offers (STYLE.md item 7).

The rule, worked out from each module's own source (its top-level statements):

* A name starting with `_` is private, except `__version__`.
* A name the module *defines* (def, class or assignment at top level) is public and must
  be in `__all__`, unless it is a helper of the implementation: a `TypeVar` or a logger.
* A name the module *imports from abe* is a re-export. In a package (`__init__.py`, a
  facade) every such import is a re-export and must be in `__all__`; a plain module may
  list one in `__all__` (a deliberate re-export) but need not (it is a dependency).
* Anything else a module imports (stdlib, typing, `__future__`) and its submodules are
  never public.
* `dir(module)` holds no public name that falls outside these classes, so nothing can
  become public without the rule seeing it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import types
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

MODULES = [
    "abe",
    "abe.types",
    "abe.errors",
    "abe.settings",
    "abe.redaction",
    "abe.middleware",
    "abe.dedupe",
    "abe.provider",
    "abe.backends.message_queue",
    "abe.backends.message_queue.base",
    "abe.backends.message_queue.base.protocol",
    "abe.backends.message_queue.memory",
    "abe.testing",
]


@dataclass
class Surface:
    defined: set[str]
    from_abe: set[str]
    other_imports: set[str]


def _is_private(name: str) -> bool:
    return name.startswith("_") and name != "__version__"


def _absolute(module: types.ModuleType, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _targets(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _targets(element)]
    return []


def surface(module: types.ModuleType, source: str) -> Surface:
    """The names a module's top-level statements bind, by how they are bound."""
    tree = ast.parse(source)
    found = Surface(set(), set(), set())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.defined.add(node.name)
        elif isinstance(node, ast.Assign):
            found.defined.update(name for target in node.targets for name in _targets(target))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            found.defined.update(_targets(node.target))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            into = found.from_abe if source.split(".")[0] == "abe" else found.other_imports
            into.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.other_imports.update(
                alias.asname or alias.name.split(".")[0] for alias in node.names
            )
    found.defined.discard("__all__")
    return found


def _is_helper(value: object) -> bool:
    return isinstance(value, (TypeVar, logging.Logger))


def check_all(module: types.ModuleType, source: str) -> None:
    """Fail unless `module.__all__` follows the rule in this file's docstring."""
    name = module.__name__
    exported = list(module.__all__)
    found = surface(module, source)
    is_package = hasattr(module, "__path__")

    defined = {
        public
        for public in found.defined
        if not _is_private(public) and not _is_helper(getattr(module, public))
    }
    reexportable = {public for public in found.from_abe if not _is_private(public)}
    required = defined | (reexportable if is_package else set())
    allowed = defined | reexportable

    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    missing = required - set(exported)
    assert not missing, f"{name} offers {sorted(missing)} but __all__ does not list them"
    extra = set(exported) - allowed
    assert not extra, f"{name}.__all__ lists {sorted(extra)}, which it neither defines nor imports"

    unclassified = {
        public
        for public in dir(module)
        if not _is_private(public)
        and public not in exported
        and not isinstance(getattr(module, public), types.ModuleType)
        and public not in found.other_imports
        and public not in found.from_abe
        and not _is_helper(getattr(module, public))
    }
    assert not unclassified, f"{name} has public names the rule cannot place: {unclassified}"


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    check_all(module, inspect.getsource(module))


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which is not there"


FAKE = """
import logging
from typing import Any, TypeVar
from abe.errors import AbeError
T = TypeVar("T")
log = logging.getLogger("fake")
LIMIT = 3
class Listed: ...
def _private(): ...
"""


def _fake(source: str, exported: list[str], *, package: bool = False) -> types.ModuleType:
    module = types.ModuleType("abe_fake")
    if package:
        module.__path__ = []
    exec(compile(source, "<fake>", "exec"), module.__dict__)
    module.__all__ = exported  # type: ignore[attr-defined]
    return module


def test_the_rule_accepts_a_module_that_lists_what_it_defines() -> None:
    check_all(_fake(FAKE, ["LIMIT", "Listed"]), FAKE)
    check_all(_fake(FAKE, ["AbeError", "LIMIT", "Listed"]), FAKE)  # a deliberate re-export


@pytest.mark.parametrize(
    ("exported", "package", "complaint"),
    [
        (["Listed"], False, "offers ['LIMIT']"),
        (["LIMIT", "Listed", "Missing"], False, "neither defines nor imports"),
        (["LIMIT", "Listed", "logging"], False, "neither defines nor imports"),
        (["LIMIT", "Listed", "Listed"], False, "twice"),
        (["LIMIT", "Listed"], True, "offers ['AbeError']"),
    ],
)
def test_the_rule_catches_a_wrong_all(exported: list[str], package: bool, complaint: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_all(_fake(FAKE, exported, package=package), FAKE)


def test_the_rule_catches_a_name_bound_out_of_its_sight() -> None:
    module = _fake(FAKE, ["LIMIT", "Listed"])
    module.Sneaky = object()  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="cannot place"):
        check_all(module, FAKE)


# ---- the protocol page's names, at the paths it gives ------------------------------------------


def test_protocol_page_names_import_from_their_documented_paths() -> None:
    from abe.backends.message_queue.base.protocol import MessageQueueBackend
    from abe.backends.message_queue.loader import load_backend
    from abe.types import (
        ConsumerGroup,
        MessageQueueBackendProtocol,
        MessageQueueKey,
        MessageQueueMessage,
        MessageQueuePayload,
    )

    assert MessageQueueBackend is MessageQueueBackendProtocol
    assert callable(load_backend)
    assert MessageQueueKey is str
    assert ConsumerGroup == str | None  # the page writes `group: ConsumerGroup = None`
    assert MessageQueuePayload == dict[str, Any]
    assert MessageQueueMessage == dict[str, Any]


def test_top_level_names_are_the_same_objects_as_their_homes() -> None:
    import abe
    from abe.backends.message_queue.base.protocol import MessageQueueBackend
    from abe.backends.message_queue.loader import load_backend
    from abe.backends.message_queue.memory import MemoryBackend
    from abe.types import MessageQueueBackendProtocol

    assert abe.MessageQueueBackend is MessageQueueBackend
    assert abe.MessageQueueBackendProtocol is MessageQueueBackendProtocol
    assert abe.load_backend is load_backend
    assert abe.MemoryBackend is MemoryBackend


def test_the_version_is_written_once() -> None:
    import abe
    from abe._version import __version__

    assert abe.__version__ is __version__
    assert __version__.count(".") >= 2


def test_memory_backend_satisfies_the_runtime_checkable_protocol() -> None:
    from abe.backends.message_queue.memory import MemoryBackend
    from abe.types import MessageQueueBackendProtocol

    assert isinstance(MemoryBackend(), MessageQueueBackendProtocol)


def test_the_protocol_check_refuses_an_object_without_from_env() -> None:
    from abe.types import MessageQueueBackendProtocol

    class PublishAndConsumeOnly:
        async def publish(self, key: str, payload: dict[str, object]) -> None: ...

        def consume(self, *, group: str | None = None) -> object: ...

    assert not isinstance(PublishAndConsumeOnly(), MessageQueueBackendProtocol)
