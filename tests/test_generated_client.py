"""A partner who does not use topup.client: a client generated from the published document
by a standard OpenAPI generator (openapi-generator, as the README shows) places an order,
queries it and reads a refusal, against a real service."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import new_partner
from tests.support import TOPUP, Partner, ServiceProcess, fresh_order_no

GENERATOR = Path(TOPUP).with_name("openapi-generator-cli")
PACKAGE = "topup_partner"  # the README's --package-name


@pytest.fixture(scope="module")
def generated(
    sqlite_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> ModuleType:
    """The README's command, run on the document the service publishes."""
    if shutil.which("java") is None:
        pytest.skip("openapi-generator needs Java 11+: not installed")
    out = tmp_path_factory.mktemp("generated")
    document = out / "openapi.json"
    document.write_bytes(httpx.get(f"{sqlite_service.url}/schema/openapi.json").content)
    command = [str(GENERATOR), "generate", "-i", str(document), "-g", "python"]
    command += ["-o", str(out / "topup-client"), "--package-name", PACKAGE]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(out / "topup-client"))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out / "topup-client"))


@pytest.fixture(scope="module")
def api(generated: ModuleType, sqlite_service: ServiceProcess) -> object:
    client = generated.ApiClient(generated.Configuration(host=sqlite_service.url))
    return generated.PartnerAPIApi(client)


@pytest.fixture(scope="module")
def partner(sqlite_service: ServiceProcess) -> Partner:
    return new_partner(sqlite_service)


def test_a_generated_client_orders_and_queries(
    generated: ModuleType, api, partner: Partner
) -> None:
    token = api.issue_token(generated.TokenParams(**partner.signed({}))).actual_instance
    assert token.code == "0", token
    assert token.data.access_token
    cstm = fresh_order_no("generated")
    signed = partner.signed(partner.order_params(cstm, access_token=token.data.access_token))
    placed = api.place_order(generated.OrderParams.from_dict(signed)).actual_instance
    assert isinstance(placed, generated.SuccessOrderAccepted), placed
    assert (placed.code, placed.data.cstm_order_no) == ("0", cstm)
    query = partner.signed(partner.base(Supplier="中国移动", cstmOrderNo=cstm))
    status = api.query_order_status(
        access_token=query["access_token"],
        company=query["company"],
        supplier=query["Supplier"],
        cstm_order_no=cstm,
        app_id=query["appID"],
        ts=query["ts"],
        sign=query["sign"],
    ).actual_instance
    assert isinstance(status, generated.SuccessOrderStatus), status
    assert status.data.order_no == placed.data.order_no
    assert status.data.status in {"0", "1", "2"}


def test_a_refusal_comes_back_typed_with_its_error_code(
    generated: ModuleType, api, partner: Partner
) -> None:
    params = partner.signed({}, secret="not-the-secret")
    refused = api.issue_token(generated.TokenParams(**params)).actual_instance
    assert isinstance(refused, generated.Refusal), refused
    assert (refused.code, refused.error_code.value) == ("1", "BAD_SIGNATURE")
