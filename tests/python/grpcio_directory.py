"""A directory written with Python grpcio (an independent gRPC and TLS stack,
BoringSSL), serving TLS and requiring client certificates; the gateway's
directory client is checked against it by tests/tests/grpcio_directory.rs.

usage: grpcio_directory.py PROTO_DIR CERT KEY CLIENT_CA

Grants demo-app the partition `demo` on pool `default` from 127.0.0.1/32 and
denies everything else. Prints `listening PORT` once serving, and one
`authorize client_id=... gateway_id=... peer_cn=...` line per call.
"""

import importlib
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp()
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(proto_dir, "hsmgate/directory/v1/directory.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    pb = importlib.import_module("hsmgate.directory.v1.directory_pb2")
    rpc = importlib.import_module("hsmgate.directory.v1.directory_pb2_grpc")
    return pb, rpc


def main():
    proto_dir, cert, key, client_ca = sys.argv[1:5]
    pb, rpc = stubs(proto_dir)

    class Directory(rpc.DirectoryServicer):
        def Authorize(self, request, context):
            names = context.auth_context().get("x509_common_name", [b"?"])
            print(f"authorize client_id={request.client_id} gateway_id={request.gateway_id} "
                  f"peer_cn={names[0].decode()}", flush=True)
            if request.client_id == "demo-app" and request.partition == "demo":
                return pb.AuthorizeResponse(
                    decision=pb.DECISION_ALLOW, reason=pb.REASON_OK, pool="default",
                    allowed_networks=["127.0.0.1/32"], max_sessions=16, ttl_seconds=60)
            return pb.AuthorizeResponse(
                decision=pb.DECISION_DENY, reason=pb.REASON_UNKNOWN_CLIENT, ttl_seconds=5)

    read = lambda path: open(path, "rb").read()
    credentials = grpc.ssl_server_credentials(
        [(read(key), read(cert))], root_certificates=read(client_ca),
        require_client_auth=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_DirectoryServicer_to_server(Directory(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
