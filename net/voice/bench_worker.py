"""A process of listen-only SFU seats for `deeproom bench voice` (run inside the SFU namespace).

    python -m deeproom.net.voice.bench_worker --relay URL --room ROOM --listeners N --address A --seconds S

Joins N participants, waits until each hears the speaker through the SFU, prints
"ready", waits for "go" on stdin, pulls every mixer in real time for S seconds and
prints one JSON line: the output onset times (perf_counter: CLOCK_MONOTONIC, the
same clock in every process on the machine), packets lost and received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from deeproom.net.voice.audio import SilenceTrack
from deeproom.net.voice.bench import OutputProbe
from deeproom.net.voice.session import VoiceConfig


async def main(args: argparse.Namespace) -> dict[str, object]:
    from deeproom.net import RoomClient
    from deeproom.net.voice.room import RoomVoice

    async with contextlib.AsyncExitStack() as stack:
        seats = []
        for i in range(args.listeners):
            c = await stack.enter_async_context(RoomClient(args.relay, room=args.room, name=f"{args.tag}{i}"))
            seats.append(await stack.enter_async_context(
                RoomVoice(c, SilenceTrack(), VoiceConfig(addresses=(args.address,), publish=False))
            ))
        deadline = time.perf_counter() + 90
        while not all(
            s.session.sfu is not None and any(link.frames_rx for link in s.session.sfu.subscribers.values())
            for s in seats
        ):
            if time.perf_counter() > deadline:
                raise TimeoutError("listeners got no audio within 90 s")
            await asyncio.sleep(0.05)
        for s in seats:
            s.mixer.set_position(args.speaker, (0.0, 1.6, 1.0))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        probe = OutputProbe({str(i): s.mixer for i, s in enumerate(seats)})
        await probe.run(args.seconds)
        lost = received = 0
        for s in seats:
            for link in s.session.sfu.subscribers.values():
                for st in (await link.pc.getStats()).values():
                    if getattr(st, "type", "") == "inbound-rtp":
                        lost += max(0, int(st.packetsLost))
                        received += int(st.packetsReceived)
        links = [link for s in seats for link in s.session.sfu.subscribers.values()]
        return {
            "onsets": probe.onsets, "lost": lost, "received": received, "late_blocks": probe.late_blocks,
            "frames_late": sum(link.frames_late for link in links), "frames_rx": sum(link.frames_rx for link in links),
        }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--relay", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--listeners", type=int, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--speaker", required=True)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--tag", default="L")
    a = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    print(json.dumps(asyncio.run(main(a))), flush=True)
