"""The pathologist's page against the pushed model: answers, overlays, patients, bad files."""

import io
import os
import re

import pytest
from PIL import Image

from histo_testlib import png_bytes
from serving import predict, web

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(first_run):
    model_dir = first_run["summary"]["pushed_to"]
    backend = predict.LocalBackend(model_dir, predict.EXPLAIN)
    app = web.create_app(backend, web.model_facts(model_dir, None, None))
    app.config["TESTING"] = True
    return app.test_client()


def _demo_images(demo_data: str, count: int) -> list[tuple[str, bytes]]:
    import tensorflow as tf

    from modules import features

    files = tf.io.gfile.glob(os.path.join(demo_data, "span-1", "test", "*.gz"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    out = []
    for index, record in enumerate(records.as_numpy_iterator()):
        example = tf.train.Example.FromString(record)
        image = example.features.feature[features.IMAGE_KEY].bytes_list.value[0]
        out.append((f"tile-{index}.png", image))
    return out


def _post(client, files: list[tuple[str, bytes]], patient: str = ""):
    data = {"images": [(io.BytesIO(b), name) for name, b in files], "patient": patient}
    return client.post("/", data=data, content_type="multipart/form-data")


def test_the_page_says_research_use_only_and_what_model_answers(client, first_run):
    page = client.get("/").get_data(as_text=True)
    assert web.NOTICE in page
    version = os.path.basename(first_run["summary"]["pushed_to"])
    assert f"<td>version</td><td>{version}</td>" in page
    assert "mobilenet_v2" in page and 'type="file"' in page and "multiple" in page


def test_two_images_and_a_broken_file_give_two_answers_with_overlays_and_one_error(
    client, demo_data
):
    files = [*_demo_images(demo_data, 2), ("notes.png", b"this is not an image")]
    response = _post(client, files, patient="P-1")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    cards = page.split('class="card result"')[1:]
    assert len(cards) == 3
    overlays = re.findall(r'class="overlay" src="data:image/png;base64,([^"]+)"', page)
    assert len(overlays) == 2
    for encoded in overlays:
        import base64

        with Image.open(io.BytesIO(base64.b64decode(encoded))) as overlay:
            assert max(overlay.size) == web.OVERLAY_SIDE
    assert "notes.png" in cards[2] and "not an image" in cards[2]
    # One patient, named on the form: the mean of its two answered images.
    assert re.search(r"<td>P-1</td><td>2 of 3</td>", page)


def test_patients_come_from_breakhis_file_names_when_not_given(client, demo_data):
    (_, image), (_, other) = _demo_images(demo_data, 2)
    names = ["SOB_B_A-14-22549AB-100-001.png", "SOB_M_DC-14-2523-100-004.png"]
    page = _post(client, list(zip(names, [image, other], strict=True))).get_data(as_text=True)
    assert "<td>14-22549</td><td>1 of 1</td>" in page
    assert "<td>14-2523</td><td>1 of 1</td>" in page


def test_limits_refuse_too_many_files_and_nothing_to_answer(client):
    tiny = png_bytes(size=(64, 64))
    too_many = [(f"{i}.png", tiny) for i in range(web.MAX_FILES + 1)]
    assert _post(client, too_many).status_code == 413
    assert client.post("/", data={}, content_type="multipart/form-data").status_code == 400


def test_a_small_image_is_refused_with_its_size(client):
    page = _post(client, [("small.png", png_bytes(size=(16, 16)))]).get_data(as_text=True)
    assert "image too small: 16x16 px" in page


def test_uploads_are_parsed_in_memory_never_spooled_to_disk(client, demo_data, monkeypatch):
    from werkzeug import formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    monkeypatch.setattr(formparser, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(formparser, "TemporaryFile", no_disk, raising=False)
    big = [(name, data + b"\0" * (2 * 2**20)) for name, data in _demo_images(demo_data, 1)]
    assert _post(client, big).status_code == 200  # 2 MB: over Werkzeug's 500 KB spool size
