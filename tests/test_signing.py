"""The signature rule, pinned to the README's worked example."""

from __future__ import annotations

import re
from pathlib import Path

from core.signing import SignType, compute_sign, string_to_sign, verify_sign
from tests.support import REPO, topup_cli

SECRET = "9b2f4c6e8a1d3f5b7c9e0a2d4f6b8c1e"
EXAMPLE = {
    "access_token": "1764072000.3fa85f64a1b2.6c1d0e0b9a6f4d2e8c7b5a3f1e9d7c5b3a1f0e2d",
    "company": "彩生活",
    "Supplier": "中国移动",
    "phoneNo": "13800138000",
    "productId": "YD10",
    "cstmOrderName": "物业缴费",
    "cstmOrderNo": "test1234567",
    "ts": "1764064800",
    "appID": "demo",
    "orderNo": "",
}
STRING_TO_SIGN = (
    "Supplier=中国移动&access_token=1764072000.3fa85f64a1b2.6c1d0e0b9a6f4d2e8c7b5a3f1e9d7c5b3a1f0e2d"
    "&appID=demo&company=彩生活&cstmOrderName=物业缴费&cstmOrderNo=test1234567"
    "&phoneNo=13800138000&productId=YD10&ts=1764064800"
)
HMAC_SIGN = "63444ae588f7486e37d4702ccbd9fa24c530323ea4df70e3ce11158c13e28fe1"
MD5_SIGN = "42826BF5E89371EC5A1D7E2090FE1262"


def test_worked_example_string_to_sign() -> None:
    # Byte order puts "Supplier" (S, 0x53) before "access_token" (a, 0x61);
    # the empty orderNo is left out.
    assert string_to_sign(EXAMPLE) == STRING_TO_SIGN


def test_worked_example_hmac_sha256() -> None:
    assert compute_sign(EXAMPLE, SECRET, SignType.HMAC_SHA256) == HMAC_SIGN


def test_worked_example_md5() -> None:
    assert compute_sign(EXAMPLE, SECRET, SignType.MD5) == MD5_SIGN


def test_sign_itself_is_not_signed() -> None:
    assert string_to_sign({**EXAMPLE, "sign": "whatever"}) == STRING_TO_SIGN


def test_verification_ignores_case_and_rejects_changes() -> None:
    assert verify_sign({**EXAMPLE, "sign": HMAC_SIGN.upper()}, SECRET, SignType.HMAC_SHA256)
    assert verify_sign({**EXAMPLE, "sign": MD5_SIGN.lower()}, SECRET, SignType.MD5)
    tampered = {**EXAMPLE, "phoneNo": "13800138001", "sign": HMAC_SIGN}
    assert not verify_sign(tampered, SECRET, SignType.HMAC_SHA256)
    assert not verify_sign({**EXAMPLE, "sign": ""}, SECRET, SignType.HMAC_SHA256)


def test_readme_carries_the_same_values() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for value in (SECRET, STRING_TO_SIGN, HMAC_SIGN, MD5_SIGN):
        assert value in readme


def test_topup_sign_prints_the_worked_example(tmp_path: Path) -> None:
    pairs = [f"{name}={value}" for name, value in EXAMPLE.items()]
    env = {"PATH": "/usr/bin:/bin", "TOPUP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    hmac_out = topup_cli("sign", "--secret", SECRET, *pairs, env=env).stdout.strip()
    md5_out = topup_cli("sign", "--secret", SECRET, "--sign-type", "md5", *pairs, env=env)
    assert hmac_out == HMAC_SIGN
    assert md5_out.stdout.strip() == MD5_SIGN
    verbose = topup_cli("sign", "-v", "--secret", SECRET, *pairs, env=env)
    assert re.search(re.escape(STRING_TO_SIGN), verbose.stderr)
