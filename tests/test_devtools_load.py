"""The closed-loop load generator records every outcome, a cut-off reply included."""
from __future__ import annotations

import http.client
import itertools

from devtools.load import hammer
from devtools.server import Reply


def test_a_reply_cut_off_mid_body_is_an_outcome_and_the_client_goes_on() -> None:
    calls = itertools.count()

    def send() -> Reply:
        if next(calls) == 1:  # what http.client raises when a killed worker drops the body
            raise http.client.IncompleteRead(b"", 96)
        return Reply(200, {}, b"{}", 0.001)

    outcomes = hammer(send, clients=1, seconds=0.2)
    errors = [o for o in outcomes if o.status == 0]
    assert [o.error for o in errors] == ["IncompleteRead"]
    assert sum(o.status == 200 for o in outcomes) > 2  # the client kept sending after it
