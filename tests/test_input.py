"""Forgiving input, strict meaning: what people type and what spreadsheets save is accepted at
the edge (CLI, CSV, SDK arguments); what travels signed is still parsed strictly."""

from __future__ import annotations

import pytest

from agents.client import recipients
from agents.onboarding import read_csv
from keys.codes import AgencyCode, InvalidAgencyCode
from keys.errors import Refused, UsageError
from keys.levels import Level, Urgency
from tests.helpers import make_world

A, B, C = "000.00.00.H41", "000.01.12.H41", "000.02.12.H41"


@pytest.mark.parametrize("typed", ["000.01.12.h41", " 000.01.12.H41 ", "000.01.12.h41\n"])
def test_a_code_typed_in_lower_case_or_with_spaces_is_the_code(typed):
    assert AgencyCode.from_user(typed) == AgencyCode.parse(B)


@pytest.mark.parametrize("signed", ["000.01.12.h41", " 000.01.12.H41", "000.01.12.H41\n"])
def test_what_travels_signed_is_still_parsed_strictly(signed):
    with pytest.raises(InvalidAgencyCode):
        AgencyCode.parse(signed)


@pytest.mark.parametrize("typed", ["000.01.12.H4", "0OO.01.12.H41", "000.01.12.H41.1", "x" * 200])
def test_a_mistyped_code_is_still_refused_naming_the_form(typed):
    with pytest.raises(InvalidAgencyCode, match="expected LLL.kk.jj.Xnn|short string"):
        AgencyCode.from_user(typed)


@pytest.mark.parametrize(
    ("typed", "level"),
    [("mật", Level.MAT), ("Mật", Level.MAT), ("Tối mật", Level.TOI_MAT), ("TOI_MAT", Level.TOI_MAT),
     ("tuyệt mật", Level.TUYET_MAT), ("toi-mat", Level.TOI_MAT)],
)  # fmt: skip
def test_levels_are_accepted_as_people_write_them(typed, level):
    assert Level.parse(typed) is level


def test_an_unknown_level_is_refused_listing_the_levels():
    with pytest.raises(UsageError, match="mat"):
        Level.parse("secret")


def test_urgencies_are_accepted_with_diacritics():
    assert Urgency.parse("Hỏa tốc") is Urgency.parse("hoa-toc")


def test_an_excel_csv_with_semicolons_a_bom_and_lower_case_codes_imports():
    text = (
        "\ufeffcode;name;clearance;parent\r\n"
        "000.01.31.h41;Xã A, huyện B;Mật;000.00.00.h41\r\n"
        "000.02.31.H41;Xã C;Tối mật;\r\n"
    )
    rows = read_csv(text)
    assert [r.code.text for r in rows] == ["000.01.31.H41", "000.02.31.H41"]
    assert rows[0].name == "Xã A, huyện B" and rows[0].clearance is Level.MAT
    assert rows[0].parent == AgencyCode.parse(A) and rows[1].parent is None
    assert rows[1].clearance is Level.TOI_MAT


def test_a_comma_csv_with_a_quoted_comma_in_a_name_imports():
    rows = read_csv('code,name,clearance\n000.01.31.H41,"Xã A, huyện B",mat\n')
    assert rows[0].name == "Xã A, huyện B"


def test_a_bad_csv_line_is_named_whatever_the_separator():
    with pytest.raises(UsageError, match="line 3: invalid agency code"):
        read_csv("code;name;clearance\n000.01.31.H41;Xã A;mat\n000.1.31.H41;Xã B;mat\n")


def test_recipients_given_as_strings_lists_or_codes():
    assert recipients("000.01.12.h41, 000.00.00.H41") == [AgencyCode.parse(B), AgencyCode.parse(A)]
    assert recipients([B, AgencyCode.parse(A)]) == [AgencyCode.parse(B), AgencyCode.parse(A)]
    assert recipients(AgencyCode.parse(A)) == [AgencyCode.parse(A)]
    with pytest.raises(UsageError, match="no recipient"):
        recipients([])
    with pytest.raises(UsageError, match="no recipient"):
        recipients(" , ")
    with pytest.raises(UsageError, match="int is not an agency code"):
        recipients([B, 41])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="not int"):
        recipients(41)  # type: ignore[arg-type]


def test_an_unknown_code_gets_did_you_mean_from_the_directory(tmp_path):
    directory = make_world(tmp_path, {A: Level.TOI_MAT, B: Level.MAT, C: Level.MAT}).directory()
    with pytest.raises(Refused, match=r"000\.01\.13\.H41 is not in the directory \(did you mean"):
        directory.get(AgencyCode.parse("000.01.13.H41"), "recipient")
    with pytest.raises(Refused) as refused:
        directory.get(AgencyCode.parse("000.01.13.H41"), "recipient")
    assert "000.01.12.H41 (" in str(refused.value)
    with pytest.raises(Refused) as far:
        directory.get(AgencyCode.parse("123.45.67.G99"), "recipient")
    assert "did you mean" not in str(far.value)


@pytest.mark.parametrize("given", [Level.MAT, "mat", "Mật", "MAT"])
def test_the_api_takes_a_level_as_the_enum_or_as_written(given):
    assert Level.parse(given) is Level.MAT


@pytest.mark.parametrize("given", [Urgency.HOA_TOC, "hoa-toc", "Hỏa tốc", "HOA_TOC"])
def test_the_api_takes_an_urgency_as_the_enum_or_as_written(given):
    assert Urgency.parse(given) is Urgency.HOA_TOC


@pytest.mark.parametrize("wrong", [42, None, b"mat", "secret"])
def test_a_wrong_level_or_urgency_is_the_projects_usage_error_not_a_type_error(wrong):
    """Seen: send(level="mat") raised TypeError; what an integrator gets is always ours."""
    with pytest.raises(UsageError, match="unknown level"):
        Level.parse(wrong)
    with pytest.raises(UsageError, match="unknown urgency"):
        Urgency.parse(wrong)


@pytest.mark.parametrize(
    "name",
    ["Tờ trình về việc sắp xếp đơn vị hành chính cấp xã " * 4 + ".pdf",  # 284 bytes, 208 chars
     "ờ" * 80 + ".pdf",  # 244 bytes in 84 characters: what the character cut let through
     "\U0001d518" * 200 + ".txt", "a" * 300, "ữ" * 85 + ".docx"],
)  # fmt: skip
def test_an_inbox_name_is_cut_by_bytes_with_room_for_every_suffix(tmp_path, name):
    """Seen: a 242-byte name passed the 120-character cut, and its sidecar (".json") then failed
    with ENAMETOOLONG. The cut is in bytes, whole characters, extension kept, and the longest
    name the agent makes from it (id prefix, "-9999", ".json") still fits in 255 bytes."""
    from agents.durable import MAX_NAME_BYTES, place, safe_filename

    safe = safe_filename(name)
    assert len(safe.encode()) <= MAX_NAME_BYTES and safe.encode().decode() == safe
    if name.endswith((".pdf", ".txt", ".docx")):
        assert safe.rsplit(".", 1)[1] == name.rsplit(".", 1)[1]
    longest = f"{'0' * 12}-{safe}"
    stem, dot, suffix = longest.rpartition(".") if "." in longest else (longest, "", "")
    assert len(f"{stem}-9999{dot}{suffix}.json".encode()) <= 255
    opened = tmp_path / ".opened"
    opened.write_bytes(b"x")
    for _ in range(2):  # the second one takes the "-1" name: both fit the file system
        document, sidecar = place(tmp_path, longest, opened, {})
        assert document.exists() and sidecar.exists()
