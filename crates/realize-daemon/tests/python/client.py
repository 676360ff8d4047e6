#!/usr/bin/env python3
"""Calls a running realized with a stock grpcio client.

Usage:
  client.py ADDRESS DAEMON_CERT CLIENT_CERT CLIENT_KEY PROTO_ROOT list DIR
  client.py ADDRESS DAEMON_CERT CLIENT_CERT CLIENT_KEY PROTO_ROOT upload DIR PATH FILE ALGORITHM

`list` prints "PATH SIZE" per final file. `upload` writes FILE whole to
PATH with one Write call (data, then a finish carrying the file's digest,
ALGORITHM `sha256` through hashlib or `blake3` through the blake3 package),
asks the daemon for the digest of the final file with Hash, and prints
"ALGORITHM HEX" once both agree. On a gRPC error the status code and
details go to stderr and the exit status is 1. The stubs are generated from
PROTO_ROOT/realize/v1/realize.proto at run time (needs grpcio, grpcio-tools).
"""

import hashlib
import importlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO = "realize/v1/realize.proto"
CHUNK = 256 * 1024


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


def digest_of(algorithm, data):
    if algorithm == "sha256":
        return hashlib.sha256(data).digest()
    import blake3  # PyPI's blake3, installed by .ci/run

    return blake3.blake3(data).digest()


def list_dir(pb2, stub, dir_id):
    request = pb2.ListRequest(dir=dir_id, include_partial=False)
    for entry in stub.List(request, timeout=30):
        print(entry.path, entry.stamp.size)


def upload(pb2, stub, dir_id, path, file, algorithm):
    data = read(file)
    enum = {
        "sha256": pb2.DIGEST_ALGORITHM_SHA256,
        "blake3": pb2.DIGEST_ALGORITHM_BLAKE3,
    }[algorithm]
    digest = pb2.Digest(algorithm=enum, value=digest_of(algorithm, data))

    def messages():
        header = pb2.WriteHeader(
            dir=dir_id,
            path=path,
            offset=0,
            file_size=len(data),
            whole_file=True,
            digest_algorithm=enum,
        )
        yield pb2.WriteRequest(header=header)
        for start in range(0, len(data), CHUNK):
            yield pb2.WriteRequest(data=data[start : start + CHUNK])
        yield pb2.WriteRequest(finish=pb2.WriteFinish(digest=digest))

    written = stub.Write(messages(), timeout=30)
    if written.bytes_written != len(data):
        sys.exit(f"wrote {written.bytes_written} of {len(data)} bytes")
    hashed = stub.Hash(
        pb2.HashRequest(dir=dir_id, path=path, algorithm=enum), timeout=30
    )
    if hashed.digest != digest:
        sys.exit(f"the daemon's digest {hashed.digest.value.hex()} differs")
    print(algorithm, digest.value.hex())


def main():
    address, daemon_cert, client_cert, client_key, proto_root, command, *args = sys.argv[1:]
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
            try:
                if command == "list":
                    list_dir(pb2, stub, *args)
                else:
                    upload(pb2, stub, *args)
            except grpc.RpcError as e:
                print(f"{e.code().name}: {e.details()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
