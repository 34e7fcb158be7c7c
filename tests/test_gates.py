"""Each data gate on hand-made artifacts: it raises naming the feature, or lets data pass."""

import json
import os

import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts

from components import anomalies_gate, baseline_statistics, drift_gate, patient_leakage_gate
from modules import features
from pipeline import configs

SCHEMA = tfdv.load_schema_text(configs.SCHEMA_FILE)


def rows(n: int, **overrides) -> pd.DataFrame:
    """n examples as preprocessing writes them, with numbers spread like real tiles."""
    base = {
        features.IMAGE_KEY: [b"\x89PNG..."] * n,
        features.LABEL_KEY: [i % 2 for i in range(n)],
        features.PATIENT_ID_KEY: [f"p{i % 7}".encode() for i in range(n)],
        features.SLIDE_ID_KEY: [f"p{i % 7}AB".encode() for i in range(n)],
        features.SOURCE_KEY: [f"x/{i}.png".encode() for i in range(n)],
        features.SUBTYPE_KEY: [b"DC"] * n,
        features.SOURCE_FORMAT_KEY: [b"PNG"] * n,
        features.MAGNIFICATION_KEY: [100] * n,
        features.HEIGHT_KEY: [460] * n,
        features.WIDTH_KEY: [700] * n,
        features.STAIN_HEMATOXYLIN_KEY: [0.20 + 0.001 * (i % 40) for i in range(n)],
        features.STAIN_EOSIN_KEY: [0.05 + 0.001 * (i % 30) for i in range(n)],
        features.TISSUE_FRACTION_KEY: [0.5 + 0.01 * (i % 30) for i in range(n)],
        features.SHARPNESS_KEY: [0.002 + 0.0001 * (i % 20) for i in range(n)],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def statistics_artifact(tmp_path, name: str, frame: pd.DataFrame):
    artifact = standard_artifacts.ExampleStatistics()
    artifact.uri = str(tmp_path / name)
    artifact.split_names = artifact_utils.encode_split_names(["train"])
    split_dir = os.path.join(artifact.uri, "Split-train")
    os.makedirs(split_dir)
    stats = tfdv.generate_statistics_from_dataframe(frame)
    with open(os.path.join(split_dir, "FeatureStats.pb"), "wb") as f:
        f.write(stats.SerializeToString())
    return artifact


def anomalies_artifact(tmp_path, per_split: dict[str, anomalies_pb2.Anomalies]):
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = artifact_utils.encode_split_names(list(per_split))
    for split, proto in per_split.items():
        os.makedirs(os.path.join(artifact.uri, f"Split-{split}"))
        with open(os.path.join(artifact.uri, f"Split-{split}", "SchemaDiff.pb"), "wb") as f:
            f.write(proto.SerializeToString())
    return artifact


# --- AnomaliesGate against the curated schema ---


def test_curated_schema_accepts_what_preprocessing_writes():
    stats = tfdv.generate_statistics_from_dataframe(rows(50))
    assert not tfdv.validate_statistics(stats, SCHEMA).anomaly_info


@pytest.mark.parametrize(
    "frame,feature",
    [
        (rows(20, label=[2] * 20), features.LABEL_KEY),
        (rows(20, magnification=[4000] * 20), features.MAGNIFICATION_KEY),
        (rows(20, height=[8] * 20), features.HEIGHT_KEY),
        (rows(20, tissue_fraction=[1.5] * 20), features.TISSUE_FRACTION_KEY),
        (rows(20, source_format=[b"PSD"] * 20), features.SOURCE_FORMAT_KEY),
        (rows(20).drop(columns=[features.STAIN_EOSIN_KEY]), features.STAIN_EOSIN_KEY),
        (rows(20).drop(columns=[features.IMAGE_KEY]), features.IMAGE_KEY),
        (rows(20, label=[f"{i % 2}" for i in range(20)]), features.LABEL_KEY),  # ill-typed
    ],
)
def test_anomalies_gate_stops_a_span_that_breaks_the_schema(tmp_path, frame, feature):
    found = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(frame), SCHEMA)
    artifact = anomalies_artifact(tmp_path, {"train": found, "eval": anomalies_pb2.Anomalies()})
    with pytest.raises(RuntimeError, match=rf"run stopped: train: .*{feature}: "):
        anomalies_gate.check_anomalies(artifact)


def test_anomalies_gate_passes_clean_splits(tmp_path):
    clean = {s: anomalies_pb2.Anomalies() for s in features.SPLITS}
    anomalies_gate.check_anomalies(anomalies_artifact(tmp_path, clean))


def test_new_patient_ids_and_paths_are_no_anomaly():
    """Ids and paths have no value domain: a new span's patients are not an anomaly."""
    frame = rows(20, patient_id=[b"new-patient"] * 20, source=[b"elsewhere/1.png"] * 20)
    stats = tfdv.generate_statistics_from_dataframe(frame)
    assert not tfdv.validate_statistics(stats, SCHEMA).anomaly_info


# --- PatientLeakageGate ---


def examples_artifact(tmp_path, patients_per_split: dict[str, list[str]]):
    artifact = standard_artifacts.Examples()
    artifact.uri = str(tmp_path / "examples")
    artifact.split_names = artifact_utils.encode_split_names(list(patients_per_split))
    for split, ids in patients_per_split.items():
        os.makedirs(os.path.join(artifact.uri, f"Split-{split}"))
        path = os.path.join(artifact.uri, f"Split-{split}", "data.gz")
        with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
            for patient in ids:
                example = tf.train.Example()
                value = example.features.feature[features.PATIENT_ID_KEY].bytes_list.value
                value.append(patient.encode())
                w.write(example.SerializeToString())
    return artifact


def test_leakage_gate_groups_slides_of_one_patient(tmp_path):
    artifact = examples_artifact(
        tmp_path, {"train": ["14-21998AB", "14-100"], "eval": ["15-7"], "test": ["14-21998EF"]}
    )
    as_is = patient_leakage_gate.patients_by_split(artifact, "as-is")
    patient_leakage_gate.check_leakage(as_is)  # two slide ids: no leak under as-is
    grouped = patient_leakage_gate.patients_by_split(artifact, "breakhis")
    with pytest.raises(RuntimeError, match=r"1 patient\(s\) .*14-21998 in test, train"):
        patient_leakage_gate.check_leakage(grouped)


def test_find_leaking_patients():
    leaks = patient_leakage_gate.find_leaking_patients(
        {"train": {"a", "b"}, "eval": {"c"}, "test": {"b", "c", "d"}}
    )
    assert leaks == {"b": ["test", "train"], "c": ["eval", "test"]}


# --- DriftGate ---

THRESHOLDS = json.loads(configs.drift_thresholds())


def shifted(n: int) -> pd.DataFrame:
    """Another lab: stronger eosin, out-of-focus scanner."""
    base = rows(n)
    return rows(
        n,
        stain_eosin=list(base[features.STAIN_EOSIN_KEY] + 0.2),
        sharpness=list(base[features.SHARPNESS_KEY] * 0.2),
    )


def test_drift_gate_stops_a_shifted_span_naming_features_and_distances(tmp_path):
    baseline = statistics_artifact(tmp_path, "baseline", rows(200))
    current = statistics_artifact(tmp_path, "current", shifted(200))
    with pytest.raises(RuntimeError) as raised:
        drift_gate.check_drift(current, baseline, SCHEMA, THRESHOLDS, set(), "train")
    message = str(raised.value)
    assert "stain_eosin: jensen_shannon_divergence" in message
    assert "sharpness: jensen_shannon_divergence" in message
    assert "stain_hematoxylin" not in message.split("HISTO_ACCEPT_DRIFT")[0]
    assert "HISTO_ACCEPT_DRIFT=sharpness,stain_eosin" in message


def test_drift_gate_passes_the_same_distribution_and_reports_distances(tmp_path):
    baseline = statistics_artifact(tmp_path, "baseline", rows(200))
    current = statistics_artifact(tmp_path, "current", rows(300))
    report = drift_gate.check_drift(current, baseline, SCHEMA, THRESHOLDS, set(), "train")
    measured = {d["feature"]: d for d in report["features"]}
    assert set(measured) == set(THRESHOLDS)
    assert all(d["distance"] <= d["threshold"] for d in measured.values())


def test_an_accepted_shift_passes_and_is_reported_as_accepted(tmp_path):
    baseline = statistics_artifact(tmp_path, "baseline", rows(200))
    current = statistics_artifact(tmp_path, "current", shifted(200))
    accepted = drift_gate.parse_accepted("stain_eosin, sharpness")
    report = drift_gate.check_drift(current, baseline, SCHEMA, THRESHOLDS, accepted, "train")
    flagged = {d["feature"] for d in report["features"] if d["accepted"]}
    assert flagged == {"stain_eosin", "sharpness"}
    with pytest.raises(RuntimeError, match="sharpness"):  # accepting one is not accepting all
        drift_gate.check_drift(current, baseline, SCHEMA, THRESHOLDS, {"stain_eosin"}, "train")


def test_drift_gate_without_a_blessed_model_passes(tmp_path):
    current = statistics_artifact(tmp_path, "current", shifted(50))
    report = drift_gate.check_drift(current, None, SCHEMA, THRESHOLDS, set(), "train")
    assert report["baseline"] is None


# --- BaselineStatisticsStrategy on a hand-made lineage in ML Metadata ---


def test_baseline_is_the_statistics_of_the_data_behind_the_latest_blessed_model():
    config = metadata_store_pb2.ConnectionConfig()
    config.fake_database.SetInParent()
    store = metadata_store.MetadataStore(config)

    created = {}

    def put(cls, name, **custom):
        artifact = cls()
        artifact.uri = f"/fake/{name}"
        for key, value in custom.items():
            artifact.set_int_custom_property(key, value)
        type_id = store.put_artifact_type(artifact.artifact_type)
        artifact.type_id = type_id
        artifact.artifact_type.id = type_id
        [artifact.id] = store.put_artifacts([artifact.mlmd_artifact])
        created[name] = artifact
        return artifact

    def run(type_name, inputs, outputs):
        type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name=type_name))
        [execution_id] = store.put_executions([metadata_store_pb2.Execution(type_id=type_id)])
        events = [
            metadata_store_pb2.Event(artifact_id=a.id, execution_id=execution_id, type=kind)
            for kind, group in (
                (metadata_store_pb2.Event.INPUT, inputs),
                (metadata_store_pb2.Event.OUTPUT, outputs),
            )
            for a in group
        ]
        store.put_events(events)

    statistics = []
    for span in (1, 2):  # span 1 trains a blessed model; span 2 trains one that is not
        raw = put(standard_artifacts.Examples, f"raw{span}")
        stats = put(standard_artifacts.ExampleStatistics, f"stats{span}")
        pre_transform = put(standard_artifacts.ExampleStatistics, f"pre_transform{span}")
        transformed = put(standard_artifacts.Examples, f"transformed{span}")
        model = put(standard_artifacts.Model, f"model{span}")
        run("tfx.components.statistics_gen.component.StatisticsGen", [raw], [stats])
        run("tfx.components.transform.component.Transform", [raw], [transformed, pre_transform])
        run("tfx.components.trainer.component.Trainer", [transformed], [model])
        statistics += [stats, pre_transform]
    blessing = put(
        standard_artifacts.ModelBlessing,
        "blessing1",
        current_model_id=created["model1"].id,
        blessed=1,
    )
    not_blessed = put(
        standard_artifacts.ModelBlessing,
        "blessing2",
        current_model_id=created["model2"].id,
        blessed=0,
    )

    strategy = baseline_statistics.BaselineStatisticsStrategy()
    resolved = strategy.resolve_artifacts(
        store,
        {
            "model": [created["model1"], created["model2"]],
            "model_blessing": [blessing, not_blessed],
            "statistics": statistics,
        },
    )
    assert [a.uri for a in resolved["model"]] == ["/fake/model1"]
    assert [a.uri for a in resolved["statistics"]] == ["/fake/stats1"]

    before_any_blessing = strategy.resolve_artifacts(
        store, {"model": [created["model2"]], "model_blessing": [], "statistics": statistics}
    )
    assert before_any_blessing == {"model": [], "model_blessing": [], "statistics": []}


def test_the_checked_in_schema_is_what_the_documented_command_regenerates(tmp_path):
    from pipeline.schema import curate

    stats_file = tmp_path / "FeatureStats.pb"
    stats_file.write_bytes(tfdv.generate_statistics_from_dataframe(rows(60)).SerializeToString())
    output = tmp_path / "schema.pbtxt"
    assert curate.main(["--statistics", str(stats_file), "--output", str(output)]) == 0
    assert tfdv.load_schema_text(str(output)) == SCHEMA


def test_every_format_preprocessing_accepts_passes_the_schema():
    from preprocessing.image_io import SOURCE_FORMATS

    domain = tfdv.get_feature(SCHEMA, features.SOURCE_FORMAT_KEY).string_domain.value
    assert set(domain) == set(SOURCE_FORMATS) and "GIF" in domain
