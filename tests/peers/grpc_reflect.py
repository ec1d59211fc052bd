#!/usr/bin/env python3
"""A gRPC client that knows nothing of Vigil's .proto: it lists the services by
server reflection, asks grpc.health.v1, and calls a method it found, building the
messages from the descriptors the server sent. Prints one JSON object.

usage: grpc_reflect.py ADDR CA [--cert CERT --key KEY] [--token TOKEN] METHOD
METHOD is Service/Method, e.g. vigil.v1.Agent/Stats (called with an empty request).
"""
import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("ca")
    p.add_argument("method")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--token")
    a = p.parse_args()
    ca = open(a.ca, "rb").read()
    key = open(a.key, "rb").read() if a.key else None
    cert = open(a.cert, "rb").read() if a.cert else None
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(a.addr, creds)
    out = {}
    try:
        db = ProtoReflectionDescriptorDatabase(channel)
        out["services"] = sorted(db.get_services())
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
        pool = descriptor_pool.DescriptorPool(db)
        service, method = a.method.split("/")
        m = pool.FindServiceByName(service).FindMethodByName(method)
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        metadata = [("authorization", f"Bearer {a.token}")] if a.token else None
        try:
            answer = call(req(), metadata=metadata, timeout=10)
            out["answer"] = json_format.MessageToDict(answer)
        except grpc.RpcError as e:
            out["error"] = {"code": e.code().name, "details": e.details()}
    except grpc.RpcError as e:
        out["failed"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
