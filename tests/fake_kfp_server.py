"""A small in-memory Kubeflow Pipelines API server (REST v1beta1) for the CLI tests.

It speaks the part of the API the kfp 1.8 SDK (``kfp.Client``) and the TFX CLI use:
healthz, pipeline upload / upload_version, pipelines and pipeline versions, experiments,
runs and jobs (recurring runs). Every JSON request body is checked against the
``kfp_server_api`` model it claims to be, strictly: unknown fields, wrong JSON types and
unknown enum values are rejected with 400, so a client that sends something the generated
models do not describe fails here. Responses are checked against their models too.

Errors look like grpc-gateway's: ``{"error": msg, "code": grpc_code, "message": msg,
"details": []}`` with 400 INVALID_ARGUMENT, 404 NOT_FOUND or 409 ALREADY_EXISTS.

The fake is only as faithful as those models and this file: it does not run Argo, does not
schedule anything, and its cron parser follows robfig/cron v1's ``Parse`` (seconds first,
day-of-week optional) as documented, not as compiled into a real server.
Stdlib only; it binds 127.0.0.1 on a free port.
"""

import datetime
import email.parser
import gzip
import io
import itertools
import json
import re
import tarfile
import threading
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kfp_server_api
import yaml

PREFIX = "/apis/v1beta1"

# grpc status codes (google.rpc.Code) and the HTTP status grpc-gateway maps them to.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, INTERNAL = 3, 5, 6, 13
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, INTERNAL: 500}

# proto int64 fields that the generated models type as 'str': JSON may carry a number.
_INT64_FIELDS = {
    ("ApiJob", "max_concurrency"),
    ("ApiPeriodicSchedule", "interval_second"),
    ("ApiValue", "int_value"),
}


class ApiError(Exception):
    """Answered as a grpc-gateway error body."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- model validation


def _model(type_name: str) -> Any:
    model = getattr(kfp_server_api.models, type_name, None)
    if model is None:
        raise ApiError(INTERNAL, f"fake server: no kfp_server_api model {type_name}")
    return model


def validate(data: Any, type_name: str, path: str = "body", owner: str = "") -> None:
    """Raises ApiError(INVALID_ARGUMENT) unless ``data`` is valid JSON for ``type_name``."""
    if data is None:  # protobuf JSON treats null as "unset"
        return
    if type_name.startswith("list["):
        if not isinstance(data, list):
            raise ApiError(INVALID_ARGUMENT, f"{path}: expected a JSON array")
        for index, item in enumerate(data):
            validate(item, type_name[5:-1], f"{path}[{index}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            raise ApiError(INVALID_ARGUMENT, f"{path}: expected a JSON object")
        value_type = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)
        for key, item in data.items():
            validate(item, value_type, f"{path}.{key}")
        return
    checker = _PRIMITIVES.get(type_name)
    if checker is not None:
        if not checker(data, (owner, path.rsplit(".", 1)[-1])):
            raise ApiError(INVALID_ARGUMENT, f"{path}: {data!r} is not a valid {type_name}")
        return
    model = _model(type_name)
    allowed = getattr(model, "allowable_values", None)
    if allowed is not None:  # an enum
        if data not in allowed:
            raise ApiError(INVALID_ARGUMENT, f"{path}: {data!r} is not one of {allowed}")
        return
    if not isinstance(data, dict):
        raise ApiError(INVALID_ARGUMENT, f"{path}: expected a JSON object for {type_name}")
    json_to_attr = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, value in data.items():
        if key not in json_to_attr:
            raise ApiError(INVALID_ARGUMENT, f'{path}: unknown field "{key}" in {type_name}')
        validate(value, model.openapi_types[json_to_attr[key]], f"{path}.{key}", type_name)


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


_PRIMITIVES: dict[str, Callable[[Any, tuple[str, str]], bool]] = {
    "str": lambda v, field: (
        isinstance(v, str)
        or (field in _INT64_FIELDS and isinstance(v, int) and not isinstance(v, bool))
    ),
    "int": lambda v, _: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v, _: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v, _: isinstance(v, bool),
    "datetime": lambda v, _: _is_datetime(v),
    "object": lambda v, _: True,
}


# ---------------------------------------------------------------- cron (robfig/cron v1)

_CRON_FIELDS = (  # name, low, high, names
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()),
    ("day of week", 0, 6, "SUN MON TUE WED THU FRI SAT".split()),
)
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly"}  # fmt: skip


def _cron_value(text: str, low: int, names: list[str] | None) -> int:
    if names and text.upper() in names:
        return names.index(text.upper()) + (low if low == 1 else 0)
    if not text.isdigit():
        raise ValueError(f"failed to parse int from {text}")
    return int(text)


def _check_cron_field(text: str, name: str, low: int, high: int, names) -> None:
    for part in text.split(","):
        range_text, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"bad step {step!r} in {name}")
        if range_text in ("*", "?"):
            continue
        start, _, end = range_text.partition("-")
        first = _cron_value(start, low, names)
        last = _cron_value(end, low, names) if end else first
        if first < low or last > high or first > last:
            raise ValueError(f"{name} {range_text} is outside {low}-{high}")


def check_cron(spec: str) -> None:
    """Accepts what robfig/cron v1 ``Parse`` accepts: 5 or 6 fields, seconds first."""
    spec = spec.strip()
    if spec.startswith("@"):
        if spec in _CRON_DESCRIPTORS or re.fullmatch(r"@every \S+", spec):
            return
        raise ValueError(f"unrecognized descriptor: {spec}")
    fields = spec.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"expected 5 to 6 fields, found {len(fields)}: {spec}")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=False):
        _check_cron_field(text, name, low, high, names)


# ---------------------------------------------------------------- packages


def workflow_from_package(filename: str, payload: bytes) -> dict[str, Any]:
    """The Argo workflow inside an uploaded package (.tar.gz/.tgz, .zip, .yaml/.yml)."""
    try:
        if filename.endswith((".tar.gz", ".tgz")):
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(payload))) as tar:
                members = [m for m in tar if m.isfile() and m.name.endswith((".yaml", ".yml"))]
                if len(members) != 1:
                    raise ApiError(INVALID_ARGUMENT, "package must hold exactly one YAML file")
                text = tar.extractfile(members[0]).read()
        elif filename.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                names = [n for n in archive.namelist() if n.endswith((".yaml", ".yml"))]
                if len(names) != 1:
                    raise ApiError(INVALID_ARGUMENT, "package must hold exactly one YAML file")
                text = archive.read(names[0])
        elif filename.endswith((".yaml", ".yml")):
            text = payload
        else:
            raise ApiError(INVALID_ARGUMENT, f"unexpected package file name {filename!r}")
        workflow = yaml.safe_load(text)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, yaml.YAMLError) as error:
        raise ApiError(INVALID_ARGUMENT, f"invalid pipeline package: {error}") from None
    if not isinstance(workflow, dict) or workflow.get("kind") != "Workflow":
        raise ApiError(INVALID_ARGUMENT, "pipeline package is not an Argo Workflow")
    if not str(workflow.get("apiVersion", "")).startswith("argoproj.io/"):
        raise ApiError(INVALID_ARGUMENT, "unexpected Argo apiVersion")
    return workflow


def _workflow_parameters(workflow: dict[str, Any]) -> list[dict[str, str]]:
    params = workflow.get("spec", {}).get("arguments", {}).get("parameters", []) or []
    return [{"name": p["name"], **({"value": p["value"]} if "value" in p else {})} for p in params]


# ---------------------------------------------------------------- state


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KfpState:
    """Everything the server holds; tests read ``uploads``, ``runs`` and ``jobs`` directly."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        # One entry per accepted upload: kind, pipeline_id, version_id, name, filename,
        # package (raw bytes) and workflow (parsed dict).
        self.uploads: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.order: dict[str, int] = {}  # id -> creation sequence, breaks created_at ties

    def new_id(self, kind: str) -> str:
        number = next(self._ids)
        new = f"{kind}-{number:04d}"
        self.order[new] = number
        return new


# ---------------------------------------------------------------- listing helpers

_FILTER_OPS = {1: "EQUALS", 2: "NOT_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}


def _predicate_matches(item: dict[str, Any], predicate: dict[str, Any]) -> bool:
    op = predicate.get("op")
    op = _FILTER_OPS.get(op, op) if isinstance(op, int) else op
    key = predicate.get("key")
    value = predicate.get("stringValue", predicate.get("string_value"))
    values = predicate.get("stringValues", predicate.get("string_values", {}))
    actual = item.get(key)
    if op == "EQUALS":
        return actual == value
    if op == "NOT_EQUALS":
        return actual != value
    if op == "IN":
        return actual in (values.get("values", []) if isinstance(values, dict) else [])
    if op == "IS_SUBSTRING":
        return value is not None and value in str(actual)
    raise ApiError(INVALID_ARGUMENT, f"filter op {op!r} is not supported by the fake server")


def _apply_filter(items: list[dict[str, Any]], filter_text: str | None) -> list[dict]:
    if not filter_text:
        return items
    try:
        predicates = json.loads(filter_text).get("predicates", [])
    except (ValueError, AttributeError):
        raise ApiError(INVALID_ARGUMENT, f"filter is not a JSON Filter: {filter_text}") from None
    return [i for i in items if all(_predicate_matches(i, p) for p in predicates)]


def _sort(state: KfpState, items: list[dict], sort_by: str) -> list[dict]:
    field, _, direction = (sort_by or "created_at").partition(" ")
    if direction not in ("", "desc", "asc"):
        raise ApiError(INVALID_ARGUMENT, f"invalid sort_by {sort_by!r}")
    if field not in ("created_at", "name", "id"):
        raise ApiError(INVALID_ARGUMENT, f"sort_by field {field!r} is not supported")

    def key(item: dict) -> tuple:
        return (str(item.get(field, "")), state.order.get(item.get("id", ""), 0))

    return sorted(items, key=key, reverse=direction == "desc")


def _page(items: list[dict], query: dict[str, str], key: str) -> dict[str, Any]:
    size = int(query.get("page_size") or 0) or len(items) or 1
    start = int(query.get("page_token") or 0)
    page = items[start : start + size]
    body: dict[str, Any] = {"total_size": len(items)}
    if page:
        body[key] = page
    if start + size < len(items):
        body["next_page_token"] = str(start + size)
    return body


def _references(obj: dict[str, Any], kind: str) -> list[str]:
    return [
        ref["key"]["id"]
        for ref in obj.get("resource_references", []) or []
        if ref.get("key", {}).get("type") == kind
    ]


def _by_reference(items: list[dict], query: dict[str, str], prefix: str) -> list[dict]:
    kind, ref_id = query.get(f"{prefix}.type"), query.get(f"{prefix}.id")
    if not kind or not ref_id or kind == "NAMESPACE":  # single-user: namespaces are ignored
        return items
    return [i for i in items if ref_id in _references(i, kind)]


# ---------------------------------------------------------------- handlers


class _Handler(BaseHTTPRequestHandler):
    state: KfpState  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server names)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.state.lock:
            self.state.requests.append((method, url.path))
            try:
                handler, args, known_query, response_model = _route(method, url.path)
                unknown = set(query) - set(known_query)
                if unknown:
                    raise ApiError(INVALID_ARGUMENT, f"unknown query parameters {sorted(unknown)}")
                result = handler(self.state, query, body, self.headers, *args)
                validate(result, response_model, "response")
                status, payload = 200, result
            except ApiError as error:
                status, payload = _HTTP_STATUS.get(error.code, 500), _error_body(error)
            except Exception as error:  # a bug in the fake: answer it rather than hang up
                status, payload = 500, _error_body(ApiError(INTERNAL, f"fake server: {error!r}"))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _error_body(error: ApiError) -> dict[str, Any]:
    return {"error": error.message, "code": error.code, "message": error.message, "details": []}


def _json_body(body: bytes, model: str) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as error:
        raise ApiError(INVALID_ARGUMENT, f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(INVALID_ARGUMENT, f"body must be a JSON object ({model})")
    validate(data, model)
    return data


def _no_body(body: bytes) -> None:
    if body.strip() not in (b"", b"{}"):
        raise ApiError(INVALID_ARGUMENT, "this method takes no request body")


def _multipart_file(body: bytes, headers: Any) -> tuple[str, bytes]:
    """The ``uploadfile`` part of a multipart/form-data body, byte for byte."""
    content_type = headers.get("Content-Type", "")
    match = re.match(r'multipart/form-data;\s*boundary="?([^";]+)"?', content_type)
    if not match:
        raise ApiError(INVALID_ARGUMENT, "upload must be multipart/form-data with a boundary")
    for part in body.split(b"--" + match.group(1).encode())[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = email.parser.Parser().parsestr(head.strip().decode("utf-8", "replace"))
        if disposition.get_param("name", header="content-disposition") == "uploadfile":
            filename = disposition.get_filename() or "pipeline.yaml"
            return filename, content[:-2] if content.endswith(b"\r\n") else content
    raise ApiError(INVALID_ARGUMENT, "Failed to read pipeline from file: missing uploadfile")


def _get(collection: dict[str, dict], item_id: str, kind: str) -> dict[str, Any]:
    if item_id not in collection:
        raise ApiError(NOT_FOUND, f"{kind} {item_id} not found.")
    return collection[item_id]


def _new_version(state: KfpState, pipeline_id: str, name: str, filename: str, package: bytes,
                 description: str | None) -> dict[str, Any]:  # fmt: skip
    workflow = workflow_from_package(filename, package)
    version_id = state.new_id("version")
    version = {
        "id": version_id,
        "name": name,
        "created_at": _now(),
        "parameters": _workflow_parameters(workflow),
        "resource_references": [
            {"key": {"type": "PIPELINE", "id": pipeline_id}, "relationship": "OWNER"}
        ],
    }
    if description:
        version["description"] = description
    state.versions[version_id] = version
    state.uploads.append(
        {
            "pipeline_id": pipeline_id,
            "version_id": version_id,
            "name": name,
            "filename": filename,
            "package": package,
            "workflow": workflow,
        }
    )
    return version


def upload_pipeline(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    filename, package = _multipart_file(body, headers)
    name = query.get("name") or re.sub(r"\.(tar\.gz|tgz|zip|ya?ml)$", "", filename)
    if any(p["name"] == name for p in state.pipelines.values()):
        raise ApiError(
            ALREADY_EXISTS,
            f"Failed to create a new pipeline. The name {name} already exist. "
            "Please specify a new name.",
        )
    pipeline_id = state.new_id("pipeline")
    version = _new_version(state, pipeline_id, name, filename, package, None)
    pipeline = {
        "id": pipeline_id,
        "created_at": version["created_at"],
        "name": name,
        "parameters": version["parameters"],
        "default_version": version,
    }
    if query.get("description"):
        pipeline["description"] = query["description"]
    state.pipelines[pipeline_id] = pipeline
    state.uploads[-1]["kind"] = "pipeline"
    return pipeline


def upload_pipeline_version(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    filename, package = _multipart_file(body, headers)
    pipeline_id, name = query.get("pipelineid"), query.get("name")
    if not pipeline_id:
        raise ApiError(INVALID_ARGUMENT, "Pipeline id is required to create a pipeline version")
    pipeline = _get(state.pipelines, pipeline_id, "Pipeline")
    name = name or filename
    for version in state.versions.values():
        if pipeline_id in _references(version, "PIPELINE") and version["name"] == name:
            raise ApiError(ALREADY_EXISTS, f"The name {name} already exist for this pipeline.")
    version = _new_version(state, pipeline_id, name, filename, package, query.get("description"))
    pipeline["default_version"] = version  # the server makes the newest version the default
    state.uploads[-1]["kind"] = "version"
    return version


def list_pipelines(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    _no_body(body)
    items = _apply_filter(list(state.pipelines.values()), query.get("filter"))
    return _page(_sort(state, items, query.get("sort_by", "")), query, "pipelines")


def get_pipeline(state: KfpState, query: dict, body: bytes, headers: Any, pid: str) -> dict:
    return _get(state.pipelines, pid, "Pipeline")


def delete_pipeline(state: KfpState, query: dict, body: bytes, headers: Any, pid: str) -> dict:
    _get(state.pipelines, pid, "Pipeline")
    del state.pipelines[pid]
    return {}


def list_pipeline_versions(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    if query.get("resource_key.type") != "PIPELINE" or not query.get("resource_key.id"):
        raise ApiError(INVALID_ARGUMENT, "ResourceKey must be set and its type must be PIPELINE")
    _get(state.pipelines, query["resource_key.id"], "Pipeline")
    items = _by_reference(list(state.versions.values()), query, "resource_key")
    items = _apply_filter(items, query.get("filter"))
    return _page(_sort(state, items, query.get("sort_by", "")), query, "versions")


def get_pipeline_version(state: KfpState, query: dict, body: bytes, headers: Any, vid: str):
    return _get(state.versions, vid, "Pipeline version")


def create_experiment(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    experiment = _json_body(body, "ApiExperiment")
    if not experiment.get("name"):
        raise ApiError(INVALID_ARGUMENT, "Experiment name is empty. Please specify a valid name.")
    if any(e["name"] == experiment["name"] for e in state.experiments.values()):
        raise ApiError(
            ALREADY_EXISTS,
            f"Failed to create a new experiment. The name {experiment['name']} already exists. "
            "Please specify a new name.",
        )
    experiment.update(id=state.new_id("experiment"), created_at=_now())
    state.experiments[experiment["id"]] = experiment
    return experiment


def list_experiments(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    items = _apply_filter(list(state.experiments.values()), query.get("filter"))
    return _page(_sort(state, items, query.get("sort_by", "")), query, "experiments")


def get_experiment(state: KfpState, query: dict, body: bytes, headers: Any, eid: str) -> dict:
    return _get(state.experiments, eid, "Experiment")


def delete_experiment(state: KfpState, query: dict, body: bytes, headers: Any, eid: str):
    _get(state.experiments, eid, "Experiment")
    del state.experiments[eid]
    return {}


def _resolve_spec(state: KfpState, obj: dict[str, Any]) -> None:
    """Checks the experiment and pipeline references and fills in the workflow manifest."""
    if not obj.get("name"):
        raise ApiError(INVALID_ARGUMENT, "The name is empty. Please specify a valid name.")
    experiments = _references(obj, "EXPERIMENT")
    if len(experiments) != 1:
        raise ApiError(INVALID_ARGUMENT, "Exactly one EXPERIMENT resource reference is required")
    _get(state.experiments, experiments[0], "Experiment")
    spec = obj.setdefault("pipeline_spec", {})
    versions = _references(obj, "PIPELINE_VERSION")
    if versions:
        version = _get(state.versions, versions[0], "Pipeline version")
        workflow = next(u["workflow"] for u in state.uploads if u["version_id"] == version["id"])
    elif spec.get("pipeline_id"):
        pipeline = _get(state.pipelines, spec["pipeline_id"], "Pipeline")
        version_id = pipeline["default_version"]["id"]
        workflow = next(u["workflow"] for u in state.uploads if u["version_id"] == version_id)
    elif spec.get("workflow_manifest"):
        workflow = json.loads(spec["workflow_manifest"])
    else:
        raise ApiError(
            INVALID_ARGUMENT,
            "Please specify a pipeline by providing a (workflow manifest) or "
            "(pipeline id or/and pipeline version).",
        )
    declared = {p["name"] for p in _workflow_parameters(workflow)}
    for param in spec.get("parameters", []) or []:
        if param.get("name") not in declared:
            raise ApiError(INVALID_ARGUMENT, f"Unrecognized input parameter: {param.get('name')}")
    spec["workflow_manifest"] = json.dumps(workflow)


def create_run(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    run = _json_body(body, "ApiRun")
    _resolve_spec(state, run)
    run.update(id=state.new_id("run"), created_at=_now(), status="Pending")
    state.runs[run["id"]] = run
    return _run_detail(run)


def _run_detail(run: dict[str, Any]) -> dict[str, Any]:
    manifest = run["pipeline_spec"]["workflow_manifest"]
    return {"run": run, "pipeline_runtime": {"workflow_manifest": manifest}}


def list_runs(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    items = _by_reference(list(state.runs.values()), query, "resource_reference_key")
    items = _apply_filter(items, query.get("filter"))
    return _page(_sort(state, items, query.get("sort_by", "")), query, "runs")


def get_run(state: KfpState, query: dict, body: bytes, headers: Any, run_id: str) -> dict:
    return _run_detail(_get(state.runs, run_id, "Run"))


def create_job(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    job = _json_body(body, "ApiJob")
    _resolve_spec(state, job)
    concurrency = int(job.get("max_concurrency") or 0)
    if not 1 <= concurrency <= 10:
        raise ApiError(
            INVALID_ARGUMENT,
            f"The max concurrency of the job is out of range. Support 1-10. Received {concurrency}",
        )
    trigger = job.get("trigger") or {}
    if trigger.get("cron_schedule"):
        try:
            check_cron(trigger["cron_schedule"].get("cron", ""))
        except ValueError as error:
            raise ApiError(
                INVALID_ARGUMENT,
                "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron)"
                f". Error: {error}",
            ) from None
    if trigger.get("periodic_schedule"):
        periodic = trigger["periodic_schedule"]
        if int(periodic.get("interval_second") or 0) <= 0:
            raise ApiError(INVALID_ARGUMENT, "Found invalid period schedule interval.")
        periodic["interval_second"] = str(periodic["interval_second"])  # int64 -> JSON string
    now = _now()
    job.update(id=state.new_id("job"), created_at=now, updated_at=now, status="")
    job["max_concurrency"] = str(concurrency)
    job["enabled"] = bool(job.get("enabled", False))
    job["mode"] = "ENABLED" if job["enabled"] else "DISABLED"
    state.jobs[job["id"]] = job
    return job


def list_jobs(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    items = _by_reference(list(state.jobs.values()), query, "resource_reference_key")
    items = _apply_filter(items, query.get("filter"))
    return _page(_sort(state, items, query.get("sort_by", "")), query, "jobs")


def get_job(state: KfpState, query: dict, body: bytes, headers: Any, job_id: str) -> dict:
    return _get(state.jobs, job_id, "Job")


def delete_job(state: KfpState, query: dict, body: bytes, headers: Any, job_id: str) -> dict:
    _no_body(body)
    _get(state.jobs, job_id, "Job")
    del state.jobs[job_id]
    return {}


def _set_enabled(state: KfpState, body: bytes, job_id: str, enabled: bool) -> dict:
    _no_body(body)
    job = _get(state.jobs, job_id, "Job")
    job.update(enabled=enabled, mode="ENABLED" if enabled else "DISABLED", updated_at=_now())
    return {}


def disable_job(state: KfpState, query: dict, body: bytes, headers: Any, job_id: str) -> dict:
    return _set_enabled(state, body, job_id, False)


def enable_job(state: KfpState, query: dict, body: bytes, headers: Any, job_id: str) -> dict:
    return _set_enabled(state, body, job_id, True)


def healthz(state: KfpState, query: dict, body: bytes, headers: Any) -> dict:
    return {"multi_user": False}


_LIST = ("page_token", "page_size", "sort_by", "filter")
_REF = ("resource_reference_key.type", "resource_reference_key.id")
_ROUTES = [  # method, path regex, handler, allowed query parameters, response model
    ("GET", r"/healthz", healthz, (), "ApiGetHealthzResponse"),
    ("POST", r"/pipelines/upload", upload_pipeline, ("name", "description"), "ApiPipeline"),
    ("POST", r"/pipelines/upload_version", upload_pipeline_version,
     ("name", "pipelineid", "description"), "ApiPipelineVersion"),
    ("GET", r"/pipelines", list_pipelines, _LIST + _REF, "ApiListPipelinesResponse"),
    ("GET", r"/pipelines/([^/:]+)", get_pipeline, (), "ApiPipeline"),
    ("DELETE", r"/pipelines/([^/:]+)", delete_pipeline, (), "object"),
    ("GET", r"/pipeline_versions", list_pipeline_versions,
     _LIST + ("resource_key.type", "resource_key.id"), "ApiListPipelineVersionsResponse"),
    ("GET", r"/pipeline_versions/([^/:]+)", get_pipeline_version, (), "ApiPipelineVersion"),
    ("POST", r"/experiments", create_experiment, (), "ApiExperiment"),
    ("GET", r"/experiments", list_experiments, _LIST + _REF, "ApiListExperimentsResponse"),
    ("GET", r"/experiments/([^/:]+)", get_experiment, (), "ApiExperiment"),
    ("DELETE", r"/experiments/([^/:]+)", delete_experiment, (), "object"),
    ("POST", r"/runs", create_run, (), "ApiRunDetail"),
    ("GET", r"/runs", list_runs, _LIST + _REF, "ApiListRunsResponse"),
    ("GET", r"/runs/([^/:]+)", get_run, (), "ApiRunDetail"),
    ("POST", r"/jobs", create_job, (), "ApiJob"),
    ("GET", r"/jobs", list_jobs, _LIST + _REF, "ApiListJobsResponse"),
    ("GET", r"/jobs/([^/:]+)", get_job, (), "ApiJob"),
    ("DELETE", r"/jobs/([^/:]+)", delete_job, (), "object"),
    ("POST", r"/jobs/([^/:]+)/disable", disable_job, (), "object"),
    ("POST", r"/jobs/([^/:]+)/enable", enable_job, (), "object"),
]  # fmt: skip


def _route(method: str, path: str):
    if not path.startswith(PREFIX):
        raise ApiError(NOT_FOUND, f"Not Found: {path}")
    rest = path[len(PREFIX) :]
    for route_method, pattern, handler, known_query, response_model in _ROUTES:
        match = re.fullmatch(pattern, rest)
        if match and route_method == method:
            return handler, match.groups(), known_query, response_model
    raise ApiError(NOT_FOUND, f"Method {method} {path} is not served by the fake KFP server")


class FakeKfpServer:
    """Runs the fake API in a daemon thread; ``endpoint`` is its http://127.0.0.1:PORT."""

    def __init__(self) -> None:
        self.state = KfpState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeKfpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
