"""`harness diff` and `harness matrix` over captured real result.json files, and over inputs that are none.

The captures (tests/unit/data/report/) are the result.json of real boots, trimmed to the keys the reports read
(schema, target, verdict, xen, guests.dom0, witnesses.dom0's xen and kernel, matrix):
- qemu-virt-result.json and qemu-virt-gicv2-result.json: Debian 12's Xen 4.17.7 and Linux 6.1.0-56-cloud-arm64
  on QEMU virt with GICv3 and with GICv2, the same day;
- qemu-virt-xen420-result.json and qemu-virt-linux612-result.json: QEMU virt, GICv3, with Debian 13's Xen 4.20.5-pre
  and Linux 6.12.118+deb13-cloud-arm64, and with Xen 4.17.7 and that 6.12 (a new guest on an old Xen);
- qemu-a15-older-result.json: Xen 4.17.5 and 6.1.0-50-armmp-lpae on a Cortex-A15, written by the harness before
  it kept the hypervisor node, the kernel's Xen lines and /proc/iomem's (so those are 'not recorded').
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_cli_check import harness, one_line_error

from harness.errors import UnusableInput
from harness.report import diff, matrix
from harness.result import SCHEMA_VERSION, load

DATA = Path(__file__).parent / "data" / "report"
VIRT, GICV2, A15_OLDER, XEN420, LINUX612 = (DATA / f"{name}-result.json" for name in (
    "qemu-virt", "qemu-virt-gicv2", "qemu-a15-older", "qemu-virt-xen420", "qemu-virt-linux612"))


def record(path: Path) -> dict:
    return json.loads(path.read_text())


# --- harness diff ---------------------------------------------------------------------------------


def test_the_same_boot_twice_is_no_difference_and_exits_0():
    run = harness("diff", VIRT, VIRT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "no difference for dom0"
    assert json.loads(harness("diff", "--json", VIRT, VIRT).stdout)["same"] is True


def test_gicv3_against_gicv2_differs_in_the_events_interrupts_chip_and_only_there_for_dom0():
    left, right = record(VIRT)["guests"]["dom0"], record(GICV2)["guests"]["dom0"]
    assert left["event_irq"]["chip"] != right["event_irq"]["chip"]  # what the two captures say: GICv3, GIC-0
    run = harness("diff", VIRT, GICV2)
    assert run.returncode == 1, run.stdout + run.stderr
    l_irq, r_irq = left["event_irq"], right["event_irq"]
    expected = (f"  events interrupt: hwirq {l_irq['hwirq']} on {l_irq['chip']}, {l_irq['type']} → "
                f"hwirq {r_irq['hwirq']} on {r_irq['chip']}, {r_irq['type']}")
    assert expected in run.stdout.splitlines(), run.stdout
    changes = diff.compare(record(VIRT), record(GICV2))
    # the same Xen gave both dom0s the same node, grant table, PPI, extended regions and memory
    assert {c.section for c in changes} == {"dom0's kernel"}, changes


def test_what_xen_420_and_linux_612_changed_for_dom0_is_one_command():
    left, right = record(VIRT), record(XEN420)
    run = harness("diff", VIRT, XEN420)
    assert run.returncode == 1, run.stdout + run.stderr
    changes = {(c.section, c.field): (c.left, c.right) for c in diff.compare(left, right)}
    l_node, r_node = left["guests"]["dom0"]["hypervisor_node"], right["guests"]["dom0"]["hypervisor_node"]
    assert changes[("hypervisor node", "compatible")] == (", ".join(l_node["compatible"]),
                                                          ", ".join(r_node["compatible"]))
    assert r_node["compatible"][0] == "xen,xen-4.20"  # what the capture says: the booted Xen first
    for i, (was, now) in enumerate(zip(l_node["reg"][1:], r_node["reg"][1:], strict=True), start=1):
        assert was != now  # Xen 4.20 ends each extended region 2 MiB lower than 4.17 on this machine
        assert changes[("hypervisor node", f"reg[{i}] (extended region)")] == (was, now)
        assert changes[("Xen's claims", f"d0 extended region[{i - 1}]")] == (was, now)  # Xen's log says the same
    assert ("hypervisor node", "reg[0] (grant table)") not in changes  # the grant table did not move
    assert changes[("dom0's kernel says", "Xen N.N support found")] == ("Xen 4.17 support found",
                                                                       "Xen 4.20 support found")
    assert changes[("dom0's kernel", "release")] == (left["guests"]["dom0"]["kernel"],
                                                     right["guests"]["dom0"]["kernel"])
    # 6.12 words every other line about Xen as 6.1 does, and neither lists a Xen entry in /proc/iomem
    assert {section for section, _ in changes} == {"hypervisor node", "Xen's claims", "dom0's kernel",
                                                   "dom0's kernel says"}
    assert len([k for k in changes if k[0] == "dom0's kernel says"]) == 1
    assert "  compatible: xen,xen-4.17, xen,xen → xen,xen-4.20, xen,xen" in run.stdout.splitlines()


def test_the_header_names_each_boots_target_xen_and_linux():
    lines = harness("diff", VIRT, GICV2).stdout.splitlines()
    for line, path in zip(lines[:2], (VIRT, GICV2), strict=True):
        r = record(path)
        for said in (r["target"], f"Xen {r['xen']['release']}", f"Linux {r['guests']['dom0']['kernel']}", str(path)):
            assert said in line, f"expected {said!r} in the header line {line!r}"


def test_another_xen_and_kernel_show_as_field_left_to_right_and_what_the_older_boot_did_not_keep():
    left, right = record(VIRT), record(A15_OLDER)
    changes = {(c.section, c.field): (c.left, c.right) for c in diff.compare(left, right)}
    assert changes[("Xen's claims", "version")] == (left["xen"]["release"], right["xen"]["release"])
    assert changes[("Xen's claims", "grant table")] == (left["xen"]["grant"], right["xen"]["grant"])
    assert changes[("Xen's claims", "d0 extended region[0]")] == (left["xen"]["extended"]["d0"][0], diff.ABSENT)
    assert changes[("dom0's kernel", "release")] == (left["guests"]["dom0"]["kernel"],
                                                     right["guests"]["dom0"]["kernel"])
    for section in ("hypervisor node", "/proc/iomem (Xen)", "dom0's kernel says"):  # one line each, not one a field
        assert [k for k in changes if k[0] == section] == [(section, "recorded")]
        assert changes[(section, "recorded")] == ("yes", matrix.NOT_RECORDED)
    assert changes[("dom0's kernel", "Linux version")] == (left["guests"]["dom0"]["linux_version"],
                                                           matrix.NOT_RECORDED)
    out = json.loads(harness("diff", "--json", VIRT, A15_OLDER).stdout)
    assert out["same"] is False and out["right"]["target"] == "qemu-a15" and out["right"]["linux_version"] == "6.1"
    assert {"section": "Xen's claims", "field": "grant table", "left": left["xen"]["grant"],
            "right": right["xen"]["grant"]} in out["differences"]


def test_a_kernel_line_worded_alike_with_other_numbers_is_one_change():
    left = record(VIRT)
    right = json.loads(json.dumps(left))
    lines = right["guests"]["dom0"]["xen_lines"]
    found = lines.index("Xen 4.17 support found")
    lines[found] = "Xen 4.20 support found"
    assert [(c.field, c.left, c.right) for c in diff.compare(left, right)] == [
        ("Xen N.N support found", "Xen 4.17 support found", "Xen 4.20 support found")]


def test_an_artifacts_directory_is_read_as_its_result_json(tmp_path: Path):
    shutil.copy(VIRT, tmp_path / "result.json")
    assert harness("diff", tmp_path, VIRT).returncode == 0


def fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo.json")
    return tmp_path / "fifo.json"


@pytest.mark.parametrize(("make", "said"), [
    (lambda d: d / "missing.json", "does not exist: give a result.json a boot wrote"),
    (lambda d: d, "result.json does not exist: give a result.json a boot wrote, or the artifacts directory"),
    (lambda d: (d / "log.json").write_text("(XEN) Xen version 4.17\n") and d / "log.json", "is not JSON"),
    (lambda d: (d / "list.json").write_text("[1, 2]") and d / "list.json",
     "is not a harness result.json (it has no schema, target, verdict)"),
    (lambda d: (d / "other.json").write_text('{"schema": 2, "name": "x"}') and d / "other.json",
     "is not a harness result.json (it has no target, verdict)"),
    (lambda d: (d / "new.json").write_text(json.dumps({"schema": SCHEMA_VERSION + 1, "target": "t",
                                                       "verdict": "passed"})) and d / "new.json",
     f"which this harness (schema {SCHEMA_VERSION}) cannot read"),
    (lambda d: (d / "deep.json").write_text("[" * 100_000) and d / "deep.json", "is not JSON"),
    (fifo, "is a FIFO, not a file"),
], ids=["missing", "directory-without-result", "not-json", "json-list", "other-json", "newer-schema", "deep",
        "fifo"])
def test_an_input_that_is_no_result_json_is_one_sentence_and_exit_2(tmp_path: Path, make, said: str):
    bad = make(tmp_path)
    run = harness("diff", "--json", VIRT, bad)
    assert run.returncode == 2, f"expected exit 2, found {run.returncode}: {run.stdout}{run.stderr}"
    line = one_line_error(run)
    assert said in line and str(bad) in line, f"expected {said!r} naming {bad}, found {line!r}"
    with pytest.raises(UnusableInput, match="give a result.json a boot wrote|compare it with the harness"):
        load(bad)


def test_diff_wants_two_boots():
    run = harness("diff", VIRT)
    assert run.returncode == 2 and "the following arguments are required: right" in run.stderr


# --- the matrix -----------------------------------------------------------------------------------


def test_a_cell_says_what_each_witness_said_of_dom0():
    r = record(VIRT)
    cell, dom0 = matrix.cell(r), r["guests"]["dom0"]
    assert cell == r["matrix"]  # the boot wrote the cell this harness makes of its record
    assert cell["xen"] == {"version": r["xen"]["version"], "release": r["xen"]["release"]}
    assert cell["linux"] == {"version": "6.1", "release": dom0["kernel"]}
    assert cell["witnesses"]["xen"] == {"grant": r["xen"]["grant"], "event_ppi": r["xen"]["event_ppi"],
                                        "extended": r["xen"]["extended"]["d0"]}
    reg = dom0["hypervisor_node"]["reg"]
    assert cell["witnesses"]["dt"] == {"grant": reg[0], "event_ppi": dom0["hypervisor_node"]["event_intid"],
                                       "extended": reg[1:]}
    # Debian's 6.1 says no address of its grant table or extended regions, and lists none in /proc/iomem
    assert cell["witnesses"]["kernel"] == {"grant": matrix.NOT_STATED, "event_ppi": dom0["event_irq"]["hwirq"],
                                           "extended": matrix.NOT_STATED}
    assert cell["kernel_used"] == {"grant": matrix.NOT_STATED, "unpopulated": matrix.NOT_STATED}
    assert cell["verdict"] == r["verdict"]


def test_an_older_record_makes_a_cell_saying_what_it_did_not_keep():
    cell = matrix.cell(record(A15_OLDER))
    assert cell["witnesses"]["dt"] == dict.fromkeys(("grant", "event_ppi", "extended"), matrix.NOT_RECORDED)
    assert cell["kernel_used"]["unpopulated"] == matrix.NOT_RECORDED
    assert cell["witnesses"]["xen"]["extended"] == matrix.NOT_STATED  # that harness did not keep Xen's 32-bit line


def session(tmp_path: Path, *captures: Path) -> Path:
    for path in captures:  # one directory per target, as a pytest session writes them
        (tmp_path / record(path)["target"]).mkdir()
        shutil.copy(path, tmp_path / record(path)["target"] / "result.json")
    return tmp_path


def test_the_table_has_a_row_per_witness_sorted_by_xen_then_linux(tmp_path: Path):
    run = harness("matrix", session(tmp_path, VIRT, A15_OLDER, GICV2))
    assert run.returncode == 0, run.stderr
    rows = [line.split(" | ") for line in run.stdout.splitlines()[2:]]
    assert len(rows) == 3 * 4
    firsts = [row[2] for row in rows if row[2]]
    assert firsts == ["qemu-a15", "qemu-virt", "qemu-virt-gicv2"]  # Xen 4.17.5 before 4.17.7, then by target
    virt = rows[4:8]
    v = record(VIRT)
    assert [row[3] for row in virt] == ["Xen's log", "dom0's tree", "dom0's kernel", "kernel used"]
    assert virt[0][4:7] == [v["xen"]["grant"], str(v["xen"]["event_ppi"]), ", ".join(v["xen"]["extended"]["d0"])]
    assert virt[0][0] == "| " + v["xen"]["release"] and virt[0][7] == v["verdict"] + " |"
    cells = json.loads(harness("matrix", "--json", tmp_path).stdout)
    assert [c["target"] for c in cells] == firsts and cells[1]["result"].endswith("qemu-virt/result.json")


def test_write_makes_matrix_md_and_json_or_nothing_without_boots(tmp_path: Path):
    assert matrix.write(tmp_path) == matrix.Found()
    assert not (tmp_path / "matrix.md").exists()
    found = matrix.write(session(tmp_path, VIRT, GICV2))
    assert len(found.cells) == 2 and found.left_out == []
    assert (tmp_path / "matrix.md").read_text() == matrix.table([matrix.cell(record(VIRT)),
                                                                 matrix.cell(record(GICV2))]) + "\n"
    assert [c["result"] for c in json.loads((tmp_path / "matrix.json").read_text())] == [
        "qemu-virt/result.json", "qemu-virt-gicv2/result.json"]


@pytest.mark.parametrize(("make", "said"), [
    (lambda d: d / "nowhere", "is not a directory: give a session's artifacts directory"),
    (lambda d: (d / "f").write_text("x") and d / "f", "is not a directory"),
    (lambda d: d, "no readable result.json below"),
], ids=["missing", "a-file", "no-boots"])
def test_matrix_of_no_session_is_one_sentence_and_exit_2(tmp_path: Path, make, said: str):
    run = harness("matrix", make(tmp_path))
    assert run.returncode == 2, run.stdout + run.stderr
    assert said in one_line_error(run)


def test_a_result_json_that_is_none_is_left_out_saying_why_and_the_others_still_shown(tmp_path: Path):
    session(tmp_path, VIRT)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "result.json").write_text('{"tests": 3}')
    run = harness("matrix", tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"harness: left out of the matrix: {tmp_path / 'stray' / 'result.json'} is not "
                                       "a harness result.json (it has no schema, target, verdict): give a result.json "
                                       "a boot wrote, or the artifacts directory holding one."]
    assert run.stdout.count("| Xen's log |") == 1
    (tmp_path / "qemu-virt" / "result.json").unlink()
    run = harness("matrix", tmp_path)
    assert run.returncode == 2 and "no readable result.json below" in run.stderr.splitlines()[-1]


def test_the_table_of_real_cells_puts_xen_417_before_420_and_linux_61_before_612(tmp_path: Path):
    run = harness("matrix", session(tmp_path, XEN420, LINUX612, VIRT))
    order = [(row.split(" | ")[0][2:], row.split(" | ")[1]) for row in run.stdout.splitlines()[2::4]]
    assert [(x, k.split()[0]) for x, k in order] == [("4.17.7", "6.1"), ("4.17.7", "6.12"), ("4.20.5-pre", "6.12")]


def test_cells_sort_by_xen_then_linux_as_numbers():
    base = matrix.cell(record(VIRT))
    cells = [base | {"xen": {"version": x, "release": x}, "linux": {"version": k, "release": k}, "target": t}
             for x, k, t in [("4.20", "6.12", "a"), ("4.17", "6.12", "b"), ("4.20", "6.1", "c"), ("4.17", "6.1", "d"),
                             ("4.9", "6.1", "e"), (None, None, "f")]]
    assert [c["target"] for c in matrix.sort_cells(cells)] == ["e", "d", "b", "c", "a", "f"]
