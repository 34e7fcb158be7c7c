"""Resolves the training window: this run's span plus earlier spans that passed the gates.

The data gates (leakage, schema, drift) judge what is new: ExampleGen reads the newest
committed span only, and the gates look at that. Training and evaluation should see the
patients of earlier spans too, but only spans the gates let through: a span stopped by a
gate stays in the data root and must not slip into a later run's training set. ML
Metadata knows which spans passed: their Examples were consumed by a Transform execution
that completed (Transform runs only after every gate passed).

Inputs: ``examples`` (this run's ExampleGen output) and ``history`` (every Examples
artifact of the pipeline: a channel without producer or run context, since TFX merges two
channels of one producer and output key; Transform's outputs are told apart by lineage,
only ExampleGen's are kept). Outputs:
``examples`` unchanged, and ``history`` replaced by the window: one artifact per span
(the newest approved one; this run's for its own span), the newest ``window`` spans
(0: all of them), oldest first.
"""

from __future__ import annotations

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver

CURRENT_KEY = "examples"
WINDOW_KEY = "history"
_DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def approved_ids(store: mlmd.MetadataStore, artifact_ids: list[int]) -> set[int]:
    """The ExampleGen outputs among these that a completed (or cached) Transform consumed."""
    if not artifact_ids:
        return set()
    events = store.get_events_by_artifact_ids(artifact_ids)
    executions = store.get_executions_by_id({e.execution_id for e in events})
    type_names = {
        t.id: t.name for t in store.get_execution_types_by_id({e.type_id for e in executions})
    }
    kind = {e.id: type_names[e.type_id] for e in executions}
    done = {e.id for e in executions if e.last_known_state in _DONE}
    from_example_gen = {
        e.artifact_id
        for e in events
        if e.type == metadata_store_pb2.Event.OUTPUT and kind[e.execution_id].endswith("ExampleGen")
    }
    transformed = {
        e.artifact_id
        for e in events
        if e.type == metadata_store_pb2.Event.INPUT
        and kind[e.execution_id].endswith("Transform")
        and e.execution_id in done
    }
    return from_example_gen & transformed


def span_of(artifact: types.Artifact) -> int:
    """The span number ExampleGen recorded: a custom property (its ``span`` property,
    declared on the Examples type, stays 0)."""
    if artifact.has_custom_property("span"):
        return artifact.get_int_custom_property("span")
    return artifact.span


def window_of(
    current: types.Artifact, approved: list[types.Artifact], window: int
) -> list[types.Artifact]:
    """One artifact per span, this run's for its own span, newest ``window`` spans (0: all),
    oldest first."""
    by_span: dict[int, types.Artifact] = {}
    for artifact in sorted(approved, key=lambda a: a.id):
        by_span[span_of(artifact)] = artifact
    by_span[span_of(current)] = current
    spans = sorted(by_span, reverse=True)
    kept = spans[:window] if window > 0 else spans
    return [by_span[span] for span in sorted(kept)]


class SpanWindowStrategy(resolver.ResolverStrategy):
    """``config={"window": K}``: K newest spans (K=0: every approved span)."""

    def __init__(self, window: int = 0):
        if window < 0:
            raise ValueError(f"span window {window}: expected 0 (all spans) or a positive count")
        self._window = window

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        current = input_dict[CURRENT_KEY]
        if not current:
            return None  # no span read this run: nothing to train on
        history = input_dict.get(WINDOW_KEY, [])
        approved = approved_ids(store, [a.id for a in history])
        window = window_of(current[-1], [a for a in history if a.id in approved], self._window)
        return {CURRENT_KEY: current, WINDOW_KEY: window}
