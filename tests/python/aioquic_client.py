"""An independent QUIC client (aioquic) against the hsmgate QUIC listener.

    aioquic_client.py HOST PORT garbage   # ALPN hsmgate/1, garbage on the first stream
    aioquic_client.py HOST PORT alpn      # offers only ALPN h3

Prints one JSON object: what the handshake negotiated, the bytes received on
the stream, whether the stream ended, and the connection's close code. Every
wait is bounded (5 s).
"""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived

WAIT = 5.0


class Probe(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpn = None
        self.data = b""
        self.stream_ended = False
        self.close_code = None
        self.close_reason = None
        self.terminated = asyncio.Event()
        self.stream_done = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, StreamDataReceived):
            self.data += event.data
            if event.end_stream:
                self.stream_ended = True
                self.stream_done.set()
        elif isinstance(event, ConnectionTerminated):
            self.close_code = event.error_code
            self.close_reason = event.reason_phrase
            self.terminated.set()
            self.stream_done.set()


async def garbage(host, port):
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["hsmgate/1"],
        verify_mode=ssl.CERT_NONE,
        server_name="hsmgate",
    )
    async with connect(host, port, configuration=config, create_protocol=Probe) as probe:
        stream = probe._quic.get_next_available_stream_id()
        probe._quic.send_stream_data(stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", end_stream=False)
        probe.transmit()
        await asyncio.wait_for(probe.stream_done.wait(), WAIT)
        await asyncio.wait_for(probe.terminated.wait(), WAIT)
        return {
            "alpn": probe.alpn,
            "stream": probe.data.hex(),
            "stream_ended": probe.stream_ended,
            "close_code": probe.close_code,
        }


async def wrong_alpn(host, port):
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        verify_mode=ssl.CERT_NONE,
        server_name="hsmgate",
    )
    try:
        async with connect(host, port, configuration=config, create_protocol=Probe) as probe:
            await asyncio.wait_for(probe.terminated.wait(), WAIT)
            return {"connected": True, "alpn": probe.alpn, "close_code": probe.close_code}
    except ConnectionError as e:
        return {"connected": False, "error": str(e)}


def main():
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    run = {"garbage": garbage, "alpn": wrong_alpn}[mode]
    print(json.dumps(asyncio.run(asyncio.wait_for(run(host, port), 3 * WAIT))))


if __name__ == "__main__":
    main()
