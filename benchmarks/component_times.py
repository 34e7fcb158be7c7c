"""Where a pipeline run's time went: seconds and share per component, from ML Metadata.

The executions' own timestamps (created when the launcher starts the node, updated when it
publishes), so it works for any finished local run, cached or not, without re-running:

    .venv/bin/python benchmarks/component_times.py --output-dir outputs [--runs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modules import quiet  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # local_runner imports TensorFlow

RUN_CONTEXT_TYPE = "pipeline_run"
NODE_CONTEXT_TYPE = "node"


@dataclasses.dataclass
class NodeTime:
    node: str
    state: str  # COMPLETE, CACHED, FAILED, ...
    seconds: float
    start_ms: int


@dataclasses.dataclass
class RunTimes:
    run_id: str
    wall_seconds: float  # first node start -> last node end
    nodes: list[NodeTime]


def _store(metadata_db: str) -> mlmd.MetadataStore:
    if not os.path.isfile(metadata_db):
        raise FileNotFoundError(f"{metadata_db}: no ML Metadata here (has a run finished?)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_db
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(config)


def run_times(metadata_db: str) -> list[RunTimes]:
    """Every run in the store, oldest first, its nodes in start order."""
    store = _store(metadata_db)
    node_of: dict[int, str] = {}
    for context in store.get_contexts_by_type(NODE_CONTEXT_TYPE):
        for execution in store.get_executions_by_context(context.id):
            node_of[execution.id] = context.name.split(".", 1)[-1]
    runs = []
    for context in store.get_contexts_by_type(RUN_CONTEXT_TYPE):
        executions = store.get_executions_by_context(context.id)
        if not executions:
            continue
        nodes = [
            NodeTime(
                node=node_of.get(e.id, str(e.type)),
                state=metadata_store_pb2.Execution.State.Name(e.last_known_state),
                seconds=(e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000,
                start_ms=e.create_time_since_epoch,
            )
            for e in executions
        ]
        start = min(e.create_time_since_epoch for e in executions)
        end = max(e.last_update_time_since_epoch for e in executions)
        runs.append(
            RunTimes(
                run_id=context.name,
                wall_seconds=(end - start) / 1000,
                nodes=sorted(nodes, key=lambda n: n.start_ms),
            )
        )
    return sorted(runs, key=lambda r: min(n.start_ms for n in r.nodes))


def format_run(run: RunTimes) -> str:
    """A table: node, state, seconds, share of the run's wall time."""
    lines = [
        f"run {run.run_id}: {run.wall_seconds:.1f} s wall",
        f"{'component':34} | {'state':8} | {'seconds':>8} | {'share':>6}",
    ]
    wall = run.wall_seconds or float("nan")
    for node in sorted(run.nodes, key=lambda n: -n.seconds):
        lines.append(
            f"{node.node:34} | {node.state:8} | {node.seconds:8.1f} | {node.seconds / wall:6.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs", help="local_runner's --output_dir")
    parser.add_argument("--metadata", help="a metadata.db (default: the one under --output-dir)")
    parser.add_argument("--runs", type=int, default=1, help="how many of the latest runs")
    args = parser.parse_args(argv)
    quiet.dependency_warnings()
    if args.metadata:
        metadata_db = args.metadata
    else:
        import local_runner

        metadata_db = local_runner.metadata_path(args.output_dir)
    try:
        runs = run_times(metadata_db)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: {metadata_db}: no pipeline runs recorded", file=sys.stderr)
        return 2
    print("\n\n".join(format_run(run) for run in runs[-args.runs :]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
