"""The Pusher never ships the same model twice: a candidate identical (graph and variables)
to a version already at the destination is recognised; any difference is a new version."""

import os

from components.pusher.dedup_executor import find_identical_version, saved_model_digest


def write_model(folder, graph=b"graph", variables=b"weights") -> str:
    os.makedirs(os.path.join(folder, "variables"))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(graph)
    with open(os.path.join(folder, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(variables)
    with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return str(folder)


def test_an_identical_model_is_found_among_the_pushed_versions(tmp_path):
    base = tmp_path / "serving"
    write_model(base / "1700000000", variables=b"old weights")
    write_model(base / "1700000100")
    candidate = write_model(tmp_path / "candidate")
    assert find_identical_version(str(base), candidate) == "1700000100"


def test_other_weights_or_another_graph_is_a_new_version(tmp_path):
    base = tmp_path / "serving"
    write_model(base / "1700000000")
    assert find_identical_version(str(base), write_model(tmp_path / "a", variables=b"new")) is None
    assert find_identical_version(str(base), write_model(tmp_path / "b", graph=b"other")) is None


def test_no_destination_or_no_saved_model_is_never_identical(tmp_path):
    candidate = write_model(tmp_path / "candidate")
    assert find_identical_version(str(tmp_path / "nothing yet"), candidate) is None
    os.makedirs(tmp_path / "serving" / "1700000000")  # a version folder without a model
    assert saved_model_digest(str(tmp_path / "serving" / "1700000000")) is None
    assert find_identical_version(str(tmp_path / "serving"), candidate) is None
