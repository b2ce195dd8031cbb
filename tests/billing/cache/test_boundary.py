"""One way into Redis (issue #9 item 17): outside ``billing/cache/`` nothing reaches the store's raw
client or its private parts; streams, outbox, dedupe and backfill state go through cache-side classes.

Read from the source with ``ast``: a store is any expression named ``…store`` (``store``,
``self.store``, ``runtime.store``) or a namespace it hands out (``store.namespace("slack")``), held
in a variable or attribute too (``namespace``, ``self._ns``, a parameter annotated ``Namespace``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("billing", "bot", "tools", "rules", "sandbox")
CACHE = ROOT / "billing" / "cache"


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_store(node: ast.expr, namespaces: frozenset[str] = frozenset()) -> bool:
    name = _name_of(node)
    if name is not None and (name.lower().endswith("store") or _is_namespace_name(name, namespaces)):
        return True
    # ``store.namespace("slack").client``: the store's client by another name
    return _hands_out_namespace(node)


def _hands_out_namespace(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "namespace" and _is_store(node.func.value)
    ) or (isinstance(node, ast.Call) and _name_of(node.func) == "Namespace")


def _is_namespace_name(name: str, namespaces: frozenset[str]) -> bool:
    bare = name.lower().lstrip("_")
    return name in namespaces or bare == "ns" or bare.endswith(("_ns", "namespace"))


def _namespace_names(tree: ast.AST) -> frozenset[str]:
    """Names bound to a namespace under any other name: annotated ``Namespace`` or assigned one."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            annotation = node.annotation
            text = ast.unparse(annotation) if annotation is not None else ""
            target = node.arg if isinstance(node, ast.arg) else _name_of(node.target)
            if target is not None and "Namespace" in text:
                names.add(target)
        elif isinstance(node, ast.Assign) and _hands_out_namespace(node.value):
            names.update(n for n in map(_name_of, node.targets) if n is not None)
    return frozenset(names)


def violations_in(source: str, filename: str) -> list[str]:
    found: list[tuple[int, str]] = []
    tree = ast.parse(source, filename)
    namespaces = _namespace_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_store(node.value, namespaces):
            if node.attr == "client":
                found.append((node.lineno, ".client on a store"))
            elif node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append((node.lineno, f"the store's private {node.attr}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("billing.cache"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append((node.lineno, f"private {alias.name} of {node.module}"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def _modules() -> list[Path]:
    return sorted(
        path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
        if CACHE not in path.parents
    )


def test_nothing_outside_the_cache_reaches_into_the_store() -> None:
    modules = _modules()
    assert any(p.name == "worker.py" for p in modules) and not any(p.parent == CACHE for p in modules)
    found = [v for path in modules for v in violations_in(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_check_sees_each_way_in() -> None:
    source = (
        "async def f(self, store, runtime):\n"
        "    await self.store.client.get('k')\n"
        "    await runtime.store.client.xadd('s', {})\n"
        "    await store.namespace('slack').client.set('k', 1)\n"
        "    self.store._queue_indexes(None, 'cus', None, None)\n"
        "from billing.cache.store import _customer_objects\n"
        "x = self.gateway.client\n"  # not a store
        "y = store.tenant_key('x')\n"  # public
    )
    assert [v.split(": ", 1)[0] for v in violations_in(source, "m.py")] == [
        "m.py:2", "m.py:3", "m.py:4", "m.py:5", "m.py:6",
    ]


def test_the_check_sees_a_namespace_held_by_another_name() -> None:
    source = (
        "async def f(self, namespace, ns, slack: Namespace, store):\n"
        "    await namespace.client.get('k')\n"
        "    await ns.client.get('k')\n"
        "    await self._ns.client.get('k')\n"
        "    await self.namespace.client.lrange('k', 0, 1)\n"
        "    await slack.client.get('k')\n"
        "    surface = store.namespace('slack')\n"
        "    async with surface.client.pipeline(transaction=True) as pipe: ...\n"
        "    own = Namespace(redis, 'p')\n"
        "    await own.client.get('k')\n"
        "    await namespace.get(namespace.key('k'))\n"  # its public API
        "    async with ns.pipeline(transaction=True) as pipe: ...\n"
        "    await self.client.chat_postMessage(channel='c')\n"  # Slack's client, no namespace
    )
    assert [v.split(": ", 1)[0] for v in violations_in(source, "m.py")] == [
        "m.py:2", "m.py:3", "m.py:4", "m.py:5", "m.py:6", "m.py:8", "m.py:10",
    ]
