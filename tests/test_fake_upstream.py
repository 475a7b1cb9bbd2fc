"""topup.fake_upstream.FakeUpstream on its own; the guide's FakeAcme runs the whole
conformance suite on it (tests/test_plugin_guide.py)."""

from __future__ import annotations

import httpx
import pytest

from topup import CallbackRequest
from topup.fake_upstream import FakeReply, FakeRequest, FakeTransaction, FakeUpstream
from topup.testing import FAIL, NEVER_SETTLE, REJECT, SUCCEED


class PlainFake(FakeUpstream):
    """A supplier that answers every top-up with the state it settled in, in yuan."""

    def answer(self, request: FakeRequest) -> FakeReply:
        asked = request.json()
        made = self.top_up(asked["reference"], asked["phone"], int(asked["yuan"] * 100))
        return FakeReply(200, {"state": made.state, "submits": made.submits})

    def error_answer(self, fault: str) -> FakeReply:
        return FakeReply(503, {"error": fault})


class CallingBackFake(PlainFake):
    def callback(self, transaction: FakeTransaction, signed: bool) -> CallbackRequest:
        return CallbackRequest(transaction.state.encode(), {"signed": str(signed)}, {})


@pytest.fixture(params=[PlainFake, CallingBackFake])
def fake(request: pytest.FixtureRequest):
    with request.param() as fake:
        yield fake


def top_up(fake: FakeUpstream, reference: str, phone: str) -> httpx.Response:
    body = {"reference": reference, "phone": phone, "yuan": 10}
    return httpx.post(f"{fake.url}/topup", json=body, timeout=5)


def test_the_number_decides_and_the_fake_counts(fake: FakeUpstream) -> None:
    assert top_up(fake, "R1", fake.phone(SUCCEED)).json() == {"state": "succeeded", "submits": 1}
    assert top_up(fake, "R2", fake.phone(FAIL)).json()["state"] == "failed"
    assert top_up(fake, "R3", fake.phone(REJECT)).json()["state"] == "refused"
    assert top_up(fake, "R1", fake.phone(SUCCEED)).json()["submits"] == 2
    assert (fake.submissions("R1"), fake.charges("R1")) == (2, 1)
    assert (fake.submissions("R2"), fake.charges("R2")) == (1, 0)
    assert fake.find("R3") is None and fake.submissions("R3") == 1
    assert fake.received("R1").face_value == 1000 and fake.received("R9") is None


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        ("error_after_topup", 500, "Internal Server Error"),
        ("busy", 503, '{"error": "busy"}'),
        ("undocumented_error", 503, '{"error": "undocumented_error"}'),
    ],
)
def test_a_fault_loses_the_answer_not_the_top_up(
    fake: FakeUpstream, fault: str, status: int, body: str
) -> None:
    phone = fake.phone(SUCCEED)
    fake.inject(phone, fault)
    answered = top_up(fake, "R4", phone)
    assert (answered.status_code, answered.text) == (status, body)
    assert fake.find("R4").state == "succeeded" and fake.charges("R4") == 1


def test_an_unknown_fault_is_refused(fake: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="unknown fault 'slow'"):
        fake.inject(fake.phone(SUCCEED), "slow")


def test_callbacks_are_made_of_what_the_fake_holds(fake: FakeUpstream) -> None:
    if isinstance(fake, PlainFake) and not isinstance(fake, CallingBackFake):
        assert fake.callbacks("R1") is None, "a supplier without callbacks"
        return
    assert fake.callbacks("R1") == [], "nothing about an order not received"
    top_up(fake, "R1", fake.phone(SUCCEED))
    assert fake.callbacks("R1") == [CallbackRequest(b"succeeded", {"signed": "True"}, {})]
    phone = fake.phone(SUCCEED)
    fake.inject(phone, "bad_signature_callback")
    top_up(fake, "R2", phone)
    assert fake.callbacks("R2")[0].headers == {"signed": "False"}
    top_up(fake, "R3", fake.phone(NEVER_SETTLE))
    assert fake.callbacks("R3") == [], "nothing until it settles"
    phone = fake.phone(NEVER_SETTLE)
    fake.inject(phone, "processing_callback")
    top_up(fake, "R4", phone)
    assert fake.callbacks("R4")[0].body == b"processing"


def test_a_protocol_error_is_answered_500_and_kept(fake: FakeUpstream) -> None:
    answered = httpx.post(f"{fake.url}/topup", content=b"not json", timeout=5)
    assert answered.status_code == 500 and "JSONDecodeError" in answered.text
    assert len(fake.errors) == 1
