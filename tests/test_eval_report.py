"""Evaluation report: every section is there and its numbers are TFMA's own."""

import glob
import html
import io
import json
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from PIL import Image
from tensorflow_model_analysis.proto import validation_result_pb2

import local_runner
from components.eval_report import charts, derive, html_report, model_card, sources, tfma_reader
from components.eval_report.tfma_reader import EvalData
from histo_testlib import node_states
from modules import features
from modules.metrics import bootstrap_over_patients, patient_bootstrap_interval, roc_auc
from modules.trainer import export

SECTIONS = (
    "model-card",
    "grad-cam",
    "blessing",
    "overall",
    "operating-point",
    "curves",
    "calibration",
    "slices",
    "patients",
    "data",
    "lineage",
)


def _bucket(lower, upper, count, labels, predictions):
    return {
        "lower": lower,
        "upper": upper,
        "count": count,
        "label_sum": labels,
        "prediction_sum": predictions,
    }


def test_calibration_bins_fold_the_overflow_bucket_and_give_the_ece():
    inf = float("inf")
    buckets = [
        _bucket(-inf, 0.0, 0, 0, 0),
        _bucket(0.0, 0.5, 4, 1, 0.8),  # mean prediction 0.2, 25 % malignant
        _bucket(0.5, 1.0, 2, 2, 1.5),
        _bucket(1.0, inf, 2, 2, 2.0),  # p == 1.0 lands here; it belongs to the last bin
    ]
    bins = derive.calibration_bins(buckets)
    assert [b["count"] for b in bins] == [4, 4]
    assert bins[1]["mean_prediction"] == pytest.approx(3.5 / 4)
    assert bins[1]["fraction_positive"] == 1.0
    expected = 0.5 * abs(0.2 - 0.25) + 0.5 * abs(3.5 / 4 - 1.0)
    assert derive.expected_calibration_error(bins) == pytest.approx(expected)


def _data(metrics: dict, validation=None, baseline=None, slice_matrices=None) -> EvalData:
    return EvalData(
        eval_config=tfma.EvalConfig(),
        baseline_name=baseline,
        metrics=metrics,
        baseline_metrics={(): {"auc": 0.9}} if baseline else {},
        diffs={(): {"auc": -0.2}} if baseline else {},
        confusion_matrices=[],
        calibration_buckets=[],
        validation=validation or validation_result_pb2.ValidationResult(validation_ok=True),
        slice_confusion_matrices=slice_matrices or {},
    )


def test_patient_view_aggregates_tfma_patient_slices():
    def patient(pid, label, score, n=4):
        key = ((features.PATIENT_ID_KEY, pid),)
        return key, {"mean_label": label, "mean_prediction": score, "example_count": n}

    metrics = dict(
        [patient("B1", 0.0, 0.1), patient("B2", 0.0, 0.7), patient("M1", 1.0, 0.9)]
        + [patient("M2", 1.0, 0.4)]
    )
    view = derive.patients(_data(metrics), threshold=0.5)
    a = view["aggregate"]
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (1, 1, 1, 1)
    assert a["sensitivity"] == a["specificity"] == 0.5
    assert a["auc"] == pytest.approx(0.75)  # 3 of 4 malignant-benign pairs ranked right
    assert [r["patient_id"] for r in view["rows"]] == ["B1", "B2", "M1", "M2"]


def _matrices(labels, scores, thresholds) -> list[dict]:
    """TFMA's ConfusionMatrixPlot of some images: positive where score > threshold."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores)
    out = []
    for t in thresholds:
        called = scores > t
        out.append(
            {
                "threshold": float(t),
                "tp": float((called & labels).sum()),
                "fp": float((called & ~labels).sum()),
                "tn": float((~called & ~labels).sum()),
                "fn": float((~called & labels).sum()),
            }
        )
    return out


def test_the_image_auc_interval_from_tfmas_patient_matrices_is_the_bootstrap_of_the_images():
    """Seven patients' images on a grid TFMA's 1000 thresholds separate: summing the drawn
    patients' matrices gives each draw the AUC of its images, so the report's interval is
    the one ``histo-validate`` computes from the raw answers, draw for draw."""
    rng = np.random.default_rng(3)
    thresholds = np.concatenate([[-1e-6], np.arange(1, 1000) / 1000, [1.0]])
    metrics, slice_matrices, labels, scores, patients = {}, {}, [], [], []
    for index, label in enumerate([0, 0, 0, 1, 1, 1, 1]):
        patient = f"P{index}"
        mine = (rng.integers(100, 900, size=5) + 0.5 + 150 * label) / 1000  # between thresholds
        mine = np.minimum(mine, 0.9995)
        key = ((features.PATIENT_ID_KEY, patient),)
        metrics[key] = {"mean_label": float(label), "mean_prediction": float(mine.mean())}
        slice_matrices[key] = _matrices([label] * 5, mine, thresholds)
        labels += [label] * 5
        scores += mine.tolist()
        patients += [patient] * 5
    overall = _matrices(labels, scores, thresholds)
    area = derive.area_under_roc(
        *(np.array([m[k] for m in overall]) for k in ("tp", "fp", "tn", "fn"))
    )
    assert area == pytest.approx(roc_auc(labels, scores), abs=1e-12)
    interval = derive.image_auc_interval(_data(metrics, slice_matrices=slice_matrices))
    assert interval == pytest.approx(
        patient_bootstrap_interval(labels, scores, patients), abs=1e-12
    )
    assert interval[0] < roc_auc(labels, scores) < interval[1]
    one_benign = {k: v for k, v in metrics.items() if k[0][1] not in ("P1", "P2")}
    assert derive.image_auc_interval(_data(one_benign, slice_matrices=slice_matrices)) is None


def test_sensitivity_and_specificity_intervals_draw_patients_with_their_counts():
    """Each patient's TFMA counts at the threshold, summed per draw, give the share of the
    drawn images called right: the same as drawing the images patient by patient."""
    threshold = 0.5
    called = {"B0": [0, 0, 1], "B1": [1, 1], "B2": [0], "M0": [1, 1, 0, 1], "M1": [0], "M2": [1]}
    metrics = {}
    for patient, calls in called.items():
        label = int(patient.startswith("M"))
        tp = sum(calls) if label else 0
        fp = 0 if label else sum(calls)
        matrix = {"threshold": threshold, "tp": tp, "fp": fp}
        matrix |= {"tn": 0 if label else len(calls) - fp, "fn": len(calls) - tp if label else 0}
        metrics[((features.PATIENT_ID_KEY, patient),)] = {
            "mean_label": float(label),
            "confusion_matrix_at_thresholds": [matrix],
        }
    intervals = derive.operating_point_intervals(_data(metrics), threshold)
    patients = sorted(called)
    labels = [int(p.startswith("M")) for p in patients]

    def share_right(label: int):
        def of(drawn: np.ndarray) -> float:
            right = [
                c == label
                for p, n in zip(patients, drawn, strict=True)
                if int(p.startswith("M")) == label
                for c in called[p] * n
            ]
            return float(np.mean(right)) if right else float("nan")

        return of

    assert intervals["sensitivity"] == pytest.approx(
        bootstrap_over_patients(labels, share_right(1))
    )
    assert intervals["specificity"] == pytest.approx(
        bootstrap_over_patients(labels, share_right(0))
    )
    low, high = intervals["sensitivity"]
    assert low < 4 / 6 < high and high - low > 0.3  # 4 of 6 malignant images pooled


def test_blessing_section_explains_a_rejection():
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.name = "auc"
    failure.metric_value.double_value.value = 0.7
    failure.metric_threshold.change_threshold.absolute.value = -1e-10
    failure.metric_threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
    facts = sources.blessing_facts(
        _data({(): {"auc": 0.7}}, validation, baseline="baseline"), blessed=False
    )
    assert facts["failures"][0]["slice"] == "overall"
    assert "auc - baseline auc >=" in facts["failures"][0]["rule"]
    page = html_report._blessing(facts)
    assert "NOT BLESSED" in page and "0.7000" in page and "0.9000" in page


def test_a_failed_check_says_what_it_saw_and_the_rule_it_broke():
    # TFMA leaves ``message`` empty for thresholds; the console and the report need both.
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.6}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -0.01 - 1e-10}
        ),
    )
    floor = validation_result_pb2.ValidationFailure(metric_threshold=threshold)
    floor.metric_key.name = "auc"
    floor.metric_value.double_value.value = 0.5858974
    assert sources.failure_text(floor) == "auc = 0.5859, needs auc >= 0.6"
    drop = validation_result_pb2.ValidationFailure()
    drop.CopyFrom(floor)
    drop.metric_key.is_diff = True
    drop.metric_value.double_value.value = -0.03
    assert sources.failure_text(drop) == (
        "auc - baseline auc = -0.03, needs auc - baseline auc >= -0.01"
    )


# --- The report of the session's pipeline run ---


@pytest.fixture(scope="module")
def report(first_run) -> dict:
    root = os.path.join(first_run["output"], "tfx", "pipelines", local_runner.configs.PIPELINE_NAME)
    for path in glob.glob(os.path.join(root, "EvalReport", "report", "*", "report.json")):
        with open(path) as f:
            content = json.load(f)
        if content["evaluation_uri"] == first_run["summary"]["evaluation_uri"]:
            with open(os.path.join(os.path.dirname(path), "report.html")) as f:
                return {"json": content, "html": f.read()}
    raise AssertionError("no EvalReport for the first run's evaluation")


def _tfma_overall(evaluation_uri: str) -> dict:
    """Candidate, overall slice, EvalConfig metrics: read straight from TFMA."""
    for record in tfma.load_metrics(evaluation_uri):
        if not record.slice_key.single_slice_keys:
            return {
                kv.key.name: kv.value
                for kv in record.metric_keys_and_values
                if kv.key.HasField("example_weighted") and not kv.key.is_diff
            }
    raise AssertionError("no overall slice")


def _section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, anchor
    return match.group(1)


def test_eval_report_ran_with_every_section(first_run, report):
    states = node_states(local_runner.metadata_path(first_run["output"]))
    assert states["EvalReport"][0] == "COMPLETE", states
    for anchor in SECTIONS:
        _section(report["html"], anchor)
    # Self-contained: every image is inline, nothing is fetched: 3 charts, then Grad-CAM
    # thumbnails of each class from this run's gallery.
    sources = re.findall(r'src="([^",]*,?)', report["html"])
    assert sources[:3] == ["data:image/png;base64,"] * 3
    assert sources[3:] == ["data:image/jpeg;base64,"] * 4


def test_report_has_a_model_card_with_intervals_and_grad_cam_thumbnails(report):
    card = _section(report["html"], "model-card")
    assert "Not a diagnostic device" in card
    op = report["json"]["operating_point"]
    assert f"<td>sensitivity</td><td>{op['sensitivity']:.4f}</td>" in card
    # The image-level intervals resample the evaluated patients, from TFMA's own counts,
    # widened where the textbook interval over images reaches further.
    data = tfma_reader.load(report["json"]["evaluation_uri"])
    over_patients = derive.image_auc_interval(data)
    assert report["json"]["auc_interval_over_patients"] == pytest.approx(list(over_patients))
    auc = report["json"]["overall"]["auc"]
    (low, high), method = model_card.interval_over_patients(
        over_patients,
        model_card.auc_interval(auc, op["tp"] + op["fn"], op["tn"] + op["fp"]),
        model_card.HANLEY_MCNEIL,
    )
    assert f"<td>AUC (image)</td><td>{auc:.4f}</td>" in card
    assert f"{low:.3f} &ndash; {high:.3f}</td><td>{html.escape(method)}</td>" in card
    point = derive.operating_point_intervals(data, op["threshold"])
    counts = {"sensitivity": (op["tp"], op["fn"]), "specificity": (op["tn"], op["fp"])}
    for name, (right, wrong) in counts.items():
        assert report["json"]["operating_point_intervals_over_patients"][name] == (
            pytest.approx(list(point[name]))
        )
        (low, high), method = model_card.interval_over_patients(
            point[name], model_card.wilson_interval(right, right + wrong), model_card.WILSON
        )
        assert method.startswith(model_card.PATIENTS_RESAMPLED)
        assert f"<td>{name}</td><td>{op[name]:.4f}</td>" in card
        assert f"{low:.3f} &ndash; {high:.3f}</td><td>{html.escape(method)}</td>" in card
    thumbs = _section(report["html"], "grad-cam")
    assert thumbs.count("truth <b>benign</b>") == thumbs.count("truth <b>malignant</b>") == 2


def test_an_interval_over_patients_is_widened_where_the_one_over_images_reaches_further():
    wilson = model_card.wilson_interval(16, 16)  # right on all 16 images: (0.806, 1.0)
    resampled = model_card.PATIENTS_RESAMPLED
    # No draw of patients held an error: the images still say it may be as low as 0.806.
    assert model_card.interval_over_patients((1.0, 1.0), wilson, model_card.WILSON) == (
        (wilson[0], 1.0),
        f"{resampled}, {model_card.WILSON}",
    )
    # The patients' interval is the wider: it stands.
    assert model_card.interval_over_patients((0.2, 1.0), (0.5, 0.9), "x") == ((0.2, 1.0), resampled)
    # A textbook interval that has nothing to say (n/a) leaves it as it is.
    nan = float("nan")
    assert model_card.interval_over_patients((1.0, 1.0), (nan, nan), "x") == ((1.0, 1.0), resampled)
    # Too few patients to draw: the textbook interval alone.
    assert model_card.interval_over_patients(None, (0.5, 0.9), "x") == ((0.5, 0.9), "x")


def test_interval_formulas_match_published_values():
    # Wilson 95% for 8 of 10: [0.4902, 0.9433] (Newcombe 1998, table I).
    assert model_card.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert all(math.isnan(v) for v in model_card.wilson_interval(0, 0))
    # Hanley & McNeil: AUC 0.9 with 50 + 50 cases has a standard error of about 0.032.
    low, high = model_card.auc_interval(0.9, 50, 50)
    assert (high - low) / 2 / model_card.Z95 == pytest.approx(0.0321, abs=5e-4)
    assert model_card.auc_interval(0.99, 5, 5)[1] == 1.0  # clipped
    assert all(math.isnan(v) for v in model_card.auc_interval(1.0, 16, 16))  # no errors


def test_report_numbers_are_tfmas(first_run, report):
    tfma_values = _tfma_overall(first_run["summary"]["evaluation_uri"])
    content, page = report["json"], report["html"]
    overall = _section(page, "overall")
    for name in ("auc", "auc_pr", "precision"):
        value = tfma_values[name].double_value.value
        assert content["overall"][name] == pytest.approx(value, abs=1e-12), name
        assert f"<td>{name}</td><td>{value:.4f}</td>" in overall, name
    count = int(tfma_values["example_count"].double_value.value)
    assert content["overall"]["example_count"] == count
    # The operating point is the model's own threshold (fitted in training, stored in
    # the model), read from TFMA's confusion matrix at exactly that threshold.
    metadata = export.read_metadata(first_run["summary"]["pushed_to"])
    threshold = metadata["calibration"]["threshold"]
    op = content["operating_point"]
    assert op["threshold"] == threshold
    matrix = tfma_values["confusion_matrix_at_thresholds"].confusion_matrix_at_thresholds
    (at_threshold,) = [m for m in matrix.matrices if m.threshold == pytest.approx(threshold)]
    tp, fp = int(at_threshold.true_positives), int(at_threshold.false_positives)
    tn, fn = int(at_threshold.true_negatives), int(at_threshold.false_negatives)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (tp, fp, tn, fn)
    assert content["overall"]["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert content["overall"]["specificity"] == pytest.approx(tn / (tn + fp))
    assert content["overall"]["accuracy"] == pytest.approx((tp + tn) / count)
    section = _section(page, "operating-point")
    assert f"<td>true malignant</td><td>{op['fn']}</td><td>{op['tp']}</td>" in section
    assert f"{tp / (tp + fn):.4f}" in section
    # Calibration: every evaluated image in one bin, ECE from TFMA's buckets.
    calibration = content["calibration"]
    assert sum(b["count"] for b in calibration["bins"]) == count
    assert f"{calibration['expected_calibration_error']:.4f}" in _section(page, "calibration")
    # ROC from TFMA's matrices; its endpoints are the trivial thresholds.
    roc = content["curves"]["roc"]
    assert roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]
    assert all(a <= b for a, b in zip(roc, roc[1:], strict=False))


def test_report_slices_and_patients_are_tfmas(first_run, report):
    by_slice = {}
    for record in tfma.load_metrics(first_run["summary"]["evaluation_uri"]):
        keys = record.slice_key.single_slice_keys
        if len(keys) == 1:
            value = getattr(keys[0], keys[0].WhichOneof("kind"))
            value = value.decode() if isinstance(value, bytes) else str(value)
            by_slice[(keys[0].column, value)] = {
                kv.key.name: kv.value.double_value.value
                for kv in record.metric_keys_and_values
                if kv.key.HasField("example_weighted")
            }
    content = report["json"]
    for column in (features.MAGNIFICATION_KEY, features.SUBTYPE_KEY):
        assert content["slices"][column], column
        for row in content["slices"][column]:
            assert row["example_count"] == by_slice[(column, row["value"])]["example_count"]
    patients = content["patients"]["rows"]
    assert len(patients) >= 2
    for row in patients:
        tfma_patient = by_slice[(features.PATIENT_ID_KEY, row["patient_id"])]
        assert row["score"] == pytest.approx(tfma_patient["mean_prediction"], abs=1e-12)
        assert row["images"] == tfma_patient["example_count"]
        assert f"<td>{row['patient_id']}</td>" in _section(report["html"], "patients")
    assert content["patients"]["aggregate"]["patients"] == len(patients)


def test_report_data_lineage_and_blessing(first_run, demo_data, report):
    content = report["json"]
    for split in features.SPLITS:
        files = glob.glob(os.path.join(demo_data, "span-1", split, "*.gz"))
        labels = [
            tf.train.Example.FromString(r).features.feature[features.LABEL_KEY].int64_list.value[0]
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator()
        ]
        balance = content["class_balance"][split]
        assert (balance["benign"], balance["malignant"]) == (labels.count(0), labels.count(1))
    assert content["data"]["span"] == 1
    assert content["model"]["backbone"] == "mobilenet_v2"
    assert content["model"]["weights_source"]
    assert content["model"]["hyperparameters"]["image_size"] == 96
    assert content["model"]["hyperparameters"]["head_refit"] is True  # the default
    eval_balance = content["class_balance"]["eval"]  # ... so the card says what it learned from
    refit = content["model"]["refit_images_per_class"]
    assert refit == {k: eval_balance[k] for k in features.LABEL_NAMES}
    card = _section(report["html"], "model-card")
    assert "refitted on these and the eval split" in card
    fitted_on = content["model"]["calibration_fitted_on"]  # the training metadata's words
    assert fitted_on.startswith("out-of-fold logits (") and fitted_on in card
    validation = tfma.load_validation_result(first_run["summary"]["evaluation_uri"])
    blessing = content["blessing"]
    assert blessing["validation_ok"] == validation.validation_ok == first_run["summary"]["blessed"]
    assert blessing["blessed"] is True
    assert any("auc >= 0.6" in " ".join(r["rules"]) for r in blessing["rules"])
    assert "BLESSED" in _section(report["html"], "blessing")


def test_charts_are_matplotlib_pngs_with_each_series_drawn():
    flat = charts.Series("half", [(0.0, 0.5), (1.0, 0.5)], color="#ff0000")
    dots = charts.Series("dots", [(0.25, 0.9)], color="#00ff00", markers=True, sizes=[6.0])
    png = charts.unit_chart("t", "x", "y", [flat, dots], diagonal="chance")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape == (400, 420, 3)
    red = np.argwhere((image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60))
    green = np.argwhere((image[..., 1] > 200) & (image[..., 0] < 60) & (image[..., 2] < 60))
    # The y = 0.5 line: one band of rows; the dot at y = 0.9 above it, at x = 0.25 left of
    # the line's middle (the legend's swatches sit low on the right, below both).
    line_rows = red[red[:, 1] < red[:, 1].min() + 50][:, 0]
    assert line_rows.max() - line_rows.min() <= 4
    upper_green = green[green[:, 0] < line_rows.min()]
    assert len(upper_green) > 20
    assert upper_green[:, 1].mean() < red[:, 1].mean()


def test_the_kfp_ui_summary_gives_the_candidate_auc_with_its_interval_over_patients():
    from components.eval_report import component

    built = {
        "blessing": {"blessed": False, "candidate_auc": 0.5942, "has_baseline": False},
        "overall": {"auc": 0.5942},
        "auc_interval_over_patients": [0.2926, 0.9307],
    }
    built["blessing"]["failures"] = []
    text = component.ui_summary(built, "/out/report")
    assert "- candidate AUC: 0.5942 (95% interval over patients 0.293-0.931)" in text
    built["auc_interval_over_patients"] = None
    assert "- candidate AUC: 0.5942\n" in component.ui_summary(built, "/out/report")
