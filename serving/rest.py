"""TF Serving's REST API for the ``predict_image`` signature, checked against the export.

A request is ``POST /v1/models/<name>:predict`` with
``{"signature_name": "predict_image", "instances": [{"b64": "<base64 image>"}, ...]}``:
the signature has one input (``image_bytes``, DT_STRING, shape [-1]), so each instance
is the bare value (TF Serving's row format) and binary strings travel as ``{"b64": ...}``.
Before sending, the body is checked against the signature as the server describes it
(``GET /v1/models/<name>/metadata``) or as the SavedModel declares it (local mode).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

from modules import features

SIGNATURE = "predict_image"


class SignatureMismatchError(RuntimeError):
    """The model's signature is not the one this client was written for."""


@dataclasses.dataclass
class TensorInfo:
    dtype: str  # "DT_STRING", "DT_FLOAT", ...
    shape: list[int]  # -1 for unknown dims


@dataclasses.dataclass
class SignatureInfo:
    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


def from_saved_model(loaded: Any, name: str = SIGNATURE) -> SignatureInfo:
    """Signature facts from ``tf.saved_model.load`` (what ``saved_model_cli show`` prints)."""
    from tensorflow.core.framework import types_pb2

    if name not in loaded.signatures:
        raise SignatureMismatchError(
            f"no signature {name!r}; the model has {sorted(loaded.signatures)}"
        )
    function = loaded.signatures[name]

    def info(spec: Any) -> TensorInfo:
        dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
        return TensorInfo(dtype, [-1 if d is None else int(d) for d in spec.shape.as_list()])

    _args, kwargs = function.structured_input_signature
    return SignatureInfo(
        name,
        {k: info(v) for k, v in kwargs.items()},
        {k: info(v) for k, v in function.structured_outputs.items()},
    )


def from_metadata(metadata: dict[str, Any], name: str = SIGNATURE) -> SignatureInfo:
    """Signature facts from TF Serving's ``GET /v1/models/<name>/metadata`` answer."""
    signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    if name not in signatures:
        raise SignatureMismatchError(
            f"server has no signature {name!r}; it has {sorted(signatures)}"
        )

    def info(tensor: dict[str, Any]) -> TensorInfo:
        dims = tensor.get("tensor_shape", {}).get("dim", [])
        return TensorInfo(tensor.get("dtype", ""), [int(d.get("size", -1)) for d in dims])

    signature = signatures[name]
    return SignatureInfo(
        name,
        {k: info(v) for k, v in signature.get("inputs", {}).items()},
        {k: info(v) for k, v in signature.get("outputs", {}).items()},
    )


def check_signature(info: SignatureInfo) -> None:
    """One string input of shape [batch] and a probability output, or SignatureMismatchError."""
    if len(info.inputs) != 1:
        raise SignatureMismatchError(f"{info.name} takes {sorted(info.inputs)}; expected one input")
    ((input_name, tensor),) = info.inputs.items()
    if tensor.dtype != "DT_STRING" or len(tensor.shape) != 1:
        raise SignatureMismatchError(
            f"{info.name} input {input_name!r} is {tensor.dtype} {tensor.shape}; "
            "expected DT_STRING [-1] (encoded image bytes)"
        )
    if features.PROBABILITY_OUTPUT not in info.outputs:
        raise SignatureMismatchError(
            f"{info.name} outputs {sorted(info.outputs)}; no {features.PROBABILITY_OUTPUT!r}"
        )


def request_body(images: list[bytes], signature: str = SIGNATURE) -> dict[str, Any]:
    return {
        "signature_name": signature,
        "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images],
    }


def check_request(body: dict[str, Any], info: SignatureInfo) -> None:
    """Raises SignatureMismatchError unless ``body`` is a row-format request ``info`` accepts."""
    check_signature(info)
    if body.get("signature_name") != info.name:
        raise SignatureMismatchError(
            f"body names {body.get('signature_name')!r}, not {info.name!r}"
        )
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise SignatureMismatchError("body needs a non-empty 'instances' list")
    for index, instance in enumerate(instances):
        if not (isinstance(instance, dict) and set(instance) == {"b64"}):
            raise SignatureMismatchError(
                f"instance {index} must be {{'b64': ...}} for a DT_STRING input"
            )
        try:
            base64.b64decode(instance["b64"], validate=True)
        except (binascii.Error, TypeError) as error:
            raise SignatureMismatchError(
                f"instance {index} is not valid base64: {error}"
            ) from error


def decode_instances(body: dict[str, Any]) -> list[bytes]:
    """What TF Serving feeds the string input for a row-format body of b64 instances."""
    return [base64.b64decode(instance["b64"]) for instance in body["instances"]]


def parse_predictions(answer: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    """TF Serving's row-format answer -> one {output: value} dict per instance."""
    if "error" in answer:
        raise RuntimeError(answer["error"])
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise RuntimeError(f"expected {expected} predictions, got {str(predictions)[:200]}")
    return [p if isinstance(p, dict) else {features.PROBABILITY_OUTPUT: p} for p in predictions]


class RestClient:
    """``url`` is the model's base, e.g. http://host:8501/v1/models/histopath-classifier."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:  # TF Serving explains 4xx in a JSON body
            detail = error.read().decode("utf-8", "replace")
            try:
                return {"error": json.loads(detail).get("error", detail)}
            except json.JSONDecodeError:
                return {"error": f"HTTP {error.code}: {detail[:300]}"}

    def status(self) -> dict[str, Any]:
        return self._call(self.url)

    def signature(self, name: str = SIGNATURE) -> SignatureInfo:
        answer = self._call(f"{self.url}/metadata")
        if "error" in answer:
            raise SignatureMismatchError(f"cannot read model metadata: {answer['error']}")
        return from_metadata(answer, name)

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"{self.url}:predict", body)
