import pytest

from llm_assets.resources.landing import DropNameError, Landing, drop_key
from llm_assets.objects import LocalObjects


def test_plain_names_are_their_own_key():
    assert drop_key("t0_mixture.jsonl") == "t0_mixture.jsonl"


def test_other_names_get_a_slug_and_a_stable_hash():
    a, b = drop_key("my data (v2).jsonl"), drop_key("my data [v2].jsonl")
    assert a.startswith("my_data_v2_.jsonl-") and a != b and a == drop_key("my data (v2).jsonl")


@pytest.mark.parametrize("name, why", [("../etc/passwd.jsonl", "path separators"), ("a/b.jsonl", "path separators"),
                                       ("a\\b.jsonl", "path separators"), ("..jsonl", "'..'"), ("bad\nname.jsonl", "control character"),
                                       ("tab\tname.csv", "control character")])
def test_dangerous_names_are_refused(name, why):
    with pytest.raises(DropNameError, match=why):
        drop_key(name)


def test_scan_skips_in_progress_and_hidden_files_and_reports_refusals(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    for name in ("a.jsonl", "b.csv", ".hidden.jsonl", "c.jsonl.tmp", "c.jsonl.part", "a.jsonl.mapping.yaml", "notes.txt", "x\x01.jsonl"):
        (sft / name).write_text("{}")
    (sft / "nested").mkdir()
    (sft / "nested" / "d.jsonl").write_text("{}")
    scan = Landing(LocalObjects(tmp_path)).scan("sft")
    assert [f.key for f in scan.files] == ["a.jsonl", "b.csv"]
    refused = dict(scan.refused)
    assert "unsupported file type" in refused["notes.txt"]
    assert "control character" in refused["x\x01.jsonl"]
    assert "path separators" in refused["nested/d.jsonl"]


def test_find_names_what_is_there(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "a.jsonl").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no file .* maps to drop 'b.jsonl' \(files there: a.jsonl\)"):
        Landing(LocalObjects(tmp_path)).find("sft", "b.jsonl")


def test_mapping_override_is_read_and_validated(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "a.jsonl").write_text("{}")
    zone = Landing(LocalObjects(tmp_path))
    f = zone.find("sft", "a.jsonl")
    assert zone.mapping_override(f) == {}
    (tmp_path / "sft" / "a.jsonl.mapping.yaml").write_text("format: alpaca\ncolumns: {output: answer}\n")
    assert zone.mapping_override(f) == {"format": "alpaca", "columns": {"output": "answer"}}
    (tmp_path / "sft" / "a.jsonl.mapping.yaml").write_text("fromat: alpaca\n")
    with pytest.raises(ValueError, match="only 'format' and 'columns'"):
        zone.mapping_override(f)


LONG_NAME = "a" * 244 + ".jsonl"  # 250 bytes: a valid name with no room for ".mapping.yaml" after it


def test_a_250_byte_name_is_scanned_and_has_a_short_sidecar(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / LONG_NAME).write_text('{"q": "p", "a": "c"}\n')
    zone = Landing(LocalObjects(tmp_path))
    (landed,) = zone.scan("sft").files
    assert landed.name == LONG_NAME and len(landed.key.encode()) < 200
    assert zone.mapping_override(landed) == {}  # no sidecar: no crash on a name too long to exist
    (sft / f"{landed.key}.mapping.yaml").write_text("format: prompt_completion\ncolumns: {prompt: q, completion: a}\n")
    assert zone.mapping_override(zone.find("sft", landed.key)) == {"format": "prompt_completion", "columns": {"prompt": "q", "completion": "a"}}
    assert [f.name for f in zone.scan("sft").files] == [LONG_NAME]  # the sidecar is not a drop


def test_a_name_that_still_fits_keeps_its_sidecar_beside_it(tmp_path):
    name = "b" * 236 + ".jsonl"  # 242 bytes + ".mapping.yaml" = 255: the longest name with a sidecar beside it
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / name).write_text("{}")
    (tmp_path / "sft" / (name + ".mapping.yaml")).write_text("format: alpaca\n")
    zone = Landing(LocalObjects(tmp_path))
    (landed,) = zone.scan("sft").files
    assert zone.mapping_override(landed) == {"format": "alpaca"}
