"""docs/signing.md's programs, taken from the page and run in their own language.

Each language's block is built once per session and run: on the README's worked example, on
non-ASCII parameters whose order differs between UTF-8 bytes, UTF-16 code units, numbers and a
culture (checked against core.signing, the service's own implementation), on verification, and
placing a real order with a real ``topup serve``. A language whose toolchain this machine lacks is
skipped, and the skip names the missing command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.signing import SignType, compute_sign, string_to_sign
from tests.support import REPO, Partner, fresh_order_no
from tests.test_signing import EXAMPLE, HMAC_SIGN, MD5_SIGN, SECRET, STRING_TO_SIGN

DOC = REPO / "docs" / "signing.md"
Programs = Callable[[str], list[str]]


@dataclass(frozen=True)
class Toolchain:
    source: str  # the file name the block is saved under
    commands: tuple[str, ...]  # what the machine must have to build and run it
    build: Callable[[Path, Path], list[str]] | None  # (source, workdir) -> build command
    run: Callable[[Path, Path], list[str]]  # (source, workdir) -> run command


# Keyed by the fence's language tag.
TOOLCHAINS = {
    "python": Toolchain("signing.py", (), None, lambda src, _: [sys.executable, str(src)]),
    "java": Toolchain(
        "Signing.java",
        ("javac", "java"),
        # --release 8: the page promises Java 8.
        lambda src, out: ["javac", "--release", "8", "-Xlint:-options", "-d", str(out), str(src)],
        lambda _, out: ["java", "-cp", str(out), "Signing"],
    ),
    "javascript": Toolchain("signing.js", ("node",), None, lambda src, _: ["node", str(src)]),
    "go": Toolchain(
        "signing.go",
        ("go",),
        lambda src, out: ["go", "build", "-o", str(out / "signing"), str(src)],
        lambda _, out: [str(out / "signing")],
    ),
    "php": Toolchain("signing.php", ("php",), None, lambda src, _: ["php", str(src)]),
    # Mono builds and runs the C# block; the .NET SDK's project scaffolding is not driven here.
    "csharp": Toolchain(
        "Signing.cs",
        ("mcs", "mono"),
        lambda src, out: ["mcs", "-r:System.Net.Http.dll", f"-out:{out / 'Signing.exe'}", str(src)],
        lambda _, out: ["mono", str(out / "Signing.exe")],
    ),
}

# Names whose order differs by comparison: byte order puts "10" before "9" (PHP's default
# ksort does not), "Supplier" before "access_token" and "zeta" before "éclair" (a culture-aware
# sort does not), and "ｎｏｔｅ" (U+FF4E...) before "📝" (U+1F4DD; UTF-16 code units do not).
# Values carry CJK, an emoji and the characters that URL-encoding would change.
NON_ASCII = {
    "📝": "an emoji name",
    "ｎｏｔｅ": "全角 name",
    "zeta": "z",
    "éclair": "é",
    "cstmOrderName": "话费 😀 & 充值+1=100% 𠮷",
    "company": "彩生活 🏠",
    "Supplier": "中国移动",
    "access_token": "t",
    "9": "nine",
    "10": "ten",
    "appID": "demo",
    "orderNo": "",
}
NON_ASCII_SECRET = "f00dfeed" * 4

WORKED_EXAMPLE_OUTPUT = [
    f"string to sign: {STRING_TO_SIGN}",
    f"hmac-sha256: {HMAC_SIGN}",
    f"md5: {MD5_SIGN}",
]


def fenced_blocks() -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    text = DOC.read_text(encoding="utf-8")
    for tag, body in re.findall(r"^```(\w+)\n(.*?)^```$", text, re.M | re.S):
        blocks.setdefault(tag, []).append(body)
    return blocks


def test_the_page_has_one_program_per_language() -> None:
    blocks = fenced_blocks()
    assert {tag: len(blocks.get(tag, [])) for tag in TOOLCHAINS} == dict.fromkeys(TOOLCHAINS, 1)
    # Any other block is output, never code that the tests below would not run; the output
    # shown is the worked example's.
    assert set(blocks) - set(TOOLCHAINS) == {"text"}
    assert [block.splitlines() for block in blocks["text"]] == [WORKED_EXAMPLE_OUTPUT]


def test_the_readme_links_the_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    signature = readme.split("### Signature", 1)[1].split("\n### ", 1)[0]
    assert "(docs/signing.md)" in signature


def test_the_edge_names_do_order_differently() -> None:
    names = [name for name in NON_ASCII if NON_ASCII[name]]
    byte_order = sorted(names, key=lambda name: name.encode())
    assert sorted(names, key=lambda name: name.encode("utf-16-be")) != byte_order
    assert byte_order.index("10") < byte_order.index("9")
    assert byte_order.index("ｎｏｔｅ") < byte_order.index("📝")


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    """The command that runs a language's block, built once per session. (A cache rather than
    a parametrized fixture: pytest would interleave its parameters with the backend's and
    restart the shared service between them.)"""
    built: dict[str, list[str]] = {}

    def program(language: str) -> list[str]:
        missing = [cmd for cmd in TOOLCHAINS[language].commands if shutil.which(cmd) is None]
        if missing:
            pytest.skip(
                f"docs/signing.md's {language} block needs {' and '.join(missing)}: not installed"
            )
        if language not in built:
            built[language] = build(language, tmp_path_factory.mktemp(f"signing-{language}"))
        return built[language]

    return program


def build(language: str, workdir: Path) -> list[str]:
    toolchain = TOOLCHAINS[language]
    source = workdir / toolchain.source
    source.write_text(fenced_blocks()[language][0], encoding="utf-8")
    if toolchain.build is not None:
        built = subprocess.run(
            toolchain.build(source, workdir), capture_output=True, text=True, timeout=120
        )
        assert built.returncode == 0, built.stdout + built.stderr
    return toolchain.run(source, workdir)


def run(program: list[str], params: Mapping[str, str] | None = None, **env: str) -> list[str]:
    """The program's output lines, for ``params`` (the worked example when None)."""
    args = [f"{name}={value}" for name, value in (params or {}).items()]
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("TOPUP_")}
    result = subprocess.run(
        [*program, *args],
        env={**inherited, "LC_ALL": "C.UTF-8", **env},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode("utf-8").splitlines()


def signed_lines(params: Mapping[str, str], secret: str) -> list[str]:
    """What every program prints first, computed by the service's own code."""
    return [
        f"string to sign: {string_to_sign(params)}",
        f"hmac-sha256: {compute_sign(params, secret, SignType.HMAC_SHA256)}",
        f"md5: {compute_sign(params, secret, SignType.MD5)}",
    ]


@pytest.mark.parametrize("language", TOOLCHAINS)
def test_prints_the_worked_example(programs: Programs, language: str) -> None:
    assert run(programs(language)) == WORKED_EXAMPLE_OUTPUT


@pytest.mark.parametrize("language", TOOLCHAINS)
def test_signs_non_ascii_parameters_as_the_service_does(programs: Programs, language: str) -> None:
    program = programs(language)
    lines = run(program, NON_ASCII, TOPUP_APP_SECRET=NON_ASCII_SECRET)
    assert lines == signed_lines(NON_ASCII, NON_ASCII_SECRET)


@pytest.mark.parametrize("language", TOOLCHAINS)
def test_verifies_a_sign_of_either_type_in_either_case(programs: Programs, language: str) -> None:
    program = programs(language)
    upper_hmac = run(program, {**EXAMPLE, "sign": HMAC_SIGN.upper()}, TOPUP_APP_SECRET=SECRET)
    assert upper_hmac[3:] == ["verify hmac-sha256: true", "verify md5: false"]
    lower_md5 = run(program, {**EXAMPLE, "sign": MD5_SIGN.lower()}, TOPUP_APP_SECRET=SECRET)
    assert lower_md5[3:] == ["verify hmac-sha256: false", "verify md5: true"]
    md5 = compute_sign(NON_ASCII, NON_ASCII_SECRET, SignType.MD5)
    non_ascii = run(program, {**NON_ASCII, "sign": md5}, TOPUP_APP_SECRET=NON_ASCII_SECRET)
    assert non_ascii[3:] == ["verify hmac-sha256: false", "verify md5: true"]
    tampered = {**EXAMPLE, "phoneNo": "13800138001", "sign": HMAC_SIGN}
    assert run(program, tampered, TOPUP_APP_SECRET=SECRET)[3:] == [
        "verify hmac-sha256: false",
        "verify md5: false",
    ]


@pytest.mark.parametrize("language", TOOLCHAINS)
def test_places_an_order_the_service_accepts(
    programs: Programs, language: str, partner: Partner
) -> None:
    program = programs(language)
    cstm_order_no = fresh_order_no("doc")
    params = {
        **partner.order_params(cstm_order_no, cstmOrderName=NON_ASCII["cstmOrderName"]),
        "appID": partner.app_id,
        "ts": str(int(time.time())),
        # Parameters the API does not know are signed too: these test the sort end to end.
        "ｎｏｔｅ": "全角",
        "📝": "😀",
    }
    lines = run(program, params, TOPUP_APP_SECRET=partner.secret, TOPUP_BASE_URL=partner.base_url)
    assert lines[:3] == signed_lines(params, partner.secret)
    assert lines[3].startswith("answer: "), lines
    answer = json.loads(lines[3].removeprefix("answer: "))
    assert answer["code"] == "0", answer
    assert answer["data"]["cstmOrderNo"] == cstm_order_no
    status = partner.status(cstm_order_no)
    assert status["code"] == "0" and status["data"]["orderNo"] == answer["data"]["orderNo"]
