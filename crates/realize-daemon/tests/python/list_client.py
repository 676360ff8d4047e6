#!/usr/bin/env python3
"""Lists a directory of a running realized with a stock grpcio client.

Usage: list_client.py ADDRESS DIR DAEMON_CERT CLIENT_CERT CLIENT_KEY PROTO_ROOT

Prints "PATH SIZE" per final file and exits 0; on a gRPC error prints the
status code and details to stderr and exits 1. The stubs are generated from
PROTO_ROOT/realize/v1/realize.proto at run time (needs grpcio, grpcio-tools).
"""

import importlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO = "realize/v1/realize.proto"


def load_stubs(proto_root, out_dir):
    """Generates realize_pb2 / realize_pb2_grpc into out_dir and imports them."""
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {proto_root}/{PROTO}")
    sys.path.insert(0, out_dir)
    module = PROTO.removesuffix(".proto").replace("/", ".")
    return (
        importlib.import_module(module + "_pb2"),
        importlib.import_module(module + "_pb2_grpc"),
    )


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    address, dir_id, daemon_cert, client_cert, client_key, proto_root = sys.argv[1:]
    with tempfile.TemporaryDirectory() as out_dir:
        pb2, pb2_grpc = load_stubs(proto_root, out_dir)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(daemon_cert),
            private_key=read(client_key),
            certificate_chain=read(client_cert),
        )
        # Our certificates name "realize", not the host we dial.
        options = [("grpc.ssl_target_name_override", "realize")]
        with grpc.secure_channel(address, credentials, options=options) as channel:
            stub = pb2_grpc.RealizeStub(channel)
            request = pb2.ListRequest(dir=dir_id, include_partial=False)
            try:
                for entry in stub.List(request, timeout=30):
                    print(entry.path, entry.stamp.size)
            except grpc.RpcError as e:
                print(f"{e.code().name}: {e.details()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
