"""``renkei schemas list|show|export|check`` and the Schema Registry export behind it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from infra.cli import main
from schemas import registry
from schemas.catalogue import AVSC_ROOT, FULL_TRANSITIVE, catalogue


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_export_has_one_subject_per_schema_with_every_version_in_order():
    subjects = registry.export()
    assert {s.logical_name for s in subjects} == set(catalogue().by_name)
    for subject in subjects:
        versions = catalogue().by_name[subject.logical_name]
        assert subject.subject == "renkei." + versions[max(versions)].source["name"]  # RecordNameStrategy
        assert subject.config_body() == {"compatibility": FULL_TRANSITIVE}
        assert [v.version for v in subject.versions] == sorted(versions)
        for v in subject.versions:
            body = v.request_body()
            assert body["schemaType"] == "AVRO"
            assert json.loads(body["schema"]) == versions[v.version].source  # the file as written, docs and all
            assert v.fingerprint == versions[v.version].fingerprint.hex()


def test_export_to_a_folder_writes_the_registry_request_bodies(tmp_path, capsys):
    code, _, err = _run(capsys, "schemas", "export", "--out", str(tmp_path))
    assert code == 0 and "subjects" in err
    inquiry = tmp_path / "renkei.ProvisionInquiry"
    assert json.loads((inquiry / "config.json").read_text()) == {"compatibility": "FULL_TRANSITIVE"}
    v2 = json.loads((inquiry / "v2.json").read_text())
    assert v2.keys() == {"schema", "schemaType"}
    assert json.loads(v2["schema"]) == json.loads((AVSC_ROOT / "provision_inquiry" / "v2.avsc").read_text())
    assert sorted(p.name for p in inquiry.iterdir()) == ["config.json", "v1.json", "v2.json"]


def test_export_json_on_stdout(capsys):
    code, out, _ = _run(capsys, "schemas", "export")
    subjects = {s["subject"]: s for s in json.loads(out)["subjects"]}
    assert [v["version"] for v in subjects["renkei.RegistrationRequest"]["versions"]] == [1, 2]


def test_list_and_show(capsys):
    code, out, _ = _run(capsys, "schemas", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)["schemas"]}
    assert code == 0 and rows["provision_inquiry"]["versions"] == [1, 2]
    assert rows["provision_inquiry"]["message_types"] == ["provision.inquiry"]
    assert rows["provision_inquiry"]["latest_fingerprint"] == catalogue().latest["provision_inquiry"].fingerprint.hex()
    code, out, _ = _run(capsys, "schemas", "show", "renkei.ProvisionInquiry", "--version", "1")
    assert code == 0 and json.loads(out) == json.loads((AVSC_ROOT / "provision_inquiry" / "v1.avsc").read_text())
    code, out, _ = _run(capsys, "schemas", "show", "provision_inquiry", "--json")
    shown = json.loads(out)
    assert (shown["version"], shown["subject"]) == (2, "renkei.ProvisionInquiry")
    assert "logicalType" not in shown["canonical_form"]
    code, _, err = _run(capsys, "schemas", "show", "no_such_thing")
    assert code == 2 and "no schema named" in err
    code, _, err = _run(capsys, "schemas", "show", "provision_inquiry", "--version", "9")
    assert code == 2 and "no version 9" in err


def _latest(name: str) -> dict:
    return copy.deepcopy(catalogue().latest[name].source)


def test_check_accepts_a_field_with_a_default(tmp_path, capsys):
    proposed = _latest("provision_inquiry")
    proposed["fields"].append({"name": "channel_ref", "type": ["null", "string"], "default": None, "doc": "d"})
    path = tmp_path / "v3.avsc"
    path.write_text(json.dumps(proposed))
    code, out, _ = _run(capsys, "schemas", "check", str(path))
    assert code == 0 and "against v1, v2: compatible" in out


def test_check_refuses_a_new_required_field_naming_it_against_every_earlier_version(tmp_path, capsys):
    proposed = _latest("provision_inquiry")
    proposed["fields"].append({"name": "agency_ref", "type": "string", "doc": "no default"})
    path = tmp_path / "v3.avsc"
    path.write_text(json.dumps(proposed))
    code, out, _ = _run(capsys, "schemas", "check", str(path), "--json")
    report = json.loads(out)
    assert code == 1 and report["compatible"] is False and report["checked_against"] == [1, 2]
    assert [(i["reader"], i["writer"]) for i in report["incompatibilities"]] == [("proposed", "v1"), ("proposed", "v2")]
    assert all("agency_ref" in " ".join(i["problems"]) for i in report["incompatibilities"])


def test_check_refuses_a_breaking_change_against_an_older_version_only(tmp_path, capsys):
    """Transitive: a v3 that makes v2's optional ``purpose`` required reads v2 data but not v1's."""
    proposed = _latest("provision_inquiry")
    purpose = next(f for f in proposed["fields"] if f["name"] == "purpose")
    assert "purpose" not in {f["name"] for f in catalogue().by_name["provision_inquiry"][1].source["fields"]}
    del purpose["default"]
    proposed["fields"].append({"name": "channel_ref", "type": ["null", "string"], "default": None, "doc": "d"})
    path = tmp_path / "v3.avsc"
    path.write_text(json.dumps(proposed))
    code, out, _ = _run(capsys, "schemas", "check", str(path))
    assert code == 1 and "proposed cannot read data written by v1" in out and "purpose" in out
    assert "v2" not in out.split("INCOMPATIBLE", 1)[1]
    assert "published as" not in out


def test_check_refuses_a_version_that_changes_only_docs(tmp_path, capsys):
    """Same canonical form = same single-object fingerprint: readers could not tell the versions apart."""
    proposed = _latest("provision_inquiry")
    proposed["doc"] += " Reworded."
    path = tmp_path / "v3.avsc"
    path.write_text(json.dumps(proposed))
    code, out, _ = _run(capsys, "schemas", "check", str(path))
    assert code == 1 and "same Parsing Canonical Form and single-object fingerprint as v2" in out


def test_check_a_published_version_against_those_before_it(capsys):
    code, out, _ = _run(capsys, "schemas", "check", str(AVSC_ROOT / "registration_request" / "v2.avsc"))
    assert code == 0 and "(published as v2)" in out and "against v1:" in out


def test_check_bad_input_is_a_usage_error(tmp_path, capsys):
    assert _run(capsys, "schemas", "check", str(tmp_path / "absent.avsc"))[0] == 2
    bad = tmp_path / "bad.avsc"
    bad.write_text("{not json")
    assert _run(capsys, "schemas", "check", str(bad))[0] == 2
    bad.write_text(json.dumps({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}))
    code, _, err = _run(capsys, "schemas", "check", str(bad))
    assert code == 2 and "not a valid Avro schema" in err


@pytest.mark.parametrize("argv", [["schemas", "list", "--json"], ["schemas", "--help"]])
def test_schemas_runs_as_a_process(argv):
    done = subprocess.run([sys.executable, "-m", "infra.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "provision_inquiry" in done.stdout or "export" in done.stdout
