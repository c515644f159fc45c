#!/usr/bin/env python3
"""An independent client of the gateway's control service, in Python with grpcio.

Stubs are generated at run time by grpcio-tools from the same .proto files the Rust code
is built from, so this checks the wire contract, not a copy of it. Against a running
gateway (started by control/tests/python_peer.rs) it applies a transaction, reads it
back, checks that a bad transaction is refused whole, checks health, and lists the
services through server reflection.

Usage: peer.py --socket PATH --proto-dir control/api/proto
Exits 0 when every check passed; an AssertionError (exit 1) names the one that failed.
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc

PROTOS = ["sluice/v1/objects.proto", "sluice/v1/gateway.proto"]


def generate_stubs(proto_dir, out_dir):
    """Compiles the protos with grpcio-tools into out_dir and imports them."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS]
    )
    assert rc == 0, f"protoc failed with {rc}"
    sys.path.insert(0, out_dir)
    objects = importlib.import_module("sluice.v1.objects_pb2")
    gateway = importlib.import_module("sluice.v1.gateway_pb2")
    gateway_grpc = importlib.import_module("sluice.v1.gateway_pb2_grpc")
    return objects, gateway, gateway_grpc


class Checks:
    def __init__(self):
        self.passed = 0

    def ok(self, condition, what):
        assert condition, what
        self.passed += 1


def world(o):
    """A small tenant world built with the generated messages."""
    host = lambda ip, mac: o.Object(host=o.Host(ip=ip, mac=mac))
    endpoint = lambda ip, mac: o.Object(
        endpoint=o.Endpoint(vni=4242, ip=ip, mac=mac, host="198.18.7.11"))
    return o.Transaction(upserts=[
        host("198.18.7.1", "02:00:00:00:07:01"),
        host("198.18.7.11", "02:00:00:00:07:11"),
        o.Object(vpc=o.Vpc(vni=4242, cidr="10.42.0.0/16", service_cidr="10.96.0.0/12",
                           dividers=["198.18.7.1"])),
        o.Object(subnet=o.Subnet(vni=4242, cidr="10.42.1.0/24",
                                 router_mac="02:aa:00:42:01:01", bouncers=["198.18.7.1"])),
        endpoint("10.42.1.10", "0a:58:0a:2a:01:0a"),
        endpoint("10.42.1.11", "0a:58:0a:2a:01:0b"),
        o.Object(service=o.Service(
            vni=4242, vip="10.96.4.2", port=53, protocol=o.PROTOCOL_UDP,
            backends=[o.Backend(ip="10.42.1.10", port=5353),
                      o.Backend(ip="10.42.1.11", port=5353, weight=0)])),
    ])


def listing(stub, g, kind):
    objects, generations = [], set()
    for chunk in stub.List(g.ListRequest(kind=kind), timeout=10):
        objects.extend(chunk.objects)
        generations.add(chunk.generation)
    assert len(generations) == 1, f"one generation per listing, got {generations}"
    return objects, generations.pop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--proto-dir", required=True)
    args = parser.parse_args()
    check = Checks()

    with tempfile.TemporaryDirectory() as out_dir:
        o, g, g_grpc = generate_stubs(args.proto_dir, out_dir)
        # grpc-core would send the socket path as :authority, which is no valid HTTP/2
        # authority; name the gateway instead.
        channel = grpc.insecure_channel(
            f"unix:{args.socket}", options=[("grpc.default_authority", "gateway.sluice.invalid")])
        stub = g_grpc.GatewayStub(channel)

        # Apply, then apply again: same generation.
        txn = world(o)
        first = stub.Apply(txn, timeout=10)
        check.ok(first.generation > 0 and len(first.boot_id) == 36, f"applied: {first}")
        again = stub.Apply(txn, timeout=10)
        check.ok(again.generation == first.generation, "re-apply keeps the generation")

        # Read back every table and compare with what was sent.
        sent = {}
        for obj in txn.upserts:
            sent.setdefault(obj.WhichOneof("kind"), []).append(obj)
        kinds = {"host": o.KIND_HOST, "vpc": o.KIND_VPC, "subnet": o.KIND_SUBNET,
                 "endpoint": o.KIND_ENDPOINT, "service": o.KIND_SERVICE}
        for name, kind in kinds.items():
            got, generation = listing(stub, g, kind)
            check.ok(generation == first.generation, f"{name} listing generation")
            # The gateway spells an absent weight as 1, as YAML does.
            for obj in sent[name]:
                if name == "service":
                    for b in obj.service.backends:
                        if not b.HasField("weight"):
                            b.weight = 1
            key = lambda x: x.SerializeToString(deterministic=True)
            check.ok(sorted(map(key, got)) == sorted(map(key, sent[name])),
                     f"{name}s read back as sent: {got}")
        reply = stub.Get(o.ObjectKey(endpoint=o.EndpointKey(vni=4242, ip="10.42.1.11")),
                         timeout=10)
        check.ok(reply.object.endpoint.mac == "0a:58:0a:2a:01:0b", f"get: {reply}")
        try:
            stub.Get(o.ObjectKey(endpoint=o.EndpointKey(vni=4242, ip="10.42.1.99")), timeout=10)
            check.ok(False, "get of a missing endpoint succeeded")
        except grpc.RpcError as e:
            check.ok(e.code() == grpc.StatusCode.NOT_FOUND, f"missing: {e.code()}")

        # A bad transaction is refused whole, naming item and field.
        bad = o.Transaction(upserts=[
            o.Object(endpoint=o.Endpoint(vni=4242, ip="10.42.1.12", mac="0a:58:0a:2a:01:0c",
                                         host="198.18.7.11")),
            o.Object(subnet=o.Subnet(vni=4242, cidr="10.42.2.0/33",
                                     router_mac="02:aa:00:42:02:01", bouncers=["198.18.7.1"])),
        ])
        try:
            stub.Apply(bad, timeout=10)
            check.ok(False, "a bad transaction was applied")
        except grpc.RpcError as e:
            check.ok(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {e.code()}")
            check.ok(e.details().startswith("upserts[1].subnet.cidr: prefix length /33"),
                     f"message {e.details()!r}")
        got, generation = listing(stub, g, o.KIND_ENDPOINT)
        check.ok(generation == first.generation and len(got) == 2, "nothing of it applied")

        # Counters, once and watched.
        counters = stub.GetCounters(g.GetCountersRequest(), timeout=10)
        check.ok(counters.boot_id == first.boot_id and len(counters.drops) > 10,
                 f"counters: {counters}")
        watch = stub.WatchCounters(g.WatchCountersRequest(interval_ms=100), timeout=10)
        update = next(watch)
        watch.cancel()
        check.ok(update.generation == first.generation, "watched counters")

        # Health.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "sluice.v1.Gateway"]:
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            check.ok(status.status == health_pb2.HealthCheckResponse.SERVING,
                     f"health of {service!r}: {status}")

        # Reflection: the service list, then the Gateway's methods from the descriptors.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        services = {s.name for r in replies for s in r.list_services_response.service}
        for name in ["sluice.v1.Gateway", "grpc.health.v1.Health"]:
            check.ok(name in services, f"{name} listed by reflection: {services}")
        db = ProtoReflectionDescriptorDatabase(channel)
        from google.protobuf.descriptor_pool import DescriptorPool
        pool = DescriptorPool(db)
        gateway = pool.FindServiceByName("sluice.v1.Gateway")
        methods = {m.name for m in gateway.methods}
        check.ok(methods == {"Apply", "Get", "List", "GetCounters", "WatchCounters"},
                 f"Gateway methods by reflection: {methods}")
        apply = gateway.methods_by_name["Apply"]
        check.ok(apply.input_type.full_name == "sluice.v1.Transaction",
                 f"Apply takes {apply.input_type.full_name}")
        channel.close()

    print(f"python grpcio peer: {check.passed} checks passed")


if __name__ == "__main__":
    main()
