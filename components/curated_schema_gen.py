"""ImportSchemaGen whose cache key follows the schema file's content, not only its path.

TFX caches a component by its inputs and execution properties; ImportSchemaGen has only
the file's path, so after the curated schema is edited in place a rerun would be served
the old schema from the cache and validate new data against it. The file's SHA-256 is an
extra execution property: a changed schema re-imports, an unchanged one stays cached. The
import itself is ImportSchemaGen's own executor (it reads only ``schema_file``).
"""

import hashlib

from tfx import types
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.base import base_component
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

SHA256_KEY = "schema_sha256"


def file_sha256(path: str) -> str:
    with fileio.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class CuratedSchemaGenSpec(standard_component_specs.ImportSchemaGenSpec):
    PARAMETERS = {
        **standard_component_specs.ImportSchemaGenSpec.PARAMETERS,
        SHA256_KEY: ExecutionParameter(type=str),
    }


class CuratedSchemaGen(ImportSchemaGen):
    """Imports ``schema_file``; ``schema_sha256`` (default: read from the file) keys the cache."""

    SPEC_CLASS = CuratedSchemaGenSpec

    def __init__(self, schema_file: str, schema_sha256: str | None = None):
        spec = CuratedSchemaGenSpec(
            schema_file=schema_file,
            schema_sha256=schema_sha256 or file_sha256(schema_file),
            schema=types.Channel(type=standard_artifacts.Schema),
        )
        base_component.BaseComponent.__init__(self, spec=spec)
