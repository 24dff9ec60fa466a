"""The membership state machine in the discrete-event simulator (virtual time)."""

from __future__ import annotations

import random

import pytest

from vsmcp.mesh.membership import MembershipConfig, MemberState, MemberStateChanged
from vsmcp.mesh.simulator import NetworkConfig, NodeStatus, Simulator, make_node_id

CFG = MembershipConfig.local()
VERDICTS = (MemberState.DEAD, MemberState.ZOMBIE)


def record_verdicts(sim: Simulator) -> list[tuple[float, str, MemberStateChanged]]:
    seen: list[tuple[float, str, MemberStateChanged]] = []

    def listener(now: float, observer: str, event: MemberStateChanged) -> None:
        if event.new in VERDICTS:
            seen.append((now, observer, event))

    sim.listeners.append(listener)
    return seen


def all_survivors_see(sim: Simulator, subject: str, state: MemberState) -> bool:
    return sim.views_of(subject) == {
        state.name: len(sim.running()) - (1 if sim.status(subject) is NodeStatus.RUNNING else 0)
    }


def test_node_ids_look_like_peer_ids() -> None:
    a, b = make_node_id(1, 0), make_node_id(1, 1)
    assert a != b and len(a) == 52 and a.startswith("12D3KooW")


def test_kill_one_of_ten_every_survivor_marks_it_dead() -> None:
    sim = Simulator(10, CFG, seed=11)
    verdicts = record_verdicts(sim)
    sim.run_until(3.0)
    victim = sim.ids[4]
    sim.kill(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.DEAD), 10.0)
    assert {(e.member, e.new) for _, _, e in verdicts} == {(victim, MemberState.DEAD)}


@pytest.mark.parametrize("seed", range(5))
def test_small_mesh_verdict_reaches_every_survivor_within_one_message_delay(seed: int) -> None:
    # Fixed 5 ms links: gossip alone needs rounds (0.1 s apart) to reach the last of 9;
    # the issuer's direct send reaches each survivor after one delay.
    network = NetworkConfig(delay_fn=lambda rng: 0.005)
    sim = Simulator(10, CFG, seed=100 + seed, network=network)
    verdicts = record_verdicts(sim)
    sim.run_until(3.0)
    victim = sim.ids[seed]
    sim.kill(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.DEAD), 10.0)
    times = sorted(t for t, _, e in verdicts if e.member == victim)
    assert len(times) == 9
    assert times[-1] - times[0] <= 0.005 + 1e-6


def test_stop_gives_zombie_not_dead_and_resume_gives_alive() -> None:
    sim = Simulator(10, CFG, seed=12)
    verdicts = record_verdicts(sim)
    sim.run_until(2.0)
    victim = sim.ids[2]
    sim.stop(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.ZOMBIE), 10.0)
    sim.run_for(3.0)
    assert {e.new for _, _, e in verdicts} == {MemberState.ZOMBIE}
    sim.resume(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.ALIVE), 5.0)
    assert sim.machine(victim).incarnation >= 1


def test_stopped_then_killed_becomes_dead_and_restart_rejoins() -> None:
    sim = Simulator(10, CFG, seed=13)
    sim.run_until(1.0)
    victim = sim.ids[7]
    sim.stop(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.ZOMBIE), 10.0)
    sim.kill(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.DEAD), 15.0)
    sim.restart(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.ALIVE), 5.0)
    assert len(sim.machine(victim).members()) == 10


def test_single_cut_link_is_not_a_false_positive() -> None:
    sim = Simulator(10, CFG, seed=14)
    verdicts = record_verdicts(sim)
    a, b = sim.ids[0], sim.ids[1]
    sim.cut(a, b)
    sim.run_until(60.0)
    assert verdicts == []
    assert sim.views_of(b) == {"ALIVE": 9}


def test_asymmetric_cut_is_not_a_false_positive() -> None:
    sim = Simulator(10, CFG, seed=15)
    verdicts = record_verdicts(sim)
    sim.cut(sim.ids[3], sim.ids[4], both_ways=False)
    sim.run_until(60.0)
    assert verdicts == []


def test_ten_percent_loss_long_run_has_zero_false_positives() -> None:
    sim = Simulator(10, CFG, seed=16, network=NetworkConfig(loss=0.10))
    verdicts = record_verdicts(sim)
    sim.run_until(300.0)
    assert verdicts == []
    for member in sim.ids:
        assert sim.views_of(member).get("ALIVE", 0) >= 8  # a suspicion may be in flight


def test_processing_lag_has_zero_false_positives() -> None:
    """Every event at every node late by an exponential 30 ms (a starved event loop)."""
    sim = Simulator(10, CFG, seed=17, network=NetworkConfig(processing_lag_s=0.03))
    verdicts = record_verdicts(sim)
    sim.run_until(120.0)
    assert verdicts == []


def test_partition_heals_and_members_come_back() -> None:
    sim = Simulator(10, CFG, seed=18)
    sim.run_until(1.0)
    minority = sim.ids[:3]
    sim.partition([minority])
    assert sim.run_until_true(
        lambda: all(sim.view(sim.ids[5], m) in VERDICTS for m in minority), 20.0
    )
    sim.heal_partition()
    assert sim.run_until_true(lambda: all(sim.views_of(m) == {"ALIVE": 9} for m in sim.ids), 30.0)


def test_new_member_is_disseminated_and_leave_is_seen() -> None:
    sim = Simulator(50, CFG, seed=19)
    sim.run_until(1.0)
    newcomer = sim.add_node()
    assert sim.run_until_true(lambda: sim.views_of(newcomer) == {"ALIVE": 50}, 5.0)
    assert len(sim.machine(newcomer).members()) == 51
    sim.leave(sim.ids[10])
    assert sim.run_until_true(
        lambda: (
            sim.views_of(sim.ids[10], [m for m in sim.running() if m != sim.ids[10]])
            == {"LEFT": 50}
        ),
        5.0,
    )


def test_thousand_nodes_run_to_completion() -> None:
    sim = Simulator(1000, CFG, seed=20, network=NetworkConfig(wire_roundtrip=False))
    verdicts = record_verdicts(sim)
    sim.run_until(1.0)
    victim = sim.ids[123]
    sim.kill(victim)
    assert sim.run_until_true(lambda: sim.views_of(victim) == {"DEAD": 999}, 15.0, step=0.5)
    assert {e.member for _, _, e in verdicts} == {victim}


def test_custom_delay_distribution_still_detects_and_has_no_false_positive() -> None:
    def delay(rng: random.Random) -> float:
        return rng.lognormvariate(-5.0, 1.0)  # median 7 ms, long tail

    sim = Simulator(10, CFG, seed=21, network=NetworkConfig(delay_fn=delay))
    verdicts = record_verdicts(sim)
    sim.run_until(30.0)
    assert verdicts == []
    victim = sim.ids[0]
    sim.kill(victim)
    assert sim.run_until_true(lambda: all_survivors_see(sim, victim, MemberState.DEAD), 10.0)
