"""The span window on a hand-built ML Metadata store: which spans training may see.

The whole story (spans ingested, one stopped by a gate, later windows without it) runs in
test_continuous_training.py; this pins the rules on a store with every case in it.
"""

import ml_metadata as mlmd
import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.types import standard_artifacts

from components.span_window import (
    CURRENT_KEY,
    WINDOW_KEY,
    SpanWindowStrategy,
    span_of,
    window_of,
)

COMPLETE = metadata_store_pb2.Execution.COMPLETE
CACHED = metadata_store_pb2.Execution.CACHED
FAILED = metadata_store_pb2.Execution.FAILED


class Store:
    """An in-memory store with ExampleGen and Transform executions linking Examples."""

    def __init__(self):
        config = metadata_store_pb2.ConnectionConfig()
        config.fake_database.SetInParent()
        self.store = mlmd.MetadataStore(config)
        examples_type = metadata_store_pb2.ArtifactType(name="Examples")
        examples_type.properties["span"] = metadata_store_pb2.INT  # declared, left 0
        self.examples_type = self.store.put_artifact_type(examples_type)
        self.types = {
            name: self.store.put_execution_type(metadata_store_pb2.ExecutionType(name=name))
            for name in (
                "components.committed_example_gen.CommittedImportExampleGen",
                "tfx.components.transform.component.Transform",
            )
        }

    def _execution(self, kind: str, state) -> int:
        type_id = next(v for k, v in self.types.items() if k.endswith(kind))
        [execution_id] = self.store.put_executions(
            [metadata_store_pb2.Execution(type_id=type_id, last_known_state=state)]
        )
        return execution_id

    def _event(self, artifact_id: int, execution_id: int, kind) -> None:
        self.store.put_events(
            [
                metadata_store_pb2.Event(
                    artifact_id=artifact_id, execution_id=execution_id, type=kind
                )
            ]
        )

    def example_gen(self, span: int) -> standard_artifacts.Examples:
        artifact = metadata_store_pb2.Artifact(type_id=self.examples_type, uri=f"/eg/{span}")
        artifact.custom_properties["span"].int_value = span  # where ExampleGen's driver puts it
        [artifact_id] = self.store.put_artifacts([artifact])
        self._event(
            artifact_id, self._execution("ExampleGen", COMPLETE), metadata_store_pb2.Event.OUTPUT
        )
        return self.load(artifact_id)

    def transformed_output(self, span: int) -> standard_artifacts.Examples:
        """Transform's output is of type Examples too: never part of the window."""
        artifact = metadata_store_pb2.Artifact(type_id=self.examples_type, uri=f"/tf/{span}")
        artifact.custom_properties["span"].int_value = span
        [artifact_id] = self.store.put_artifacts([artifact])
        execution = self._execution("Transform", COMPLETE)
        self._event(artifact_id, execution, metadata_store_pb2.Event.OUTPUT)
        self._event(
            artifact_id, self._execution("Transform", COMPLETE), metadata_store_pb2.Event.INPUT
        )
        return self.load(artifact_id)

    def transform(self, artifacts: list, state=COMPLETE) -> None:
        execution = self._execution("Transform", state)
        for a in artifacts:
            self._event(a.id, execution, metadata_store_pb2.Event.INPUT)

    def load(self, artifact_id: int) -> standard_artifacts.Examples:
        artifact = standard_artifacts.Examples()
        artifact.set_mlmd_artifact(self.store.get_artifacts_by_id([artifact_id])[0])
        return artifact


def resolve(s: Store, current, history, window: int = 0) -> list[int]:
    result = SpanWindowStrategy(window).resolve_artifacts(
        s.store, {CURRENT_KEY: [current], WINDOW_KEY: history}
    )
    assert result[CURRENT_KEY] == [current]
    return [span_of(a) for a in result[WINDOW_KEY]]


def test_the_window_holds_spans_that_passed_the_gates_and_this_runs_span():
    s = Store()
    one, two, three = s.example_gen(1), s.example_gen(2), s.example_gen(3)
    s.transform([one])
    s.transform([one, two], state=CACHED)  # a cached run counts: it passed the gates then
    s.transform([three], state=FAILED)  # started after the gates, then failed
    stopped = s.example_gen(4)  # stopped by a gate: no Transform consumed it
    five = s.example_gen(5)
    history = [one, two, three, stopped, five, s.transformed_output(2)]
    assert resolve(s, five, history) == [1, 2, 5]
    assert resolve(s, five, history, window=2) == [2, 5]
    assert resolve(s, five, history, window=1) == [5]


def test_a_span_read_again_is_taken_once_from_this_run():
    s = Store()
    old = s.example_gen(1)
    s.transform([old])
    again = s.example_gen(1)  # e.g. another ExampleGen configuration read span 1 again
    assert [a.id for a in window_of(again, [old], 0)] == [again.id]
    assert resolve(s, again, [old, again]) == [1]


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError, match="span window -1"):
        SpanWindowStrategy(-1)
