"""Resolves the statistics of the data behind the last blessed model: the drift baseline.

A new span is compared with what the serving model was trained on, not with the previous
run (which may have been rejected) nor with itself. ML Metadata knows the lineage:
blessed Model <- Trainer <- Transform <- Examples -> StatisticsGen -> ExampleStatistics.
"""

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy,
)
from tfx.types import standard_artifacts

_INPUT = metadata_store_pb2.Event.INPUT
_OUTPUT = metadata_store_pb2.Event.OUTPUT
_UPSTREAM_HOPS = 4  # model <- Trainer <- transformed examples <- Transform <- raw examples


def _statistics_gen_outputs(store: mlmd.MetadataStore, artifact_ids: set[int]) -> list[int]:
    """Ids of ExampleStatistics that a StatisticsGen execution computed from these artifacts."""
    consumers = {
        e.execution_id
        for e in store.get_events_by_artifact_ids(list(artifact_ids))
        if e.type == _INPUT
    }
    if not consumers:
        return []
    executions = store.get_executions_by_id(list(consumers))
    type_names = {
        t.id: t.name for t in store.get_execution_types_by_id({e.type_id for e in executions})
    }
    statistics_gens = [e.id for e in executions if type_names[e.type_id].endswith("StatisticsGen")]
    if not statistics_gens:
        return []
    return [
        e.artifact_id
        for e in store.get_events_by_execution_ids(statistics_gens)
        if e.type == _OUTPUT
    ]


def statistics_behind(
    store: mlmd.MetadataStore, model: types.Artifact, candidates: list[types.Artifact]
) -> types.Artifact | None:
    """The newest candidate statistics computed from the data the model was trained on."""
    by_id = {a.id: a for a in candidates}
    frontier, ancestors = {model.id}, set()
    for _ in range(_UPSTREAM_HOPS):
        producers = {
            e.execution_id
            for e in store.get_events_by_artifact_ids(list(frontier))
            if e.type == _OUTPUT
        }
        if not producers:
            break
        frontier = {
            e.artifact_id
            for e in store.get_events_by_execution_ids(list(producers))
            if e.type == _INPUT
        } - ancestors
        ancestors |= frontier
    found = [by_id[i] for i in _statistics_gen_outputs(store, ancestors) if i in by_id]
    return max(found, key=lambda a: a.id) if found else None


class BaselineStatisticsStrategy(LatestBlessedModelStrategy):
    """Resolver strategy: the latest blessed model, its blessing and its data's statistics.

    Use with channels ``model`` (Model), ``model_blessing`` (ModelBlessing) and
    ``statistics`` (ExampleStatistics); all come back empty before the first blessing.
    """

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        statistics = input_dict["statistics"]
        models = {k: v for k, v in input_dict.items() if k != "statistics"}
        empty = {key: [] for key in input_dict}
        if not all(models.values()):
            return empty
        model_key = next(k for k, v in models.items() if isinstance(v[0], standard_artifacts.Model))
        blessing_key = next(k for k in models if k != model_key)
        result = self._resolve(models, model_key, blessing_key)
        if not result[model_key]:
            return empty
        baseline = statistics_behind(store, result[model_key][0], statistics)
        return {**result, "statistics": [baseline] if baseline else []}
