"""Mainland China mobile number segments (号段): which carrier issued a number.

A prefix names the carrier that *issued* the number. Since 2019-12-01 a subscriber may
move to another carrier and keep the number (携号转网), so the table is a hint about the
carrier that serves a number today, never proof: a partner that names another carrier
for a ported number is right, and only a supplier's number lookup
(``Supplier.lookup_carrier``) can tell.

Sources: MIIT's numbering plan (工业和信息化部《电信网编号计划（2017年版）》) and its
allocations since: 162/165/167 for the MVNOs' resale (2017), 166/198/199 (2017), and on
2019-12-24 190, 196, 197 and 192, the last to 中国广电 (China Broadnet, in service since
2022); as compiled, for the segments it has, in libphonenumber's carrier data
(resources/carrier/zh/86.txt). Checked as of 2025. Not in the table, so unknown here:
segments never allocated (140, 142, 143, 154, 160, 161, 163, 164, 168, 169, 179, 194 ...)
and those allocated to no carrier a partner can name (1749 maritime satellite, 17406-17412
emergency communications).

To update: when MIIT allocates a segment (or reassigns one), add its prefix to
``SEGMENTS`` under the carrier, with the shortest prefix that decides it (3 digits, or 4
or 5 where the carrier depends on the 4th or 5th digit, as 170x and 1349 do), and add a
number of it to ``tests/test_numbering.py``. Carrier names are the partner API's
``Supplier`` values. A prefix may not be the start of another (the import refuses it),
so a lookup is at most three dictionary probes.
"""

from __future__ import annotations

from collections.abc import Iterable

CHINA_MOBILE = "中国移动"
CHINA_UNICOM = "中国联通"
CHINA_TELECOM = "中国电信"
CHINA_BROADNET = "中国广电"
CARRIERS = (CHINA_MOBILE, CHINA_UNICOM, CHINA_TELECOM, CHINA_BROADNET)


def _each(*prefixes: str | Iterable[str]) -> list[str]:
    found: list[str] = []
    for item in prefixes:
        found.extend([item] if isinstance(item, str) else item)
    return found


def _span(first: int, last: int) -> list[str]:
    return [str(prefix) for prefix in range(first, last + 1)]


_BY_CARRIER: dict[str, list[str]] = {
    CHINA_MOBILE: _each(
        _span(1340, 1348),  # 1349 is 中国电信's satellite service
        _span(135, 139),
        "147",  # data cards (上网卡)
        "148",  # data-only / IoT (物联网)
        "1440",  # IoT (物联网, 13-digit numbers)
        _span(150, 152),
        _span(157, 159),
        "165",  # MVNO (虚拟运营商) on 中国移动's network
        "1703",  # MVNO
        "1705",  # MVNO
        "1706",  # MVNO
        "172",
        "178",
        _span(182, 184),
        "187",
        "188",
        "195",
        "197",
        "198",
    ),
    CHINA_UNICOM: _each(
        _span(130, 132),
        "145",  # data cards (上网卡)
        "146",  # data-only / IoT (物联网)
        "155",
        "156",
        "166",
        "167",  # MVNO
        "1704",  # MVNO
        _span(1707, 1709),  # MVNO
        "171",  # MVNO
        "175",
        "176",
        "185",
        "186",
        "196",
    ),
    CHINA_TELECOM: _each(
        "133",
        "1349",  # satellite (卫星电话, formerly 中国卫通)
        "1410",  # IoT (物联网, 13-digit numbers)
        "149",  # data cards (上网卡)
        "153",
        "162",  # MVNO
        _span(1700, 1702),  # MVNO
        "173",
        _span(17400, 17405),  # satellite (天通)
        "177",
        "180",
        "181",
        "189",
        "190",
        "191",
        "193",
        "199",
    ),
    CHINA_BROADNET: ["192"],
}


def _table(by_carrier: dict[str, list[str]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for carrier, prefixes in by_carrier.items():
        for prefix in prefixes:
            if prefix in table:
                raise ValueError(f"segment {prefix} listed for {table[prefix]} and {carrier}")
            table[prefix] = carrier
    for prefix in table:
        for length in range(3, len(prefix)):
            if prefix[:length] in table:
                raise ValueError(f"segment {prefix} is inside segment {prefix[:length]}")
    return table


SEGMENTS: dict[str, str] = _table(_BY_CARRIER)


def carrier_of(phone_no: str) -> str | None:
    """The carrier whose segment ``phone_no`` is in, or None for an unallocated one.

    Runs on the order path: at most three dictionary probes (3, 4, then 5 digits)."""
    return SEGMENTS.get(phone_no[:3]) or SEGMENTS.get(phone_no[:4]) or SEGMENTS.get(phone_no[:5])
