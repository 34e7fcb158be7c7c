"""Pusher executor that never pushes the same model twice.

TFX's Pusher copies a blessed model to a new timestamped version every time it executes.
The first rerun after a push re-executes Evaluator and Pusher even when nothing changed
(the resolver now returns that model as the baseline, a new input), so the stock Pusher
would ship an identical second version that TF Serving reloads for nothing. This executor
compares the candidate with the versions already at the destination and, for an identical
one, records that version as the push instead of copying.
"""

import hashlib
import os
from typing import Any

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils


def saved_model_digest(model_dir: str) -> str | None:
    """SHA-256 over the graph and variables of a SavedModel; None if there is none."""
    graph = os.path.join(model_dir, "saved_model.pb")
    if not fileio.exists(graph):
        return None
    digest = hashlib.sha256()
    variables = os.path.join(model_dir, "variables")
    files = [graph] + sorted(fileio.glob(os.path.join(variables, "*")))
    for path in files:
        digest.update(os.path.basename(path).encode())
        with fileio.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def find_identical_version(base_directory: str, model_dir: str) -> str | None:
    """The pushed version under base_directory holding exactly this model, if any."""
    if not fileio.exists(base_directory):
        return None
    candidate = saved_model_digest(model_dir)
    for version in sorted(fileio.listdir(base_directory), reverse=True):
        pushed = os.path.join(base_directory, version.rstrip("/"))
        if candidate is not None and saved_model_digest(pushed) == candidate:
            return version.rstrip("/")
    return None


class Executor(pusher_executor.Executor):
    """Stock Pusher, except that an identical, already pushed model is not copied again."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
        )
        if destination.WhichOneof("destination") == "filesystem" and self.CheckBlessing(input_dict):
            base = destination.filesystem.base_directory
            version = find_identical_version(base, self.GetModelPath(input_dict))
            if version is not None:
                model_push = artifact_utils.get_single_instance(
                    output_dict[standard_component_specs.PUSHED_MODEL_KEY]
                )
                self._MarkPushed(
                    model_push,
                    pushed_destination=os.path.join(base, version),
                    pushed_version=version,
                )
                return
        super().Do(input_dict, output_dict, exec_properties)
