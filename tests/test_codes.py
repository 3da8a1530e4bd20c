import pytest

from keys.codes import AgencyCode, InvalidAgencyCode
from keys.errors import EXIT_USAGE, UsageError
from keys.levels import Level, Urgency


def test_parse_province():
    code = AgencyCode.parse("000.00.00.H41")
    assert code.text == "000.00.00.H41"
    assert code.level1 == "H41"
    assert code.depth == 1
    assert code.parent is None


def test_level2_unit_knows_level1_and_parent():
    code = AgencyCode.parse("000.00.12.H41")
    assert code.level1 == "H41"
    assert code.depth == 2
    assert code.parent == AgencyCode.parse("000.00.00.H41")


def test_deeper_chain_of_parents():
    code = AgencyCode.parse("001.02.12.G05")
    assert code.depth == 4
    chain = []
    node = code
    while node is not None:
        chain.append(node.text)
        node = node.parent
    assert chain == ["001.02.12.G05", "000.02.12.G05", "000.00.12.G05", "000.00.00.G05"]
    assert code.is_under(AgencyCode.parse("000.00.12.G05"))
    assert not code.is_under(AgencyCode.parse("000.00.13.G05"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "H41",
        "000.00.00.h41",
        "000.00.00.H4",
        "00.00.00.H41",
        "000.000.00.H41",
        "000.00.00.H41 ",
        " 000.00.00.H41",
        "000-00-00-H41",
        "000.00.00.41H",
        "000.00.00.HH1",
        "000.00.00.H41\n",
        "x" * 1000,
        "０００.00.00.H41",
    ],
)
def test_invalid_codes_get_one_clear_error(text):
    with pytest.raises(InvalidAgencyCode) as e:
        AgencyCode.parse(text)
    assert "\n" not in str(e.value)
    assert e.value.exit_code == EXIT_USAGE


def test_non_string_is_refused():
    with pytest.raises(InvalidAgencyCode):
        AgencyCode.parse(41)  # type: ignore[arg-type]


def test_levels_are_ordered_and_named():
    assert Level.THUONG < Level.MAT < Level.TOI_MAT < Level.TUYET_MAT
    assert Level.parse("toi-mat").display == "Tối mật"
    assert Urgency.parse("hoa-toc-hen-gio").display == "Hỏa tốc hẹn giờ"
    with pytest.raises(UsageError, match=r"one of thuong \(Thường\), mat \(Mật\), toi-mat"):
        Level.parse("secret")
    assert [Level.parse(t) for t in ("Mật", "tối mật", "TOI_MAT", " Tuyệt mật ")] == [
        Level.MAT,
        Level.TOI_MAT,
        Level.TOI_MAT,
        Level.TUYET_MAT,
    ]
    assert Urgency.parse("Hỏa tốc hẹn giờ") is Urgency.HOA_TOC_HEN_GIO
    assert Urgency.parse("Thượng khẩn") is Urgency.THUONG_KHAN
