"""Push over MQTT -> workload running in its cgroup, against the broker's own delivery.

  agent:  a planner publishes a signed profile (QoS 1) that adds a partition with one
          workload; the clock stops at the agent's workload.started event (the process
          joined its cgroup before exec). A second, untimed push removes it again.
  floor:  the same broker delivering a message of the same size from one client to
          another (QoS 1), in the same run; and mosquitto_pub (a new process each time)
          to a subscriber, the figure the issue names.
  Nagle:  the broker with and without ``set_tcp_nodelay true``; and the first QoS 1
          publish on a fresh connection, with and without TCP_NODELAY on the client.

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.mqtt_latency [N]
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import yaml

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import MqttConfig
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt import MqttLink
from agent.sources.mqtt_wire import payload_bytes
from agent.sources.signing import generate, load_private, seal
from bench._util import row, summary
from tests.brokers import plain_broker
from tests.conftest import CGROUP_ROOT, purge_prefix

NODE = "bench-board"
BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})


def mission(gen: int, extra: bool) -> bytes:
    w = {"name": "w", "command": ["/bin/sleep", "3600"], "user": "nobody"}
    parts = [{"name": "base", "criticality": "C", "memory_mib": 32, "pids_max": 8,
              "budget": {"quota_us": 10_000, "period_us": 100_000}, "workloads": [w]}]
    if extra:
        parts.append({"name": f"new{gen}", "criticality": "E", "memory_mib": 32,
                      "pids_max": 8, "budget": {"quota_us": 20_000, "period_us": 100_000},
                      "workloads": [w]})
    return yaml.safe_dump({"name": "bench", "generation": gen, "partitions": parts}).encode()


async def first_publish_ms(port: int, nodelay: bool) -> float:
    opts = [(6, 1, 1)] if nodelay else []  # IPPROTO_TCP, TCP_NODELAY
    async with aiomqtt.Client("127.0.0.1", port, socket_options=opts) as c:
        t = time.perf_counter()
        await c.publish("bench/nagle", b"x" * 200, qos=1)
        return (time.perf_counter() - t) * 1000


async def main(n: int) -> None:
    for nodelay in (True, False):
        await measure(n, nodelay)


async def measure(n: int, nodelay: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    tmp.chmod(0o755)
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    generate(tmp / "keys", "planner")
    key = load_private(tmp / "keys" / "planner.key")
    with plain_broker(tmp, nodelay=nodelay) as broker:
        # Nagle first: fresh connections, alternating.
        nagle: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(10):
            for nd in (False, True):
                nagle[nd].append(await first_publish_ms(broker.port, nd))
        cfg = AgentConfig(state_dir=tmp / "state", run_dir=tmp / "run", log_dir=tmp / "logs",
                          cgroup_prefix=prefix, agent_cgroup=False, isolate_os=False,
                          report_dir=None)
        engine = Engine(cfg, BOARD, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
        await engine.start()
        link = MqttLink(MqttConfig(url=broker.url, trusted_keys={
            "planner": (tmp / "keys" / "planner.pub").read_text().strip()}), NODE, engine,
            GenerationLedger(cfg.state_dir))
        task = asyncio.get_running_loop().create_task(link.run_forever())
        started: dict[str, float] = {}
        engine.events.subscribe(lambda ev: started.__setitem__(ev.subject, ev.at)
                                if ev.kind == "workload.started" else None)
        agent, floor, floor_tool = [], [], []
        try:
            while not link.connected:
                await asyncio.sleep(0.01)
            async with aiomqtt.Client("127.0.0.1", broker.port,
                                      socket_options=[(6, 1, 1)]) as planner, \
                    aiomqtt.Client("127.0.0.1", broker.port,
                                   socket_options=[(6, 1, 1)]) as listener:
                await listener.subscribe("bench/floor", qos=1)
                await planner.subscribe(f"sortie/v1/{NODE}/acks", qos=1)
                gen = 1
                for _ in range(n):
                    data = mission(gen, True)
                    env = seal(key, "planner", NODE, "bench", gen, data)
                    subject = f"workload/new{gen}/w"
                    t0 = time.time()
                    await planner.publish(f"sortie/v1/{NODE}/profiles", env, qos=1)
                    while subject not in started:
                        await asyncio.sleep(0.0005)
                    agent.append((started[subject] - t0) * 1000)
                    gen += 1
                    await planner.publish(f"sortie/v1/{NODE}/profiles",
                                          seal(key, "planner", NODE, "bench", gen,
                                               mission(gen, False)), qos=1)
                    # Wait for the board's answer to the removal: the next push then
                    # finds the agent idle, as a planner pacing its pushes would.
                    async for msg in planner.messages:
                        if f'"generation": {gen}' in payload_bytes(msg.payload).decode():
                            break
                    gen += 1
                    # floor: the broker delivering the same envelope size, client to client
                    t1 = time.perf_counter()
                    await planner.publish("bench/floor", env, qos=1)
                    async for msg in listener.messages:
                        if payload_bytes(msg.payload) == env:
                            break
                    floor.append((time.perf_counter() - t1) * 1000)
                for _ in range(min(n, 50)):
                    t2 = time.perf_counter()
                    proc = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p",
                                             str(broker.port), "-q", "1", "-t", "bench/floor",
                                             "-m", "tool"])
                    async for msg in listener.messages:
                        if payload_bytes(msg.payload) == b"tool":
                            break
                    floor_tool.append((time.perf_counter() - t2) * 1000)
                    proc.wait()
        finally:
            await link.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.shutdown(teardown=True)
            purge_prefix(prefix)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"push -> workload running in its cgroup, {n} pushes (signed, QoS 1, loopback), "
          f"broker {'set_tcp_nodelay true' if nodelay else 'defaults (Nagle on)'}")
    print(row("sortie: push -> running", summary(agent)))
    print(row("floor: broker delivery (client)", summary(floor)))
    print(row("floor: mosquitto_pub -> subscriber", summary(floor_tool)))
    a = summary(agent)
    print(f"target p99 <= 50 ms: {'met' if a['p99'] <= 50 else 'MISSED'}")
    print("first QoS 1 publish on a fresh connection (10 each):")
    print(row("  default socket (Nagle on)", summary(nagle[False])))
    print(row("  TCP_NODELAY", summary(nagle[True])))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
