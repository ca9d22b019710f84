"""The public surface is pinned: adding or removing a public name is a deliberate change
to this file, and every public name is documented.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import pickle
import sys
import traceback
import types
import typing

import pytest

import shoal
import shoal.discovery
import shoal.errors
import shoal.patterns
from shoal._core import encode_topic

SHOAL_ALL = [
    "PROTOCOL_VERSION",
    "Identity",
    "Kind",
    "Message",
    "Node",
    "NodeStatistics",
    "PeerWatch",
    "PrometheusExporter",
    "Publisher",
    "Puller",
    "Pusher",
    "Replier",
    "Request",
    "Requester",
    "Subscriber",
    "__version__",
    "discovery",
    "errors",
    "open_node",
    "open_prometheus_exporter",
    "open_publisher",
    "open_puller",
    "open_pusher",
    "open_replier",
    "open_requester",
    "open_subscriber",
    "serve_replier",
]

PATTERNS_ALL = [
    "Answer",
    "AnswerStatus",
    "DeadLetter",
    "Delivery",
    "Gathered",
    "ManualAckPuller",
    "Publisher",
    "PublisherStatistics",
    "Puller",
    "PullerStatistics",
    "Pusher",
    "PusherStatistics",
    "ReliablePublisher",
    "ReliablePublisherStatistics",
    "ReliablePuller",
    "ReliablePullerStatistics",
    "ReliablePusher",
    "ReliablePusherStatistics",
    "ReliableSubscriber",
    "ReliableSubscriberStatistics",
    "Replier",
    "ReplierStatistics",
    "Request",
    "Requester",
    "RequesterStatistics",
    "Subscriber",
    "SubscriberStatistics",
    "open_publisher",
    "open_puller",
    "open_pusher",
    "open_reliable_puller",
    "open_reliable_pusher",
    "open_replier",
    "open_requester",
    "open_subscriber",
    "serve_replier",
]

ERRORS_ALL = [
    "ClosedError",
    "DecodeError",
    "DeliveryFailed",
    "EncodeError",
    "InvalidEndpoint",
    "InvalidTopicPattern",
    "LocalProtocolError",
    "MessageTooLarge",
    "NoEventLoop",
    "NotUnderTrio",
    "PeerLost",
    "RemoteError",
    "RemoteProtocolError",
    "ShoalError",
    "TransportError",
    "WouldBlock",
]

ERROR_ALIASES = {"NotUnderTrio": "NoEventLoop"}
"""Former names kept for the code that catches them: alias -> the class's own name."""

DISCOVERY_ALL = [
    "MDNS",
    "SERVICE_TYPE",
    "Advertisement",
    "ChannelOffer",
    "Found",
    "Interface",
    "Lost",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Reports",
    "Role",
    "Source",
    "Static",
    "interfaces",
    "resolve_interfaces",
    "unknown_addresses",
]

MODULES: dict[str, tuple[types.ModuleType, list[str]]] = {
    "shoal": (shoal, SHOAL_ALL),
    "shoal.patterns": (shoal.patterns, PATTERNS_ALL),
    "shoal.errors": (shoal.errors, ERRORS_ALL),
    "shoal.discovery": (shoal.discovery, DISCOVERY_ALL),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_all_is_pinned(name: str) -> None:
    module, expected = MODULES[name]
    assert list(module.__all__) == expected


@pytest.mark.parametrize("name", list(MODULES))
def test_every_listed_name_resolves(name: str) -> None:
    module, _ = MODULES[name]
    for public in module.__all__:
        assert getattr(module, public, None) is not None, f"{name}.{public}"


@pytest.mark.parametrize("name", list(MODULES))
def test_star_import_gives_exactly_all(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(MODULES[name][0].__all__)


def test_top_level_names_are_the_pattern_objects_themselves() -> None:
    for public in SHOAL_ALL:
        if public in PATTERNS_ALL:
            assert getattr(shoal, public) is getattr(shoal.patterns, public)
    assert shoal.errors is sys.modules["shoal.errors"]  # the module itself is exported
    assert shoal.discovery is sys.modules["shoal.discovery"]


def test_version_is_the_installed_release() -> None:
    assert isinstance(shoal.__version__, str)
    assert all(part.isdigit() for part in shoal.__version__.split("."))
    assert shoal.__version__ == importlib.metadata.version("shoal")


def test_every_error_derives_from_shoal_error() -> None:
    for public in ERRORS_ALL:
        assert issubclass(getattr(shoal.errors, public), shoal.errors.ShoalError)


def test_every_error_reports_its_public_module() -> None:
    """Tracebacks say ``shoal.errors.EncodeError``, the name users catch, not the
    private module that defines it."""
    for public in ERRORS_ALL:
        cls = getattr(shoal.errors, public)
        name = ERROR_ALIASES.get(public, public)
        assert f"{cls.__module__}.{cls.__qualname__}" == f"shoal.errors.{name}"
    with pytest.raises(shoal.errors.EncodeError) as info:
        encode_topic("a\0b")
    assert "".join(traceback.format_exception_only(info.value)).startswith(
        "shoal.errors.EncodeError: ")
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args


def test_every_public_class_and_function_reports_where_users_import_it() -> None:
    """``shoal.Publisher``, ``shoal.patterns.ReliablePusher``, ``shoal.discovery.MDNS``:
    the shortest public path, not the private module that defines it; the name
    resolves there and pickles by it."""
    import shoal.security

    seen = 0
    for module in (shoal, shoal.patterns, shoal.discovery, shoal.security):
        for public in module.__all__:
            obj = getattr(module, public)
            if not (isinstance(obj, type) or inspect.isfunction(obj)):
                continue
            seen += 1
            home = obj.__module__
            assert not any(part.startswith("_") for part in home.split(".")), (
                f"{module.__name__}.{public} reports {home}")
            assert getattr(sys.modules[home], obj.__qualname__) is obj
    assert seen > 60
    assert shoal.Publisher.__module__ == "shoal"
    assert shoal.patterns.ReliablePusher.__module__ == "shoal.patterns"
    assert shoal.open_prometheus_exporter.__module__ == "shoal"
    assert pickle.loads(pickle.dumps(shoal.Kind.PUBLISH)) is shoal.Kind.PUBLISH


def written_docstring(obj: object) -> str:
    """The docstring someone wrote: not one inherited, nor a dataclass's generated one."""
    doc = obj.__doc__ if isinstance(obj, type | types.ModuleType) else inspect.getdoc(obj)
    if not doc:
        return ""
    if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
            and doc.startswith(f"{obj.__name__}(")):
        return ""  # dataclass auto-doc: "Name(field: type, ...)"
    return doc.strip()


def documented_names() -> list[tuple[str, object]]:
    out = []
    for mod_name, (module, names) in MODULES.items():
        for public in names:
            obj = getattr(module, public)
            if isinstance(obj, str | types.UnionType):  # data (__version__), type aliases
                continue
            out.append((f"{mod_name}.{public}", obj))
    return out


def _doc_params() -> list[typing.Any]:
    return [pytest.param(obj, id=qualname) for qualname, obj in documented_names()]


@pytest.mark.parametrize("obj", _doc_params())
def test_every_public_name_has_a_docstring(obj: object) -> None:
    assert written_docstring(obj), f"{obj!r} has no docstring"


def test_every_public_method_and_property_has_a_docstring() -> None:
    missing = []
    for module in (shoal, shoal.patterns, shoal.discovery):
        for name in module.__all__:
            cls = getattr(module, name)
            if not isinstance(cls, type):
                continue
            for attr, value in vars(cls).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else value
                if (callable(func) or isinstance(value, property)) and not func.__doc__:
                    missing.append(f"{name}.{attr}")
    assert missing == []


def test_every_resource_is_a_trio_async_resource() -> None:
    """Publishers, pushers, receivers, requesters, repliers: ``trio.abc.AsyncResource``
    (``aclose()``, ``async with``), so trio code that takes one takes any of them."""
    import trio

    resources = [getattr(shoal.patterns, n) for n in shoal.patterns.__all__
                 if isinstance(getattr(shoal.patterns, n), type)
                 and hasattr(getattr(shoal.patterns, n), "aclose")]
    assert len(resources) >= 10
    for cls in resources:
        assert issubclass(cls, trio.abc.AsyncResource), cls
