"""A TCP proxy that delivers every chunk it forwards a fixed delay later, in order, both ways: a WAN's round
trip on loopback, to measure what latency costs a pass (tc netem is not available on these machines).

    python scripts/latency_proxy.py 10 47211:57211 32319:42319

listens on 127.0.0.1:47211 for the server on 127.0.0.1:57211 and on :32319 for :42319, adding 10 ms each
way (a 20 ms round trip); point migrator.toml's ports at the listening ones. Bandwidth is not limited. The
README's figures "with 10 ms each way" were measured through it, alternating the code under test.
"""

from __future__ import annotations

import argparse
import asyncio


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward what `reader` gives to `writer`, each chunk `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    while True:
        data = await reader.read(65536)
        queue.put_nowait((loop.time() + delay, data))
        if not data:
            break
    await delivering


async def _serve(delay: float, routes: list[tuple[int, int]]) -> None:
    for listen, upstream in routes:
        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, upstream: int = upstream
                         ) -> None:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
            await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay),
                                 return_exceptions=True)
        await asyncio.start_server(handle, "127.0.0.1", listen)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("delay_ms", type=float, help="added delay each way, in milliseconds")
    parser.add_argument("routes", nargs="+", metavar="LISTEN:UPSTREAM", help="ports on 127.0.0.1")
    args = parser.parse_args()
    routes = [(int(listen), int(upstream)) for listen, upstream in (r.split(":") for r in args.routes)]
    asyncio.run(_serve(args.delay_ms / 1000, routes))


if __name__ == "__main__":
    main()
