"""ExampleGen reads the latest committed span, through TFX's own driver otherwise."""

import os

import pytest
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_component_specs as specs
from tfx.utils import proto_utils

from components.committed_example_gen import CommittedSpanDriver
from histo_testlib import write
from pipeline import pipeline


def exec_properties(data_root: str, range_config: str | None = None) -> dict:
    return {
        specs.INPUT_BASE_KEY: data_root,
        specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(pipeline._split_input_config()),
        specs.RANGE_CONFIG_KEY: range_config,
    }


def make_span(data_root: str, span: int) -> None:
    for split in ("train", "eval", "test"):
        path = os.path.join(data_root, f"span-{span}", split, "data.tfrecord.gz")
        write(path, str(span).encode())


def patterns(resolved: dict) -> list[str]:
    config = example_gen_pb2.Input()
    proto_utils.json_to_proto(resolved[specs.INPUT_CONFIG_KEY], config)
    return [split.pattern for split in config.splits]


def test_the_latest_span_is_read_and_its_number_recorded(tmp_path):
    for span in (1, 2):
        make_span(str(tmp_path), span)
    resolved = CommittedSpanDriver(None).resolve_exec_properties(
        exec_properties(str(tmp_path)), None, None
    )
    assert resolved["span"] == 2
    assert patterns(resolved) == ["span-2/train/*", "span-2/eval/*", "span-2/test/*"]
    recorded = range_config_pb2.RangeConfig()
    proto_utils.json_to_proto(resolved[specs.RANGE_CONFIG_KEY], recorded)
    assert recorded.static_range.start_span_number == recorded.static_range.end_span_number == 2


def test_an_explicit_range_config_is_left_to_tfx(tmp_path):
    for span in (1, 2):
        make_span(str(tmp_path), span)
    first = range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=1, end_span_number=1)
    )
    resolved = CommittedSpanDriver(None).resolve_exec_properties(
        exec_properties(str(tmp_path), proto_utils.proto_to_json(first)), None, None
    )
    assert resolved["span"] == 1


def test_no_span_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no committed span-N"):
        CommittedSpanDriver(None).resolve_exec_properties(
            exec_properties(str(tmp_path)), None, None
        )
