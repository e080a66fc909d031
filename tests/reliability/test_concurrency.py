"""Concurrency: 10 sessions of 4 nodes each at once in one Host, several rounds.

Every session uses the same node ids (src, fwd1, fwd2, sink) and the same pipeline name, so
only the session id keeps their channels apart; each source has its own seed, and each sink
must see exactly its own source's messages — every sequence number once, in order, intact —
and nothing of any other session. Rounds alternate the channel capacity between the default
and one that holds only a few messages, so that writers block on backpressure while other
sessions run beside them.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from .conftest import Tracker, option
from .support import finish, probe_pipeline, record

SESSIONS = 10


def test_ten_concurrent_sessions_no_hang_no_crosstalk(request: pytest.FixtureRequest,
                                                      tracked: Tracker, tmp_out: Path) -> None:
    rounds = option(request.config, "--concurrency-rounds")
    rng = random.Random(11)
    round_walls = []
    checked = 0
    for round_ in range(rounds):
        small = round_ % 2 == 1
        plans = []
        for i in range(SESSIONS):
            seed = 10_000 * (round_ + 1) + i
            count = rng.randint(150, 400)
            payload = rng.choice([256, 1024, 4096]) if small else rng.choice([64, 4096, 65536])
            out = tmp_out / f"r{round_}-s{i}.json"
            config = probe_pipeline(
                out, name="concurrent", seed=seed, count=count, payload=payload,
                capacity=4 * 4096 if small else None,
                middle=[{"id": "fwd1", "type": "Forward"}, {"id": "fwd2", "type": "Forward"}])
            plans.append((seed, count, payload, out, config))
        started = time.monotonic()
        sessions = [tracked.host.start_session(p[4]) for p in plans]
        assert len({s.id for s in sessions}) == SESSIONS
        outcomes = [finish(s) for s in sessions]  # anti-hang: each stopped and failed past 180 s
        round_walls.append(time.monotonic() - started)
        for (seed, count, payload, out, _), outcome in zip(plans, outcomes, strict=True):
            assert outcome.result.ok, f"round {round_}: {outcome.result.reason}"
            summary = json.loads(out.read_text())
            assert summary["session_id"] == outcome.session_id
            assert summary["seeds"] == {str(seed): count}, \
                f"round {round_}: sink of seed {seed} saw {summary['seeds']}"
            assert (summary["count"], summary["in_order"], summary["intact"],
                    summary["sizes"]) == (count, True, True, [payload])
            checked += 1
    record("concurrency", rounds=rounds, sessions_per_round=SESSIONS, nodes_per_session=4,
           sessions_checked=checked, crosstalk=0, hangs=0,
           round_wall_s_max=round(max(round_walls), 1))
