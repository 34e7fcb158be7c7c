"""The quality benchmark's protocol: what its figures rest on (no images needed)."""

import os

import numpy as np
import pytest

from benchmarks import breakhis_quality as bq
from modules.metrics import patient_bootstrap_interval


def _items(images_per_patient: dict[str, tuple[int, int]]) -> list[bq.Item]:
    """{patient: (label, images)} -> Items with distinct paths."""
    return [
        bq.Item(f"{patient}/{k}.png", b"", label, patient)
        for patient, (label, count) in images_per_patient.items()
        for k in range(count)
    ]


COHORT = {f"B{k}": (0, 2 + k % 5) for k in range(8)} | {f"M{k}": (1, 1 + k % 7) for k in range(14)}


@pytest.mark.parametrize("seed", [0, 1])
def test_folds_are_patient_disjoint_stratified_and_validate_inside_training(seed):
    items = _items(COHORT)
    folds = bq.folds_of(items, 5, seed)
    tested = [i.path for fold in folds for i in fold.test]
    assert sorted(tested) == sorted(i.path for i in items)  # every image scored once
    for fold in folds:
        train, validation, test = (
            {i.patient for i in part} for part in (fold.train, fold.validation, fold.test)
        )
        assert not (train & validation or train & test or validation & test)
        assert {i.label for i in fold.validation} == {0, 1}
        assert {i.label for i in fold.test} == {0, 1}  # 8 benign patients over 5 folds
        assert train | validation | test == set(COHORT)


def test_sample_weights_balance_classes_and_optionally_patients():
    items = _items({"B0": (0, 6), "B1": (0, 2), "M0": (1, 1), "M1": (1, 3)})
    labels = np.array([i.label for i in items])
    for per_patient in (False, True):
        weights = bq.sample_weights(items, per_patient)
        assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())
        assert weights.sum() == pytest.approx(len(items))
    by_patient: dict[str, float] = {}
    for item, weight in zip(items, bq.sample_weights(items, True), strict=True):
        by_patient[item.patient] = by_patient.get(item.patient, 0.0) + weight
    assert by_patient["B0"] == pytest.approx(by_patient["B1"])  # 6 images weigh as 2
    assert by_patient["M0"] == pytest.approx(by_patient["M1"])
    image_weights = bq.sample_weights(items, False)
    assert len(set(np.round(image_weights[labels == 0], 9))) == 1  # per image: all alike


def test_by_subtype_averages_patients_over_their_images_then_seeds():
    seed_0 = [
        bq.Scores([0, 0, 1], ["B0", "B0", "M0"], [0.2, 0.6, 0.9], 0.5),
        bq.Scores([0], ["B1"], [0.7], 0.5),
    ]
    seed_1 = [bq.Scores([0, 0, 1, 0], ["B0", "B0", "M0", "B1"], [0.1, 0.1, 0.4, 0.3], 0.35)]
    rows = bq.by_subtype([seed_0, seed_1], {"B0": "F", "B1": "F", "M0": "DC"})
    assert [(r["label"], r["subtype"], r["patients"], r["images"]) for r in rows] == [
        (0, "F", 2, 3),
        (1, "DC", 1, 1),
    ]
    benign, malignant = rows
    # B0: 0.4 then 0.1 (right both times); B1: 0.7 (wrong) then 0.3 (right).
    assert benign["mean_probability"] == pytest.approx(np.mean([0.25, 0.5]))
    assert benign["patients_called_right"] == pytest.approx(np.mean([1.0, 0.5]))
    # M0: 0.9 >= 0.5 right, 0.4 >= 0.35 right.
    assert malignant["mean_probability"] == pytest.approx(0.65)
    assert malignant["patients_called_right"] == 1.0


def test_the_pooled_aucs_get_intervals_over_patients_averaged_over_seeds():
    """Each seed's pooled images are resampled by patient (two folds pooled first); the
    table's bounds are the seeds' averaged; too few patients of a class: no interval."""
    rng = np.random.default_rng(1)

    def fold(patients, labels):
        n = 4
        return bq.Scores(
            [lab for lab in labels for _ in range(n)],
            [p for p in patients for _ in range(n)],
            list(rng.uniform(0.3, 0.7, n * len(patients)) + 0.2 * np.repeat(labels, n)),
            0.5,
        )

    seeds = [
        [fold(["B0", "M0", "B1"], [0, 1, 0]), fold(["M1", "B2", "M2"], [1, 0, 1])],
        [fold(["B0", "M1", "B2"], [0, 1, 0]), fold(["M0", "B1", "M2"], [1, 0, 1])],
    ]
    out = bq.summarize(seeds)
    expected = []
    for folds in seeds:
        labels = [v for s in folds for v in s.labels]
        probs = [v for s in folds for v in s.probabilities]
        patients = [p for s in folds for p in s.patients]
        expected.append(patient_bootstrap_interval(labels, probs, patients))
    assert out["image_auc"]["interval"] == pytest.approx(np.mean(expected, axis=0).tolist())
    assert out["patient_auc"]["interval"][0] <= out["patient_auc"]["mean"]
    one_benign = [[fold(["B0", "M0", "M1"], [0, 1, 1])]]
    assert "interval" not in bq.summarize(one_benign)["image_auc"]


def test_overlapping_tiles_add_a_tile_on_every_seam_of_the_recipes_grid():
    from modules import image_tiles

    size = 4
    image = np.random.default_rng(0).random((2 * size, 3 * size, 3)).astype(np.float32)
    grid = image_tiles.to_tiles(image, size, max_tiles=12).numpy()
    overlap = bq.overlapping_tiles(image, size, max_tiles=12).numpy()
    assert grid.shape == (6, size, size, 3) and overlap.shape == (15, size, size, 3)
    half = size // 2
    np.testing.assert_allclose(overlap[0], grid[0], atol=1e-6)  # the grid's tiles are kept
    np.testing.assert_allclose(overlap[2], grid[1], atol=1e-6)
    np.testing.assert_allclose(overlap[10], grid[3], atol=1e-6)  # second row of the grid
    np.testing.assert_allclose(overlap[1], image[:size, half : half + size], atol=1e-6)
    np.testing.assert_allclose(overlap[5], image[half : half + size, :size], atol=1e-6)


def test_tissue_composition_is_a_log_softmax_over_pathmnists_nine_classes_per_tile():
    rng = np.random.default_rng(1)
    pooled, kernel, bias = rng.random((3, 5)), rng.normal(size=(5, 24)), rng.normal(size=24)
    logits = (pooled @ kernel + bias)[:, : bq.PATHMNIST_CLASSES]
    per_tile = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    composition = bq.tissue_log_probabilities(pooled, kernel, bias)
    assert composition.shape == (bq.PATHMNIST_CLASSES,)
    np.testing.assert_allclose(composition, np.log(per_tile).mean(axis=0), rtol=1e-9)
    # The skin and blood classes (9..23) play no part: changing them changes nothing.
    kernel[:, bq.PATHMNIST_CLASSES :] += 100.0
    np.testing.assert_allclose(bq.tissue_log_probabilities(pooled, kernel, bias), composition)


def test_probe_features_join_parts_each_with_its_own_backbone():
    assert bq.feature_parts("tiles", "mobilenet_v2") == [("tiles", "mobilenet_v2")]
    assert bq.feature_parts("tiles:mobilenet_v2+tiles:densenet121", "x") == [
        ("tiles", "mobilenet_v2"),
        ("tiles", "densenet121"),
    ]
    assert bq.feature_parts("tiles+pathmnist", "mobilenet_v2") == [
        ("tiles", "mobilenet_v2"),
        ("pathmnist", "mobilenet_v2"),
    ]
    for source, _, _ in bq.PROBE_ARMS.values():  # every arm's parts are known kinds
        bq.feature_parts(source, "mobilenet_v2")
    with pytest.raises(ValueError, match="unknown feature kind 'tile'"):
        bq.feature_parts("tile+pathmnist", "mobilenet_v2")


def test_external_features_are_matched_to_images_by_real_path(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    items = _items({"B0": (0, 2), "M0": (1, 1)})
    for item in items:
        item.path = str(images / item.path.replace("/", "_"))
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    archive = tmp_path / "features.npz"
    # the file spells the same folder another way: matched by real path, in any order
    stored = [os.path.join(str(images), "..", "images", os.path.basename(i.path)) for i in items]
    np.savez(archive, paths=np.array(stored[::-1]), features=features[::-1])

    bank = bq.FeatureBank(224, 6, str(archive))
    np.testing.assert_array_equal(bank.external("ignored", items), features)
    np.testing.assert_array_equal(bank.external("ignored", items[1:2]), features[1:2])

    stranger = bq.Item(str(images / "other.png"), b"", 0, "B9")
    with pytest.raises(ValueError, match=r"features\.npz: no features for 1 of 2 images.*other"):
        bank.external("ignored", [items[0], stranger])
    with pytest.raises(ValueError, match="need --external-features"):
        bq.FeatureBank(224, 6).external("ignored", items)


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"paths": np.array(["a.png"])}, "not an .npz with arrays 'paths' and 'features'"),
        ({"paths": np.array(["a.png"]), "features": np.ones(3)}, r"must be \[n, D\]"),
        (
            {"paths": np.array(["a.png"]), "features": np.ones((2, 3))},
            r"one row per path; got \(2, 3\) for 1 paths",
        ),
        (
            {"paths": np.array(["a.png"]), "features": np.full((1, 3), np.nan)},
            "not finite for 1 images, e.g. a.png",
        ),
    ],
)
def test_a_bad_external_features_file_is_named_with_its_problem(tmp_path, arrays, problem):
    archive = tmp_path / "bad.npz"
    np.savez(archive, **arrays)
    with pytest.raises(ValueError, match=rf"bad\.npz: .*{problem}"):
        bq.load_external_features(str(archive))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz: not an .npz"):
        bq.load_external_features(str(tmp_path / "text.npz"))


def test_a_feature_file_is_written_whole_or_not_at_all(tmp_path):
    from PIL import Image

    from benchmarks import feature_files

    good = [tmp_path / f"{k}.png" for k in range(2)]
    for k, path in enumerate(good):
        Image.new("RGB", (4, 3), (k, 2 * k, 3 * k)).save(path)
    output = tmp_path / "out" / "features.npz"
    feature_files.write([str(p) for p in good], lambda rgb: rgb.mean(axis=(0, 1)), str(output))
    by_path = bq.load_external_features(str(output))
    np.testing.assert_array_equal(by_path[os.path.realpath(good[1])], [1, 2, 3])

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    again = tmp_path / "again.npz"
    with pytest.raises(SystemExit, match=r"broken\.png: could not compute features"):
        feature_files.write([str(good[0]), str(broken)], lambda rgb: rgb.mean(), str(again))
    assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "broken.png", "out"]


def test_threshold_adjacency_statistics_count_each_masked_pixels_masked_neighbours():
    from benchmarks import texture_features

    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True  # a 3x3 block: 4 corners with 3 neighbours, 4 edges with 5, 1 with 8
    expected = np.zeros(9)
    expected[[3, 5, 8]] = [4 / 9, 4 / 9, 1 / 9]
    np.testing.assert_allclose(texture_features.adjacency_statistics(mask), expected)
    features = texture_features.texture_features(
        np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    )
    assert features.shape == (306,) and np.isfinite(features).all()


def test_nuclear_morphology_counts_and_sizes_drawn_nuclei():
    from benchmarks import nuclei_features

    def tissue_with_nuclei(radius: int) -> np.ndarray:
        """Pink stroma with a 5 x 4 grid of dark purple discs of the given radius."""
        rgb = np.full((160, 200, 3), (225, 170, 205), dtype=np.uint8)
        rows, cols = np.mgrid[:160, :200]
        for row in range(20, 160, 40):
            for col in range(20, 200, 40):
                disc = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
                rgb[disc] = (70, 40, 120)
        return rgb

    names = nuclei_features.SUMMARY_NAMES
    small, large = (
        dict(zip(names, nuclei_features.nuclei_features(tissue_with_nuclei(r)), strict=True))
        for r in (4, 8)
    )
    for radius, figures in ((4, small), (8, large)):
        assert figures["nuclei_per_kpx_tissue"] == pytest.approx(1000 * 20 / (160 * 200))
        assert np.exp(figures["log_area_p50"]) == pytest.approx(np.pi * radius**2, rel=0.2)
        assert figures["log_area_sd"] < 0.1  # equal discs: no pleomorphism
    assert large["nuclear_fraction_of_tissue"] > 3 * small["nuclear_fraction_of_tissue"]
    blank = nuclei_features.nuclei_features(np.full((40, 50, 3), 240, dtype=np.uint8))
    assert blank.shape == (len(names),) and np.isfinite(blank).all()


def test_tile_features_fill_the_cache_the_one_scale_recipe_arms_read(monkeypatch):
    """The probe-tiles arms and the one-scale recipe arms share one set of native-tile
    features; the two-scale arms (the default recipe among them) have their own."""
    import io

    import tensorflow as tf
    from PIL import Image

    from modules.trainer import recipe

    def png(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 255, (24, 36, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    items = [bq.Item(f"p{k}.png", png(k), k % 2, f"P{k}") for k in range(3)]
    stand_in = tf.keras.Sequential([tf.keras.layers.GlobalAveragePooling2D()])
    bank = bq.FeatureBank(size=12, max_tiles=6)
    monkeypatch.setattr(bank, "network", lambda backbone: stand_in)

    features = bank.tiles("mobilenet_v2", items)

    assert features.shape == (3, 3) and len(set(map(tuple, features.round(6)))) == 3
    for arm in ("recipe-previous", "recipe-one-scale"):
        shared = bank.cache("mobilenet_v2", True, recipe.scales_of(bq.ARM_SETTINGS[arm]))
        assert len(shared) == 3  # every image's feature is there for the recipe arm
    assert bank.cache("mobilenet_v2", True, recipe.scales_of({"tile_scales": "1.0,1.5"})) == {}


def test_the_recipe_arm_trains_the_measured_candidate_and_recipe_previous_the_old_defaults():
    """``recipe`` is the Trainer's defaults: the candidate the README measured, calibrated
    out of fold with each patient weighing the same; ``recipe-eval-calibration`` is that
    candidate exactly (so its figures are the same models'), ``recipe-image-weighted-
    calibration`` the default before the patient weights, ``recipe-previous`` keeps the
    defaults before the candidate."""
    from modules.trainer.hyperparameters import hyperparameters
    from pipeline import settings

    def hp(arm: str) -> dict:
        return hyperparameters({**settings.training_config({}), **bq.ARM_SETTINGS[arm]})

    current, candidate = hp("recipe"), hp("recipe-eval-calibration")
    previous = hp("recipe-previous")
    assert candidate == hp("recipe-multiscale-lr-3e-4-probe-like-head")
    calibration = {"calibration_folds", "calibration_weights"}
    assert {key for key in current if current[key] != candidate[key]} == calibration
    assert current["calibration_folds"] > 1 and candidate["calibration_folds"] == 1
    assert (current["calibration_weights"], candidate["calibration_weights"]) == (
        "patient",
        "image",
    )
    image_weighted = hp("recipe-image-weighted-calibration")
    assert {key for key in current if current[key] != image_weighted[key]} == {
        "calibration_weights"
    }
    assert {key: previous[key] for key in bq.PREVIOUS_DEFAULTS} == bq.PREVIOUS_DEFAULTS
    changed = {key for key in previous if previous[key] != current[key]}
    assert changed == set(bq.PREVIOUS_DEFAULTS)
