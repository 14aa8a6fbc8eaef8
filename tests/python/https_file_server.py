#!/usr/bin/env python3
"""Serve one directory over HTTPS on 127.0.0.1 (an ephemeral port), for the
tests' identity-provider stand-in: a JWKS URL that hsmgate-rest fetches.

    https_file_server.py DIR CERT_FILE KEY_FILE

Prints "port N" on stdout once listening; serves until killed. GET only.
"""

import functools
import http.server
import ssl
import sys


def main(directory, cert, key):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("port %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:4])
