"""The public surface: the instrumentor, its entry point, its version, its dependencies."""

from __future__ import annotations

import importlib.metadata

import opentelemetry.instrumentation.abe as instrumentation
from opentelemetry.instrumentation.abe import AbeInstrumentor
from opentelemetry.instrumentation.abe._middleware import error_type, messaging_system
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

DISTRIBUTION = "opentelemetry-instrumentation-abe"


def test_all_is_the_instrumentor_and_the_version() -> None:
    assert instrumentation.__all__ == ["AbeInstrumentor", "__version__"]
    assert issubclass(AbeInstrumentor, BaseInstrumentor)


def test_version_is_the_distribution_version() -> None:
    assert instrumentation.__version__ == importlib.metadata.version(DISTRIBUTION)


def test_one_entry_point_for_opentelemetry_instrument() -> None:
    points = [
        point
        for point in importlib.metadata.distribution(DISTRIBUTION).entry_points
        if point.group == "opentelemetry_instrumentor"
    ]
    assert [(point.name, point.value) for point in points] == [
        ("abe", "opentelemetry.instrumentation.abe:AbeInstrumentor")
    ]
    assert points[0].load() is AbeInstrumentor


def test_it_instruments_the_installed_abe_core() -> None:
    assert list(AbeInstrumentor().instrumentation_dependencies()) == ["abe-core >= 0.1, < 0.2"]
    assert AbeInstrumentor()._check_dependency_conflicts() is None


def test_messaging_system_uses_the_conventions_names() -> None:
    assert messaging_system("sqs") == "aws_sqs"
    assert messaging_system("kafka") == "kafka"
    assert messaging_system("redis") == "redis"
    assert messaging_system("nats") == "nats"


def test_error_type_is_the_qualified_class_name() -> None:
    from abe.errors import BackendUnavailableError

    assert error_type(ValueError("x")) == "ValueError"
    assert error_type(BackendUnavailableError("x")) == "abe.errors.BackendUnavailableError"
