"""The curated schema's import is cached by content: an edited schema is imported again."""

import os
import shutil

from tfx import v1 as tfx

from components.curated_schema_gen import CuratedSchemaGen
from histo_testlib import node_states
from pipeline import configs


def run_import(schema_file: str, root: str) -> None:
    metadata = os.path.join(root, "metadata.db")
    tfx.orchestration.LocalDagRunner().run(
        tfx.dsl.Pipeline(
            pipeline_name="schema-cache",
            pipeline_root=os.path.join(root, "pipeline"),
            components=[CuratedSchemaGen(schema_file=schema_file).with_id("ImportSchemaGen")],
            enable_cache=True,
            metadata_connection_config=(
                tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata)
            ),
        )
    )


def imported(root: str) -> list[str]:
    base = os.path.join(root, "pipeline", "ImportSchemaGen", "schema")
    return [
        open(os.path.join(base, run, "schema.pbtxt")).read()
        for run in sorted(os.listdir(base), key=int)
    ]


def test_an_edited_schema_is_imported_again_an_unchanged_one_is_cached(tmp_path):
    schema = str(tmp_path / "schema.pbtxt")
    shutil.copy(configs.SCHEMA_FILE, schema)
    root = str(tmp_path / "run")
    run_import(schema, root)
    run_import(schema, root)
    with open(schema, "a") as f:
        f.write('feature {\n  name: "extra"\n  type: INT\n}\n')
    run_import(schema, root)
    states = node_states(os.path.join(root, "metadata.db"))["ImportSchemaGen"]
    assert states == ["COMPLETE", "CACHED", "COMPLETE"]
    assert 'name: "extra"' in imported(root)[-1] and 'name: "extra"' not in imported(root)[0]
