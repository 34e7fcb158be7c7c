"""serving.predict on real crops and bad files, its REST body against the exported signature
(locally and through a stand-in TF Serving), and the Kubernetes manifests."""

import base64
import glob
import io
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

import local_runner
from histo_testlib import REPO
from modules import features
from serving import images, predict, rest
from tf_serving_standin import TFServingStandIn

MODEL_NAME = local_runner.configs.PIPELINE_NAME


@pytest.fixture(scope="module")
def model_dir(first_run) -> str:
    return first_run["summary"]["pushed_to"]


@pytest.fixture(scope="module")
def local(model_dir) -> predict.LocalBackend:
    return predict.LocalBackend(model_dir)


@pytest.fixture(scope="module")
def crops(breakhis_crops) -> list[str]:
    """Two benign and two malignant real crops (first by name: stable)."""
    return [
        path
        for label in features.LABEL_NAMES
        for path in sorted(glob.glob(os.path.join(breakhis_crops, label, "*.png")))[:2]
    ]


@pytest.fixture()
def bad_files(tmp_path, crops) -> dict[str, str]:
    with open(crops[0], "rb") as f:
        png = f.read()
    files = {
        "empty": b"",
        "text": b"patient notes, not an image\n",
        "truncated": png[: len(png) // 2],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = str(tmp_path / f"{name}.png")
        with open(paths[name], "wb") as f:
            f.write(data)
    small = Image.open(crops[0]).resize((16, 16))
    paths["small"] = str(tmp_path / "small.png")
    small.save(paths["small"])
    paths["gray"] = str(tmp_path / "gray.jpg")
    Image.open(crops[0]).convert("L").save(paths["gray"])
    return paths


def test_predict_answers_real_crops_and_reports_bad_files(local, crops, bad_files):
    order = [crops[0], bad_files["empty"], crops[1], bad_files["text"], crops[2]]
    order += [bad_files["truncated"], bad_files["small"], crops[3], bad_files["gray"]]
    document = predict.predict_files(order, local)
    results = document["results"]
    assert [r["file"] for r in results] == order
    assert document["signature"] == "predict_image"
    for result in results:
        if result["file"] in crops or result["file"] == bad_files["gray"]:
            assert "error" not in result, result
            p = result["probability_malignant"]
            assert 0.0 <= p <= 1.0
            assert 0.0 < result["threshold"] < 1.0  # the model's own operating threshold
            assert result["class_name"] == features.LABEL_NAMES[int(p >= result["threshold"])]
    errors = {r["file"]: r["error"] for r in results if "error" in r}
    assert errors[bad_files["empty"]] == "empty file (0 bytes)"
    assert errors[bad_files["text"]].startswith("not an image")
    assert errors[bad_files["truncated"]].startswith("truncated or corrupt PNG image")
    assert errors[bad_files["small"]].startswith("image too small: 16x16 px")
    gray = next(r for r in results if r["file"] == bad_files["gray"])
    assert "converted L to RGB" in gray["notes"]


def test_predict_answers_per_patient_from_its_images(local, crops, bad_files):
    """A patient's answer is the mean probability of its answered images, at the threshold."""
    document = predict.predict_files(crops + [bad_files["text"]], local)
    by_file = {r["file"]: r for r in document["results"]}
    patients = {p["patient_id"]: p for p in document["patients"]}
    # The crops' BreakHis names carry their slide; the rule groups slides into patients.
    expected: dict[str, list[float]] = {}
    for path in crops:
        patient = predict.patient_of_file(path)
        assert patient == by_file[path]["patient_id"] and "-" in patient
        expected.setdefault(patient, []).append(by_file[path]["probability_malignant"])
    for patient, probabilities in expected.items():
        row = patients[patient]
        assert row["answered"] == len(probabilities)
        assert row["probability_malignant"] == pytest.approx(np.mean(probabilities))
        threshold = row["threshold"]
        assert row["class_name"] == features.LABEL_NAMES[int(np.mean(probabilities) >= threshold)]
    # A file without a patient in its name belongs to its folder; unanswered, it has no mean.
    folder = patients[os.path.basename(os.path.dirname(bad_files["text"]))]
    assert folder["answered"] == 0 and "probability_malignant" not in folder
    one = predict.predict_files(crops, local, patient="P-1")["patients"]
    assert [p["patient_id"] for p in one] == ["P-1"] and one[0]["answered"] == len(crops)


def test_local_answers_equal_the_exported_signature(local, model_dir, crops):
    document = predict.predict_files(crops, local)
    loaded = tf.saved_model.load(model_dir)
    data = [open(p, "rb").read() for p in crops]
    direct = loaded.signatures["predict_image"](image_bytes=tf.constant(data))
    np.testing.assert_allclose(
        [r["probability_malignant"] for r in document["results"]],
        direct[features.PROBABILITY_OUTPUT].numpy(),
        rtol=1e-6,
    )


def test_request_body_matches_the_exported_signature(local):
    info = local.signature()
    assert list(info.inputs) == ["image_bytes"]
    assert info.inputs["image_bytes"].dtype == "DT_STRING"
    body = rest.request_body([b"\x89PNG..."])
    assert set(body) == {"signature_name", "instances"}
    assert body["instances"][0] == {"b64": "iVBORy4uLg=="}
    rest.check_request(body, info)
    with pytest.raises(rest.SignatureMismatchError):
        rest.check_request({"signature_name": "predict_image", "instances": ["raw"]}, info)
    with pytest.raises(rest.SignatureMismatchError):
        rest.check_request({**body, "signature_name": "serving_default"}, info)
    examples_signature = rest.from_saved_model(local._loaded, "serving_default")
    rest.check_signature(examples_signature)  # also one DT_STRING [-1] input: serialized examples


def test_prepare_converts_sixteen_bit_grey_and_keeps_rgb_png_untouched(tmp_path, crops):
    grey16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    path = str(tmp_path / "grey16.png")
    grey16.save(path)
    prepared = images.prepare(path)
    decoded = Image.open(io.BytesIO(prepared.data))
    assert decoded.mode == "RGB" and np.asarray(decoded).max() > 200  # scaled, not clipped
    with open(crops[0], "rb") as f:
        assert images.prepare(crops[0]).data == f.read()


@pytest.fixture(scope="module")
def serving(model_dir):
    """The stand-in TF Serving (tests/tf_serving_standin.py) on the pushed model."""
    version = os.path.basename(model_dir.rstrip("/"))
    with TFServingStandIn(model_dir, MODEL_NAME, version) as server:
        yield server


@pytest.fixture(scope="module")
def fake_serving(serving):
    return serving.url


def _json(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_row_and_columnar_requests_give_the_same_answers(serving, crops):
    encoded = [{"b64": base64.b64encode(open(path, "rb").read()).decode()} for path in crops[:3]]
    code, rows = _json(
        serving.url + ":predict", {"signature_name": "predict_image", "instances": encoded}
    )
    assert code == 200
    code, columns = _json(
        f"{serving.url}/versions/{serving.version}:predict",
        {"signature_name": "predict_image", "inputs": {"image_bytes": encoded}},
    )
    assert code == 200
    by_row = [r[features.PROBABILITY_OUTPUT] for r in rows["predictions"]]
    np.testing.assert_allclose(by_row, columns["outputs"][features.PROBABILITY_OUTPUT], atol=1e-6)
    names = [r[features.CLASS_NAME_OUTPUT] for r in rows["predictions"]]
    assert names == columns["outputs"][features.CLASS_NAME_OUTPUT]


@pytest.mark.parametrize(
    "path,body,code,words",
    [
        (":predict", {"signature_name": "nope", "instances": [1]}, 400, "not found"),
        (":predict", {"signature_name": "predict_image", "instances": [{"b64": "%%"}]}, 400, "b64"),
        (":predict", {"signature_name": "predict_image"}, 400, "instances"),
        ("/versions/1:predict", {"instances": [1]}, 404, "version"),
    ],
)
def test_serving_errors_are_json_with_an_error_field(serving, path, body, code, words):
    status, answer = _json(serving.url + path, body)
    assert status == code and words in answer["error"]


def _named(kind: str, name: str) -> dict:
    (found,) = [d for d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_readiness_probe_of_the_k8s_manifest_answers_available(serving):
    deployment = _named("Deployment", MODEL_NAME)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]["httpGet"]["path"]
    status, answer = _json(f"http://127.0.0.1:{serving.port}{probe}")
    assert status == 200
    assert answer["model_version_status"] == [
        {
            "version": serving.version,
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    ]
    status, metadata = _json(f"http://127.0.0.1:{serving.port}{probe}/metadata")
    assert "predict_image" in metadata["metadata"]["signature_def"]["signature_def"]


def test_cli_over_rest_prints_json_and_flags_bad_files(fake_serving, crops, bad_files, capsys):
    code = predict.main([crops[0], bad_files["text"], crops[3], "--url", fake_serving])
    document = json.loads(capsys.readouterr().out)
    assert code == 1  # one file failed, the others were answered
    good = [r for r in document["results"] if "error" not in r]
    assert [r["file"] for r in good] == [crops[0], crops[3]]
    assert all(0.0 <= r["probability_malignant"] <= 1.0 for r in good)
    assert rest.RestClient(fake_serving).status()["model_version_status"][0]["state"] == "AVAILABLE"


def test_cli_refuses_a_model_without_the_signature(fake_serving, crops, capsys):
    assert predict.main([crops[0], "--url", fake_serving, "--signature", "nope"]) == 2
    assert "no signature 'nope'" in capsys.readouterr().err


# --- Kubernetes manifests ---


def _manifests() -> list[dict]:
    documents = []
    for path in sorted(glob.glob(os.path.join(REPO, "k8s", "*.yaml"))):
        with open(path) as f:
            documents.extend(d for d in yaml.safe_load_all(f) if d)
    return documents


def test_k8s_manifests_serve_the_pushed_model_with_a_status_readiness_probe():
    by_kind = {
        "Deployment": _named("Deployment", MODEL_NAME),
        "Service": _named("Service", MODEL_NAME),
    }
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_NAME"] == MODEL_NAME  # the Pusher's folder: serving_model/<pipeline name>
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{env['MODEL_NAME']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["port"] in ("http", ports["http"]) and ports["http"] == 8501
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == f"{env['MODEL_BASE_PATH']}/{env['MODEL_NAME']}"
    assert mount["name"] in {v["name"] for v in pod["volumes"]}
    service = by_kind["Service"]["spec"]
    assert (
        service["selector"].items()
        <= by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {p["port"] for p in service["ports"]} == {8500, 8501}


def test_the_web_page_is_deployed_beside_tf_serving_and_asks_its_service():
    with open(os.path.join(REPO, "k8s", "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    assert set(listed) == {
        os.path.basename(p) for p in glob.glob(os.path.join(REPO, "k8s", "*.yaml"))
    } - {"kustomization.yaml"}
    (container,) = _named("Deployment", "histopath-web")["spec"]["template"]["spec"]["containers"]
    with open(os.path.join(REPO, "web.Dockerfile")) as f:
        (entrypoint,) = [
            json.loads(line.split(None, 1)[1]) for line in f if line.startswith("ENTRYPOINT")
        ]
    assert entrypoint[0] == "histo-web" and "command" not in container
    assert f"--port={container['ports'][0]['containerPort']}" in entrypoint
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    serving_port = {p["name"]: p["port"] for p in _named("Service", MODEL_NAME)["spec"]["ports"]}
    assert args["url"] == f"http://{MODEL_NAME}:{serving_port['http']}/v1/models/{MODEL_NAME}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    web_service = _named("Service", "histopath-web")["spec"]
    assert web_service["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_cli_explain_writes_overlays_over_rest(fake_serving, crops, tmp_path, capsys):
    folder = tmp_path / "overlays"
    assert predict.main([crops[0], crops[3], "--url", fake_serving, "--explain", str(folder)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["signature"] == predict.EXPLAIN
    for result in document["results"]:
        assert features.HEATMAP_OUTPUT not in result
        with Image.open(result["overlay"]) as overlay, Image.open(result["file"]) as original:
            assert overlay.size == original.size
    assert sorted(os.listdir(folder)) == sorted(
        os.path.basename(r["overlay"]) for r in document["results"]
    )


def test_the_web_page_answers_through_tf_serving_rest(fake_serving, serving, crops):
    from serving import web

    backend = predict.RestBackend(fake_serving, predict.EXPLAIN)
    facts = web.model_facts(None, fake_serving, None)
    assert facts.version == serving.version
    client = web.create_app(backend, facts).test_client()
    with open(crops[0], "rb") as f:
        data = {"images": [(io.BytesIO(f.read()), os.path.basename(crops[0]))]}
    page = client.post("/", data=data, content_type="multipart/form-data").get_data(as_text=True)
    assert page.count('class="overlay" src="data:image/png;base64,') == 1
    assert client.get("/healthz").get_json() == {"status": "ok"}
