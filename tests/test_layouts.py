import os

import pytest

from histo_testlib import png_bytes, write
from preprocessing import layouts


@pytest.mark.parametrize(
    "rel, expected",
    [
        (
            "SOB_M_DC-14-16716-400-010.png",
            {"label": 1, "patient_id": "14-16716", "magnification": 400, "subtype": "DC"},
        ),
        (
            "BreaKHis_v1/benign/SOB/adenosis/SOB_B_A-14-22549AB-40-001.png",
            {"label": 0, "patient_id": "14-22549AB", "magnification": 40, "subtype": "A"},
        ),
        (
            "malignant/SOB_M_LC_14-15570C_3.png",
            {"label": 1, "patient_id": "14-15570C", "magnification": 0, "subtype": "LC"},
        ),
        ("10253/1/10253_idx5_x1001_y1001_class1.png", {"label": 1, "patient_id": "10253"}),
        ("10253/0/10253_idx5_x51_y1251_class0.png", {"label": 0, "patient_id": "10253"}),
        ("benign/patient-7/tile_001.png", {"label": 0, "patient_id": "patient-7"}),
        ("data/1/p9/a.jpg", {"label": 1, "patient_id": "p9"}),
    ],
)
def test_parse_path_auto_detects_each_layout(rel, expected):
    assert layouts.parse_path(rel) == expected


@pytest.mark.parametrize(
    "rel, message",
    [
        ("benign/tile.png", "patient cannot be determined"),
        ("random/tile.png", "no class folder"),
        ("benign/SOB_M_DC-14-16716-400-010.png", "folder says benign"),
        ("10253/0/10253_idx5_x1_y1_class1.png", "disagrees"),
    ],
)
def test_parse_path_explains_what_is_missing(rel, message):
    with pytest.raises(layouts.LayoutError, match=message):
        layouts.parse_path(rel)


def test_selected_layout_is_strict():
    with pytest.raises(layouts.LayoutError, match="not a BreakHis name"):
        layouts.parse_path("benign/p1/tile.png", layout="breakhis")
    assert layouts.parse_path("benign/p1/tile.png", layout="class-folders")["patient_id"] == "p1"


def test_discover_applies_manifest_overrides_and_reports_unknowns(tmp_path):
    root = str(tmp_path)
    write(os.path.join(root, "benign", "p1", "a.png"), png_bytes())
    write(os.path.join(root, "loose", "b.png"), png_bytes())  # unknown unless the manifest says
    write(os.path.join(root, "loose", "c.png"), png_bytes())  # stays unknown
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,patient_id,magnification\n"
        "loose/b.png,malignant,p2,200\n"
        "benign/p1/a.png,1,p1-override,\n"
        "missing.png,0,p3,\n"
    )
    records, rejects = layouts.discover(root, manifest=str(manifest))
    by_source = {r.source: r for r in records}
    assert by_source["loose/b.png"].label == 1
    assert by_source["loose/b.png"].magnification == 200
    assert by_source["benign/p1/a.png"].patient_id == "p1-override"
    assert by_source["benign/p1/a.png"].label == 1
    reasons = {r.source: r.reason for r in rejects}
    assert "no class folder" in reasons["loose/c.png"]
    assert "not found" in reasons["missing.png"]


def test_manifest_errors_name_file_and_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id\na.png,maybe,p1\n")
    with pytest.raises(ValueError, match=r"m\.csv:2: unknown label 'maybe'"):
        layouts.read_manifest(str(manifest), str(tmp_path))
    manifest.write_text("path,label\na.png,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        layouts.read_manifest(str(manifest), str(tmp_path))


def test_real_breakhis_crops_parse(breakhis_crops):
    records, rejects = layouts.discover(breakhis_crops)
    assert len(records) == 78 and not rejects
    patients = {r.patient_id for r in records}
    assert len(patients) == 13
    for record in records:
        assert record.label == (1 if "_M_" in record.source else 0)
