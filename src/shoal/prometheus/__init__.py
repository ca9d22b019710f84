"""Serve shoal's counters to Prometheus (``pip install 'shoal[prometheus]'``).

``shoal.open_prometheus_exporter`` is the public name; ``import shoal`` does not load
this package until it is used.
"""

from shoal._naming import claim
from shoal.prometheus._exporter import PrometheusExporter, open_prometheus_exporter

__all__ = ["PrometheusExporter", "open_prometheus_exporter"]

claim(globals(), __all__, "shoal")  # users import them from shoal
