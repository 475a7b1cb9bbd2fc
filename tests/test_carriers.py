"""Which carrier a phone number belongs to: products by phoneNo (from the number-segment
table, or from juhe's telquery through the supplier simulator, with its fallbacks), and
orders whose Supplier contradicts the segment, accepted and recorded or refused per app.

No rule here needs a real service process: the app is served in the test's own process
(tests/inprocess.py); the simulator runs in a process of its own, as a supplier would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SHARED_SERVICE_ENV, new_partner
from tests.inprocess import InProcessService
from tests.support import Backend, Console, Partner, Service, eventually, fresh_order_no
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

CARRIER_PRODUCTS = {"中国移动": "YD10", "中国联通": "LT10", "中国电信": "DX10", "中国广电": "GD10"}


def config(juhe_url: str | None = None, carriers: tuple[str, ...] = tuple(CARRIER_PRODUCTS)) -> str:
    """Every carrier routed to the sandbox; with ``juhe_url``, juhe enabled first (so it is
    the supplier asked for carrier lookups) against that URL."""
    routes = "".join(
        f'[suppliers."{carrier}"]\nroute = ["sandbox"]\n'
        f'products = [{{ product_id = "{CARRIER_PRODUCTS[carrier]}", name = "{carrier}10元", '
        'face_value = "10", price = "9.95" }]\n'
        for carrier in carriers
    )
    if juhe_url is None:
        return f'enabled = ["sandbox"]\n{routes}'
    return f"""enabled = ["juhe", "sandbox"]
[plugin.juhe]
base_url = "{juhe_url}"
timeout = 1.0
lookup_timeout = 0.5
{routes}"""


def products(partner: Partner, **params: str) -> dict:
    signed = partner.signed(partner.base(**params))
    return partner.http.get("/sign/api/products", params=signed).json()


def products_of(carrier: str) -> list[dict]:
    product_id = CARRIER_PRODUCTS[carrier]
    name = f"{carrier}10元"
    return [{"productId": product_id, "productName": name, "faceValue": "10.00", "price": "9.95"}]


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Service]:
    """A service whose suppliers cannot look numbers up: the segment table answers."""
    workdir = tmp_path_factory.mktemp(f"carriers-{backend.name}")
    service = InProcessService(workdir, config(), env=SHARED_SERVICE_ENV, backend=backend)
    service.start()
    yield service
    service.stop()
    service.drop_database()


@pytest.fixture(scope="module")
def partner(segments: Service) -> Iterator[Partner]:
    client = new_partner(segments)
    yield client
    client.close()


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with running_simulator(env=CREDENTIALS) as url:
        yield url


@pytest.fixture(scope="module")
def with_juhe(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, simulator: str
) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(f"carriers-juhe-{backend.name}")
    service = InProcessService(workdir, config(simulator), env=CREDENTIALS, backend=backend)
    service.start()
    yield service
    service.stop()
    service.drop_database()


@pytest.fixture
def juhe_partner(with_juhe: Service, simulator: str) -> Iterator[Partner]:
    client = new_partner(with_juhe)
    yield client
    client.close()
    httpx.delete(f"{simulator}/_sim/ported", timeout=5).raise_for_status()
    httpx.delete(f"{simulator}/_sim/faults", timeout=5).raise_for_status()


# -- products by phoneNo, from the segment table ---------------------------------------------


@pytest.mark.parametrize(
    ("phone_no", "carrier"),
    [
        ("13800138000", "中国移动"),
        ("18612345678", "中国联通"),
        ("18912345678", "中国电信"),
        ("19212345678", "中国广电"),
        ("17051234567", "中国移动"),  # MVNO segments: the carrier is in the 4th digit
        ("17091234567", "中国联通"),
        ("17001234567", "中国电信"),
        ("16512345678", "中国移动"),
        ("16712345678", "中国联通"),
        ("16212345678", "中国电信"),
    ],
)
def test_products_by_phone_number_are_its_carriers(
    partner: Partner, phone_no: str, carrier: str
) -> None:
    reply = products(partner, phoneNo=phone_no)
    assert reply["code"] == "0", reply
    assert reply["Supplier"] == carrier  # the envelope echoes the carrier found
    assert reply["data"] == {
        "products": products_of(carrier),
        "carrier": carrier,
        "carrierSource": "segment",
    }


def test_products_by_supplier_answer_as_before(partner: Partner) -> None:
    reply = products(partner, Supplier="中国联通")
    assert (reply["code"], reply["Supplier"]) == ("0", "中国联通"), reply
    assert reply["data"] == {"products": products_of("中国联通")}


def test_products_need_exactly_one_of_supplier_and_phone_number(partner: Partner) -> None:
    neither = products(partner)
    assert neither["errorCode"] == "MISSING_PARAMETER", neither
    assert "Supplier 或 phoneNo" in neither["message"]
    # Both: a ported number's two carriers would disagree, and no one answer is right.
    both = products(partner, Supplier="中国移动", phoneNo="13800138000")
    assert both["errorCode"] == "INVALID_PARAMETER", both
    assert "Supplier 和 phoneNo 只能给一个" in both["message"]


def test_missing_parameters_are_named_together(partner: Partner) -> None:
    params = partner.signed({"company": partner.company})
    reply = partner.http.get("/sign/api/products", params=params).json()
    assert reply["errorCode"] == "MISSING_PARAMETER", reply
    assert "access_token" in reply["message"] and "Supplier 或 phoneNo" in reply["message"]


@pytest.mark.parametrize(
    ("phone_no", "said"),
    [
        ("14212345678", "号段 142 未分配给任何运营商"),
        ("19412345678", "号段 194 未分配给任何运营商"),
        ("1380013800", "不是 11 位中国大陆手机号"),
        ("23800138000", "不是 11 位中国大陆手机号"),
    ],
)
def test_a_number_no_carrier_has_is_refused(partner: Partner, phone_no: str, said: str) -> None:
    reply = products(partner, phoneNo=phone_no)
    assert reply["errorCode"] == "INVALID_PHONE", reply
    assert said in reply["message"]


# -- products by phoneNo, from juhe's telquery -----------------------------------------------


def test_juhe_names_the_carrier_of_a_number(juhe_partner: Partner) -> None:
    reply = products(juhe_partner, phoneNo="19212345678")
    assert reply["code"] == "0", reply
    assert reply["Supplier"] == "中国广电"
    assert reply["data"]["carrier"] == "中国广电"
    assert reply["data"]["carrierSource"] == "supplier:juhe"
    assert reply["data"]["products"] == products_of("中国广电")


def test_a_ported_number_gets_its_new_carriers_products(
    juhe_partner: Partner, simulator: str
) -> None:
    ported = {"phone_no": "13800138001", "carrier": "中国联通"}
    httpx.post(f"{simulator}/_sim/ported", json=ported, timeout=5).raise_for_status()
    reply = products(juhe_partner, phoneNo="13800138001")
    assert reply["code"] == "0", reply
    assert (reply["Supplier"], reply["data"]["carrierSource"]) == ("中国联通", "supplier:juhe")
    assert reply["data"]["products"] == products_of("中国联通")
    # Its neighbour was not ported: its segment's carrier, as juhe says.
    neighbour = products(juhe_partner, phoneNo="13800138002")
    assert (neighbour["data"]["carrier"], neighbour["data"]["carrierSource"]) == (
        "中国移动",
        "supplier:juhe",
    )


def test_a_slow_lookup_falls_back_to_the_segment_table(
    juhe_partner: Partner, with_juhe: Service, simulator: str
) -> None:
    ported = {"phone_no": "13800138003", "carrier": "中国联通"}
    httpx.post(f"{simulator}/_sim/ported", json=ported, timeout=5).raise_for_status()
    fault = {"phone_no": "13800138003", "fault": "slow_lookup", "seconds": 5}
    httpx.post(f"{simulator}/_sim/faults", json=fault, timeout=5).raise_for_status()
    reply = products(juhe_partner, phoneNo="13800138003")
    assert reply["code"] == "0", reply
    # Past juhe's lookup_timeout the table answers: the segment's carrier, said to be so.
    assert (reply["data"]["carrier"], reply["data"]["carrierSource"]) == ("中国移动", "segment")
    with_juhe.wait_for_log("juhe: carrier lookup of 138****8003 failed")


def test_an_unreachable_supplier_falls_back_to_the_segment_table(
    in_process_services, tmp_path: Path
) -> None:
    # Port 9 (discard) refuses connections on loopback: juhe cannot be asked at all.
    service = in_process_services(
        config("http://127.0.0.1:9", carriers=("中国移动", "中国联通")), env=CREDENTIALS
    )
    client = new_partner(service)
    reply = products(client, phoneNo="13800138000")
    assert reply["code"] == "0", reply
    assert (reply["data"]["carrier"], reply["data"]["carrierSource"]) == ("中国移动", "segment")
    # A carrier that has no route here is named, and refused as an unknown Supplier.
    broadnet = products(client, phoneNo="19212345678")
    assert broadnet["errorCode"] == "UNKNOWN_SUPPLIER", broadnet
    assert "属于中国广电 (来源 segment)" in broadnet["message"]
    client.close()


# -- orders whose Supplier contradicts the segment ------------------------------------------


def order(partner: Partner, phone_no: str, carrier: str, cstm: str | None = None) -> dict:
    cstm = cstm or fresh_order_no("cm")
    return partner.order(cstm, phone_no, Supplier=carrier, productId=CARRIER_PRODUCTS[carrier])


def segment_carrier(service: Service, order_no: str) -> str | None:
    [(found,)] = service.sql("SELECT segment_carrier FROM orders WHERE order_no = ?", order_no)
    return found


def test_a_mismatch_is_accepted_and_recorded_by_default(
    segments: Service, partner: Partner
) -> None:
    # A 中国移动 number the partner says is 中国联通's now: ported, as far as we know.
    ported = order(partner, "13800138000", "中国联通")
    assert ported["code"] == "0", ported
    assert segment_carrier(segments, ported["data"]["orderNo"]) == "中国移动"
    matching = order(partner, "13800138000", "中国移动")
    assert matching["code"] == "0", matching
    assert segment_carrier(segments, matching["data"]["orderNo"]) is None
    shown = segments.cli("orders", "show", ported["data"]["orderNo"]).stdout
    assert "the number's segment is 中国移动's; accepted as 中国联通" in shown
    # The operator sees it on the order's page.
    segments.add_operator("carrier-viewer", "viewer")
    console = Console(segments)
    console.sign_in("carrier-viewer")
    page = console.get(f"/console/orders/{ported['data']['orderNo']}").text
    assert 'id="segment-carrier"' in page and "号段属于中国移动，合作方指定中国联通" in page
    plain = console.get(f"/console/orders/{matching['data']['orderNo']}").text
    assert 'id="segment-carrier"' not in plain
    console.close()


def test_an_app_set_to_refuse_gets_carrier_mismatch_and_nothing_is_written(
    segments: Service,
) -> None:
    strict = new_partner(segments)
    segments.cli("app", "set", strict.app_id, "--carrier-mismatch", "refuse")
    assert "carrier mismatch: refuse" in segments.cli("app", "show", strict.app_id).stdout
    listing = segments.cli("app", "list").stdout
    assert f"{strict.app_id}\t{strict.company}\thmac-sha256\tcarrier-mismatch refuse" in listing
    segments.add_operator("carrier-reader", "viewer")
    console = Console(segments)
    console.sign_in("carrier-reader")
    page = console.get(f"/console/partners/{strict.app_id}").text
    assert "拒绝（CARRIER_MISMATCH）" in page
    console.close()
    held_before = segments.sql("SELECT held FROM accounts WHERE app_id = ?", strict.app_id)

    refused = order(strict, "19212345678", "中国电信")
    assert refused["errorCode"] == "CARRIER_MISMATCH", refused
    assert "号段属于中国广电, 与 Supplier 中国电信 不符" in refused["message"]
    count = "SELECT count(*) FROM orders WHERE app_id = ?"
    assert segments.sql(count, strict.app_id) == [(0,)]
    assert segments.sql("SELECT held FROM accounts WHERE app_id = ?", strict.app_id) == held_before
    # A Supplier that agrees with the segment, or a segment no carrier has, is not a mismatch.
    assert order(strict, "19212345678", "中国广电")["code"] == "0"
    assert order(strict, "14212345678", "中国移动")["code"] == "0"
    strict.close()


def test_a_repeat_of_an_order_accepted_before_the_switch_gets_the_original(
    segments: Service,
) -> None:
    switched = new_partner(segments)
    first = order(switched, "18912345678", "中国移动", cstm="before-switch")
    assert first["code"] == "0", first
    segments.cli("app", "set", switched.app_id, "--carrier-mismatch", "refuse")

    def refusing() -> bool:
        # Running services see the change once their app cache (1 s here) has run out.
        reply = order(switched, "18912345678", "中国移动")
        return reply.get("errorCode") == "CARRIER_MISMATCH"

    eventually(refusing, timeout=10, interval=0.5, what="the refuse setting in effect")
    repeat = order(switched, "18912345678", "中国移动", cstm="before-switch")
    assert repeat["code"] == "0", repeat
    assert repeat["data"]["orderNo"] == first["data"]["orderNo"]
    switched.close()
