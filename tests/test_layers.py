"""The layering of ``src/shoal``, checked on the source (see docs/ARCHITECTURE.md).

From the bottom up: ``shoal._core`` is pure (``test_core_is_sans_io.py``); only
``shoal._zmq`` touches raw ZeroMQ sockets; ``shoal.patterns`` and ``shoal.security``
sit on it; ``shoal.discovery`` reports what it finds and knows nothing of the node;
``shoal.node`` puts them together; the applications (``shoal.cli``, ``shoal.prometheus``)
sit on top, and the command line uses public names only. ``import shoal`` loads the
library, not the applications.

Like the sans-I/O check, the rules read the source with ``ast``: nothing is imported,
and an import inside a function or an ``if`` counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from support.imports import SRC, imported_modules, module_name


def modules_under(package: str) -> list[tuple[str, str, bool]]:
    """(module name, source, is_package) for every module of ``package``."""
    root = SRC.joinpath(*package.split(".")[1:])
    out = []
    for path in sorted(root.rglob("*.py")):
        name, is_package = module_name(path)
        out.append((name, path.read_text(), is_package))
    return out


def shoal_imports(package: str) -> dict[str, set[str]]:
    """Module of ``package`` -> the shoal modules (and names) it imports."""
    return {
        name: {m for m in imported_modules(source, name, is_package=is_pkg)
               if m == "shoal" or m.startswith("shoal.")}
        for name, source, is_pkg in modules_under(package)
    }


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# -- discovery knows nothing of the node -----------------------------------------------


def test_discovery_imports_neither_the_node_nor_anything_above_it() -> None:
    bad = {module: sorted(m for m in imported
                          if under(m, "shoal.node", "shoal.patterns", "shoal.cli",
                                   "shoal.prometheus"))
           for module, imported in shoal_imports("shoal.discovery").items()}
    assert {m: b for m, b in bad.items() if b} == {}


# -- only the socket layer touches raw ZeroMQ sockets ----------------------------------

RAW_SOCKET_EXEMPT = ("shoal._zmq", "shoal.cli._bench")
"""The socket layer, and the benchmark, whose baseline is raw pyzmq on purpose."""


def raw_socket_uses(source: str) -> list[str]:
    """Where ``source`` reaches a pyzmq socket directly: ``<ctx>.socket(zmq.X)``,
    ``zmq.Socket(...)`` or the wrapped socket's ``.zmq_socket``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "zmq_socket":
            found.append(f"line {node.lineno}: .zmq_socket")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            first = node.args[0] if node.args else None
            if func.attr == "socket" and isinstance(first, ast.Attribute) \
                    and isinstance(first.value, ast.Name) and first.value.id == "zmq":
                found.append(f"line {node.lineno}: .socket(zmq...)")
            elif func.attr == "Socket" and isinstance(func.value, ast.Name) \
                    and func.value.id == "zmq":
                found.append(f"line {node.lineno}: zmq.Socket(...)")
    return found


def test_only_the_socket_layer_touches_raw_zeromq_sockets() -> None:
    bad = {name: raw_socket_uses(source)
           for name, source, _ in modules_under("shoal")
           if not under(name, *RAW_SOCKET_EXEMPT)}
    assert {m: b for m, b in bad.items() if b} == {}


@pytest.mark.parametrize(("source", "caught"), [
    ("ctx.socket(zmq.PUB)", 1),
    ("zmq.Context.instance().socket(zmq.SUB)", 1),
    ("s = zmq.Socket(ctx, zmq.PUB)", 1),
    ("sock.zmq_socket.disable_monitor()", 1),
    ("Socket.open(zmq.PUB, bind=b)", 0),
    ("trio.socket.socket(family, type_)", 0),  # not ZeroMQ
])
def test_the_raw_socket_check_sees_each_form(source: str, caught: int) -> None:
    assert len(raw_socket_uses(source)) == caught


# -- the command line uses public names ------------------------------------------------

def private_names(imported: set[str]) -> list[str]:
    """The private shoal modules and names among ``imported``: any part after
    ``shoal`` that starts with ``_``. The command line's own modules are its own."""
    return sorted(m for m in imported
                  if not under(m, "shoal.cli")
                  and any(part.startswith("_") for part in m.split(".")[1:]))


def test_the_command_line_uses_public_names_only() -> None:
    bad = {module: private_names(imported)
           for module, imported in shoal_imports("shoal.cli").items()}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_public_names_check_catches_private_modules() -> None:
    assert private_names({"shoal", "shoal.open_node", "shoal.errors.ShoalError",
                          "shoal.discovery.MDNS", "shoal.cli._talk"}) == []
    assert private_names({"shoal._core", "shoal._core.decode"}) == [
        "shoal._core", "shoal._core.decode"]
    assert private_names({"shoal.node._node", "shoal.discovery._interfaces"}) == [
        "shoal.discovery._interfaces", "shoal.node._node"]


# -- import shoal loads the library, not the applications ------------------------------


def test_import_shoal_loads_neither_the_exporter_nor_the_command_line() -> None:
    code = ("import sys, shoal\n"
            "print(sorted(m for m in sys.modules if m.startswith(('shoal.cli', "
            "'shoal.prometheus', 'prometheus_client'))))\n"
            "shoal.open_prometheus_exporter\n"  # loaded on first use
            "print('shoal.prometheus' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True"]


# -- no module grows past what a reader holds at once ----------------------------------

MAX_LINES = 520


def test_no_source_module_is_longer_than_a_reader_holds_at_once() -> None:
    long = {name: len(source.splitlines()) for name, source, _ in modules_under("shoal")
            if len(source.splitlines()) > MAX_LINES}
    assert long == {}
