"""Events reach every subscriber in the order they were emitted, cause before consequence,
whatever a subscriber does."""

from __future__ import annotations

from agent.events import Event, EventLog


def test_a_consequence_emitted_by_a_subscriber_arrives_after_its_cause() -> None:
    log = EventLog()
    seen: list[str] = []

    def monitor(ev: Event) -> None:  # subscribed first, like the health monitor
        if ev.kind == "workload.exited":
            log.emit("health.crash", ev.subject, "crashed -> restart-workload", "error")

    log.subscribe(monitor)
    log.subscribe(lambda ev: seen.append(ev.kind))  # like the MQTT link, later
    log.emit("workload.exited", "workload/p/w", "code 1", "warning")
    assert seen == ["workload.exited", "health.crash"]
    assert [e.kind for e in log.recent()] == ["workload.exited", "health.crash"]


def test_a_failing_subscriber_neither_stops_the_others_nor_the_emitter() -> None:
    log = EventLog()
    seen: list[str] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("a bug")

    log.subscribe(broken)
    log.subscribe(lambda ev: seen.append(ev.kind))
    log.emit("a", "s", "m")
    log.emit("b", "s", "m")
    assert seen == ["a", "b"] and log.internal_errors == {"events": 2}
