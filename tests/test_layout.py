"""Work-dir paths are built from sanitised ids: nothing a video id or file name says can escape."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmasr.layout import WorkLayout, safe_id


@pytest.mark.parametrize(
    "raw",
    [
        "../../etc",
        "../../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "",
        "~root",
        "x\x00y",
        "Café talk 01.wav",
        "a b",
        "a_b",
    ],
)
def test_every_stage_path_of_a_hostile_id_stays_inside_the_work_dir(tmp_path: Path, raw: str):
    layout = WorkLayout(tmp_path / "work")
    for path in (
        layout.audio(raw),
        layout.captions(raw),
        layout.item_record(raw),
        layout.part("labels", raw),
    ):
        resolved = path.resolve()
        assert layout.root in resolved.parents, path
        assert "/" not in path.name and path.name.split(".")[0] == safe_id(raw)
    assert "." not in safe_id(raw) and safe_id(raw)


def test_sanitised_ids_do_not_collide():
    assert safe_id("a b") != safe_id("a_b")
    assert safe_id("abc") == "abc"  # clean ids are kept as they are


def test_abs_refuses_a_manifest_path_outside_the_work_dir(tmp_path: Path):
    layout = WorkLayout(tmp_path / "work")
    assert layout.abs("raw/x.flac") == layout.root / "raw" / "x.flac"
    with pytest.raises(ValueError, match="escapes the work dir"):
        layout.abs("../../etc/passwd")


def test_new_train_hours_counts_train_audio_beyond_the_last_full_training(tmp_path: Path):
    from tasks.checkpoints import new_train_hours, record_trained_on

    index = {"splits": {"train": {"audio_s": 7200.0}, "validation": {"audio_s": 360.0}}}
    assert new_train_hours(tmp_path, index) == 2.0  # never trained: all of it is new
    record_trained_on(tmp_path, index)
    assert new_train_hours(tmp_path, index) == 0.0
    grown = {"splits": {"train": {"audio_s": 7200.0 + 1800.0}}}
    assert new_train_hours(tmp_path, grown) == 0.5
    assert new_train_hours(tmp_path, {"splits": {}}) == 0.0  # fewer hours (data removed) never goes negative
