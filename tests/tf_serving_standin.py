"""A stand-in for TF Serving's REST API that answers from a real SavedModel.

No TF Serving binary can be installed here (no Debian or PyPI package), so the client
(`serving.predict --url`) and the Kubernetes readiness probe are tested against this:
it loads the pushed SavedModel and implements the documented REST API
(https://www.tensorflow.org/tfx/serving/api_rest) for what the project uses, decoding
requests on its own rather than with the client's helpers:

- ``GET /v1/models/<name>[/versions/<v>]``: model status;
- ``GET /v1/models/<name>[/versions/<v>]/metadata``: the signature defs;
- ``POST /v1/models/<name>[/versions/<v>]:predict``: row (``instances``) or columnar
  (``inputs``) format, binary strings as ``{"b64": ...}``; answers ``predictions`` (row) or
  ``outputs`` (columnar);
- errors as ``{"error": "..."}`` with a 4xx status.
It is a stand-in, not TF Serving: batching, versions policy, gRPC and the model server's
exact error texts are not reproduced.
"""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.python.saved_model import loader_impl

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>.*)$")


class _RestError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _decode(value, dtype: tf.DType):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise _RestError(400, f"JSON object is not a {{'b64': ...}} value: {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as error:
            raise _RestError(400, f"Unable to base64 decode the 'b64' value: {error}") from None
    if dtype == tf.string and isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_decode(v, dtype) for v in value]
    return value


class TFServingStandIn:
    """Serves one SavedModel directory as model ``name``, version ``version``."""

    def __init__(self, model_dir: str, name: str, version: str):
        self.name, self.version = name, version
        self.loaded = tf.saved_model.load(model_dir)
        meta_graph = loader_impl.parse_saved_model(model_dir).meta_graphs[0]
        self.signature_defs = {
            n: json_format.MessageToDict(s, preserving_proto_field_name=True)
            for n, s in meta_graph.signature_def.items()
        }
        handler = type("Handler", (_Handler,), {"model": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models/{self.name}"

    def __enter__(self) -> "TFServingStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- the API ---

    def status(self) -> dict:
        return {
            "model_version_status": [
                {
                    "version": self.version,
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    def metadata(self) -> dict:
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": self.version},
            "metadata": {"signature_def": {"signature_def": self.signature_defs}},
        }

    def predict(self, body: dict) -> dict:
        name = body.get("signature_name", "serving_default")
        if name not in self.loaded.signatures:
            raise _RestError(400, f'Serving signature name: "{name}" not found in signature def')
        function = self.loaded.signatures[name]
        specs = function.structured_input_signature[1]
        if ("instances" in body) == ("inputs" in body):
            raise _RestError(400, "JSON Value must have exactly one of 'instances' or 'inputs'")
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise _RestError(400, "'instances' must be a non-empty JSON list")
            bare = not isinstance(instances[0], dict) or set(instances[0]) == {"b64"}
            if len(specs) == 1 and bare:  # a lone input: each instance is its value
                columns = {next(iter(specs)): instances}
            elif all(isinstance(row, dict) and set(row) == set(specs) for row in instances):
                columns = {k: [row[k] for row in instances] for k in specs}
            else:
                raise _RestError(400, f"each instance needs exactly the inputs {sorted(specs)}")
        else:
            inputs = body["inputs"]
            columns = inputs if isinstance(inputs, dict) else {next(iter(specs)): inputs}
        if set(columns) != set(specs):
            raise _RestError(400, f"inputs {sorted(columns)} do not match {sorted(specs)}")
        tensors = {}
        for key, values in columns.items():
            spec = specs[key]
            try:
                tensors[key] = tf.constant(_decode(values, spec.dtype), dtype=spec.dtype)
            except (ValueError, TypeError, base64.binascii.Error) as error:
                raise _RestError(400, f"input {key}: {error}") from None
        try:
            outputs = function(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise _RestError(400, getattr(error, "message", str(error))) from None
        lists = {k: _jsonable(v.numpy()) for k, v in outputs.items()}
        if "inputs" in body:
            return {"outputs": lists}
        rows = len(next(iter(lists.values())))
        return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(rows)]}


def _jsonable(array: np.ndarray) -> list:
    if array.dtype.kind in "SO":
        return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
    return array.tolist()


class _Handler(BaseHTTPRequestHandler):
    model: TFServingStandIn

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        match = _PATH.match(self.path)
        if not match or match["name"] != self.model.name:
            raise _RestError(404, f"Servable not found for request: {self.path}")
        if match["version"] and match["version"] != self.model.version:
            raise _RestError(404, f"Servable not found for version {match['version']}")
        return match["rest"]

    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            rest = self._route()
            if rest == "":
                self._send(200, self.model.status())
            elif rest == "/metadata":
                self._send(200, self.model.metadata())
            else:
                raise _RestError(404, f"Malformed request: GET {self.path}")
        except _RestError as error:
            self._send(error.code, {"error": str(error)})

    def do_POST(self):  # noqa: N802
        try:
            if self._route() != ":predict":
                raise _RestError(404, f"Malformed request: POST {self.path}")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError as error:
                raise _RestError(400, f"JSON Parse error: {error}") from None
            self._send(200, self.model.predict(body))
        except _RestError as error:
            self._send(error.code, {"error": str(error)})

    def log_message(self, *args):  # quiet
        pass
