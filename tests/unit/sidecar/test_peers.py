"""Which processes are the pod's peers, and when they are gone."""

from __future__ import annotations

from sidecar import peers


def test_peers_are_the_processes_outside_my_tree_and_the_pause() -> None:
    table = [(1, 0), (7, 0), (8, 7), (20, 0), (21, 20)]  # pause, me + child, app + child
    assert peers.others(table, me=7) == {20, 21}
    w = peers.PeerWatch()
    assert not w.gone(set())  # nothing seen yet: the app has not started
    assert not w.gone({20})
    assert w.gone(set())
    assert peers.process_table()  # this very process at least
