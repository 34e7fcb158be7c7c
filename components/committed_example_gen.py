"""ImportExampleGen that reads the latest *committed* span.

TFX's own driver takes the highest ``span-N`` its split patterns match. On an object store
a span is copied into place object by object (``preprocessing.storage.commit_span``), so
a run starting mid-copy would read part of it. This driver picks the highest span whose
commit marker is written (a local span is complete once it exists: it was renamed into
place) and hands TFX that span as a static range; the rest is TFX's.
"""

from __future__ import annotations

from typing import Any

from tfx.components.example_gen import driver
from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
from tfx.proto import range_config_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from preprocessing import storage


class CommittedSpanDriver(driver.FileBasedDriver):
    """FileBasedDriver, with the span fixed to the latest committed one unless the
    component was given its own range_config."""

    def resolve_exec_properties(self, exec_properties: dict[str, Any], *args, **kwargs):
        key = standard_component_specs.RANGE_CONFIG_KEY
        if not exec_properties.get(key):
            input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
            span = storage.latest_committed_span(input_base)
            if span is None:
                raise RuntimeError(f"{input_base}: no committed span-N to read")
            static = range_config_pb2.RangeConfig(
                static_range=range_config_pb2.StaticRange(
                    start_span_number=span, end_span_number=span
                )
            )
            exec_properties[key] = proto_utils.proto_to_json(static)
        return super().resolve_exec_properties(exec_properties, *args, **kwargs)


class CommittedImportExampleGen(ImportExampleGen):
    DRIVER_CLASS = CommittedSpanDriver
