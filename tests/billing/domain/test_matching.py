from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.matching import Query, bare_metadata_query, parse_query, rank_customers
from billing.errors import BadQueryError

WRAPPERS = [
    "{}",
    "  {}  ",
    "<mailto:{0}|{0}>",
    "<mailto:{0}>",
    "mailto:{0}|{0}",
    '"{}"',
    "'{}'",
    "<{}>",
    '"<mailto:{0}|{0}>"',
    "\t<{}>\n",
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jane@acme.com", Query("email", "jane@acme.com")),
        ("Mixed.Case@Example.com", Query("email", "Mixed.Case@Example.com")),
        ("<mailto:jane@acme.com|jane@acme.com>", Query("email", "jane@acme.com")),
        ("<mailto:jane@acme.com|Jane at Acme>", Query("email", "jane@acme.com")),
        ("  'cus_NffrFeUfNV2Hib'  ", Query("customer_id", "cus_NffrFeUfNV2Hib")),
        ("cus_123", Query("customer_id", "cus_123")),
        ("o'brien+billing@mail.example.co.uk", Query("email", "o'brien+billing@mail.example.co.uk")),
        ("<mailto:a|b@x.io|a|b@x.io>", Query("email", "a|b@x.io")),
    ],
)
def test_parses_accepted_forms(raw: str, expected: Query) -> None:
    assert parse_query(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["foo", "", "   ", "jane@", "@acme.com", "jane acme@acme.com", "jane@acme", "cus_", "sub_sched_123",
     "jane@acme.com, bob@acme.com", "<mailto:|>", "cus_12 3", "x" * 600],
)
def test_refuses_anything_else_with_one_sentence(raw: str) -> None:
    with pytest.raises(BadQueryError) as info:
        parse_query(raw)
    message = str(info.value)
    assert "cus_" in message and "mailto:" in message
    assert message.endswith(".") and "\n" not in message


def test_error_names_what_was_wrong() -> None:
    expected = r"^'foo' is not an email address, a Stripe id or an invoice number; give"
    with pytest.raises(BadQueryError, match=expected):
        parse_query("foo")


@given(email=st.emails(), wrapper=st.sampled_from(WRAPPERS))
def test_every_valid_email_round_trips_through_every_wrapper(email: str, wrapper: str) -> None:
    assert parse_query(wrapper.format(email)) == Query("email", email)


@given(raw=st.text(max_size=80))
def test_garbage_only_ever_raises_bad_query(raw: str) -> None:
    try:
        query = parse_query(raw)
    except BadQueryError as err:
        assert str(err)
    else:
        assert query.value and not any(ch.isspace() for ch in query.value)


@given(email=st.emails(), space=st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003"]), data=st.data())
def test_never_accepts_whitespace_inside_an_address(email: str, space: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=1, max_value=len(email) - 1))
    with pytest.raises(BadQueryError):
        parse_query(email[:at] + space + email[at:])


def _customer(
    cid: str, created: int, livemode: bool = False, statuses: tuple[str, ...] = ()
) -> dict[str, object]:
    subs = [{"id": f"sub_{cid}_{i}", "status": s} for i, s in enumerate(statuses)]
    return {"id": cid, "created": created, "livemode": livemode,
            "subscriptions": {"object": "list", "data": subs}}


def test_rank_live_then_paying_then_trialing_then_newest() -> None:
    customers = [
        _customer("cus_test_paying", 500, statuses=("active",)),
        _customer("cus_live_none_new", 900, livemode=True),
        _customer("cus_live_trial", 100, livemode=True, statuses=("trialing",)),
        _customer("cus_live_pastdue_old", 50, livemode=True, statuses=("canceled", "past_due")),
        _customer("cus_live_none_old", 10, livemode=True),
        _customer("cus_test_none", 800),
    ]
    ranked = [c["id"] for c in rank_customers(customers)]
    assert ranked == [
        "cus_live_pastdue_old",
        "cus_live_trial",
        "cus_live_none_new",
        "cus_live_none_old",
        "cus_test_paying",
        "cus_test_none",
    ]


def test_rank_canceled_only_counts_as_none_and_newest_wins() -> None:
    older = _customer("cus_old", 100, statuses=("canceled",))
    newer = _customer("cus_new", 200)
    assert [c["id"] for c in rank_customers([older, newer])] == ["cus_new", "cus_old"]


# ---- pasted links and client secrets ----------------------------------------------------------------

DASH = "https://dashboard.stripe.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"{DASH}/customers/cus_123", Query("customer_id", "cus_123")),
        (f"{DASH}/test/subscriptions/sub_123", Query("subscription", "sub_123")),
        (f"{DASH}/invoices/in_123", Query("invoice", "in_123")),
        (f"{DASH}/payments/pi_123", Query("payment_intent", "pi_123")),
        (f"{DASH}/test/payments/ch_123", Query("charge", "ch_123")),  # an older payment is a charge
        (f"{DASH}/acct_1Abc/test/customers/cus_123?tab=invoices#x", Query("customer_id", "cus_123")),
        (f"{DASH}/customers/cus_123/", Query("customer_id", "cus_123")),
        ("HTTPS://Dashboard.Stripe.com/customers/cus_123", Query("customer_id", "cus_123")),
        ("dashboard.stripe.com/test/invoices/in_9", Query("invoice", "in_9")),
        # Slack wraps a link it recognised, with or without a label.
        (f"<{DASH}/customers/cus_123>", Query("customer_id", "cus_123")),
        (f"<{DASH}/customers/cus_1|dashboard.stripe.com/customers/cus_1>", Query("customer_id", "cus_1")),
        (f" <{DASH}/test/invoices/in_9|Invoice 0HIAXQK6-0004> ", Query("invoice", "in_9")),
        # A payment intent's client secret (what a checkout page holds): only the id is read.
        ("pi_3Mx_secret_abcDEF123", Query("payment_intent", "pi_3Mx")),
        ("'pi_3Mx_secret_abcDEF123'", Query("payment_intent", "pi_3Mx")),
    ],
)
def test_a_dashboard_link_or_a_client_secret_is_read_as_the_id(raw: str, expected: Query) -> None:
    assert parse_query(raw) == expected
    assert parse_query(raw, ("user_id",)) == expected
    assert bare_metadata_query(raw, ("user_id",)) is None  # never re-read as a metadata value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://evil.example/customers/cus_123", "is a link to another site than the Stripe dashboard"),
        ("https://dashboard.stripe.com.evil.example/customers/cus_1", "is a link to another site"),
        ("<https://evil.example/customers/cus_1|dashboard.stripe.com/customers/cus_1>", "another site"),
        ("http://[::1/customers/cus_1", "is a link to another site"),
        (f"{DASH}/products/prod_123", "is a Stripe dashboard link, but not to a customer, subscription"),
        (f"{DASH}/customers/sub_123", "is a Stripe dashboard link, but not to a customer"),
        (f"{DASH}/test/customers", "is a Stripe dashboard link, but not to a customer"),
    ],
)
def test_another_link_is_refused_in_one_sentence(raw: str, expected: str) -> None:
    with pytest.raises(BadQueryError) as info:
        parse_query(raw, ("user_id",))
    message = str(info.value)
    assert expected in message and "dashboard link" in message  # and what is accepted
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    "raw", ["seti_1Abc_secret_XYZ789", "pi_1Abc_secret_XYZ789 extra", "user_id:pi_1_secret_XYZ789"]
)
def test_a_client_secret_is_never_repeated_in_a_refusal(raw: str) -> None:
    with pytest.raises(BadQueryError) as info:
        parse_query(raw)
    assert "XYZ789" not in str(info.value)


def test_another_client_secret_is_never_read_as_the_one_keys_value() -> None:
    # It would be sent to Stripe's customer search as a user_id.
    with pytest.raises(BadQueryError, match=r"^'seti_1Abc_secret_…' is a Stripe client secret"):
        parse_query("seti_1Abc_secret_XYZ789", ("user_id",))
