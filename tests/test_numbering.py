"""The number-segment table: every carrier's segments, the ones split by their 4th or 5th
digit, and the ones no carrier has."""

from __future__ import annotations

import pytest

from core.numbering import CARRIERS, SEGMENTS, _table, carrier_of

# One number per kind of segment, with the carrier MIIT allocated it to.
KNOWN = {
    "13812345678": "中国移动",
    "13481234567": "中国移动",  # 1340-1348
    "13491234567": "中国电信",  # 1349: satellite, not 中国移动's 134
    "14712345678": "中国移动",  # data card
    "14812345678": "中国移动",  # data-only / IoT
    "14401234567": "中国移动",  # 1440 IoT
    "16512345678": "中国移动",  # MVNO
    "17031234567": "中国移动",  # MVNO, by the 4th digit
    "17051234567": "中国移动",
    "17061234567": "中国移动",
    "19512345678": "中国移动",
    "19712345678": "中国移动",
    "13012345678": "中国联通",
    "14512345678": "中国联通",  # data card
    "14612345678": "中国联通",  # data-only / IoT
    "16612345678": "中国联通",
    "16712345678": "中国联通",  # MVNO
    "17041234567": "中国联通",  # MVNO, by the 4th digit
    "17071234567": "中国联通",
    "17091234567": "中国联通",
    "17112345678": "中国联通",  # MVNO
    "19612345678": "中国联通",
    "13312345678": "中国电信",
    "14101234567": "中国电信",  # 1410 IoT
    "14912345678": "中国电信",  # data card
    "16212345678": "中国电信",  # MVNO
    "17001234567": "中国电信",  # MVNO, by the 4th digit
    "17021234567": "中国电信",
    "17400123456": "中国电信",  # satellite, by the 5th digit
    "17405123456": "中国电信",
    "19012345678": "中国电信",
    "19912345678": "中国电信",
    "19212345678": "中国广电",
}
UNALLOCATED = [
    "14012345678",
    "14112345678",  # 141 beyond 1410
    "14212345678",
    "14412345678",  # 144 beyond 1440
    "15412345678",
    "16112345678",
    "17406123456",  # emergency communications, no carrier
    "17491234567",  # maritime satellite, no carrier
    "17912345678",
    "19412345678",
]


@pytest.mark.parametrize(("phone_no", "carrier"), KNOWN.items())
def test_each_segment_names_its_carrier(phone_no: str, carrier: str) -> None:
    assert carrier_of(phone_no) == carrier


@pytest.mark.parametrize("phone_no", UNALLOCATED)
def test_a_segment_no_carrier_has_is_unknown(phone_no: str) -> None:
    assert carrier_of(phone_no) is None


def test_every_segment_belongs_to_a_carrier_partners_can_name() -> None:
    assert set(SEGMENTS.values()) == set(CARRIERS)
    assert all(prefix.isdigit() and 3 <= len(prefix) <= 5 for prefix in SEGMENTS)


def test_a_segment_inside_another_is_refused() -> None:
    # It would make the answer depend on which prefix length is probed first.
    with pytest.raises(ValueError, match="1349 is inside segment 134"):
        _table({"中国移动": ["134"], "中国电信": ["1349"]})
    with pytest.raises(ValueError, match="listed for 中国移动 and 中国联通"):
        _table({"中国移动": ["186"], "中国联通": ["186"]})
