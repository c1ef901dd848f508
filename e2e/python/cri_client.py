#!/usr/bin/env python3
"""Drives crius's CRI socket with Python's grpcio (gRPC C-core), as a client other than grpc-go
or tonic would: stubs are generated from the repository's proto/cri/api.proto with grpcio-tools
(its bundled protoc) into a temporary directory, the channel is grpcio's default one for
`unix:<socket>` unless --authority sets `grpc.default_authority`.

Runs one pod's life and some image and error calls; prints one line per call and exits 0, or
raises (non-zero exit, traceback on stderr) at the first unexpected answer. Used by
e2e/grpc_clients.rs.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

TIMEOUT = 60


def generate_stubs(proto_dir, out_dir):
    """api_pb2 and api_pb2_grpc for proto_dir/cri/api.proto, imported from out_dir."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "cri", "api.proto"),
    ])
    if status != 0:
        raise SystemExit(f"protoc failed on {proto_dir}/cri/api.proto (status {status})")
    sys.path.insert(0, out_dir)
    return importlib.import_module("cri.api_pb2"), importlib.import_module("cri.api_pb2_grpc")


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_code(code, call, *args):
    try:
        call(*args, timeout=TIMEOUT)
    except grpc.RpcError as e:
        check(e.code() == code, f"expected {code}, got {e.code()}: {e.details()}")
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def pod_config(pb, args):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=args.pod_name, uid=f"uid-{args.pod_name}", namespace="e2e-python", attempt=0),
        hostname=f"{args.pod_name}-host",
        labels={"app": args.pod_name, "client": "grpcio"},
        annotations={"note": "crius e2e, gRPC C-core client"},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=args.cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(
                    network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)),
        ),
    )


def drive(pb, grpc_pb, channel, args):
    runtime = grpc_pb.RuntimeServiceStub(channel)
    images = grpc_pb.ImageServiceStub(channel)

    version = runtime.Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
    check(version.runtime_name == "crius", f"runtime name {version.runtime_name!r}")
    check(version.runtime_api_version == "v1", f"API version {version.runtime_api_version!r}")
    print(f"Version: {version.runtime_name} {version.runtime_version}")

    status = runtime.Status(pb.StatusRequest(verbose=True), timeout=TIMEOUT)
    conditions = {c.type: c.status for c in status.status.conditions}
    check(conditions == {"RuntimeReady": True, "NetworkReady": True}, f"conditions {conditions}")
    check("config" in status.info, f"verbose Status info keys {sorted(status.info)}")
    print(f"Status: {conditions}")

    fs = images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=TIMEOUT)
    check(len(fs.image_filesystems) == 1, f"image filesystems {fs.image_filesystems}")
    print(f"ImageFsInfo: {fs.image_filesystems[0].fs_id.mountpoint}")
    listed = images.ListImages(pb.ListImagesRequest(), timeout=TIMEOUT)
    check(len(listed.images) == 0, f"images on a fresh root: {listed.images}")
    print("ListImages: none")

    config = pod_config(pb, args)
    pod_id = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=TIMEOUT)
    pod_id = pod_id.pod_sandbox_id
    check(pod_id, "an empty pod id")
    print(f"RunPodSandbox: {pod_id}")

    pod = runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=TIMEOUT)
    check(pod.status.state == pb.SANDBOX_READY, f"pod state {pod.status.state}")
    check(pod.status.metadata.name == args.pod_name, f"pod metadata {pod.status.metadata}")
    ip = pod.status.network.ip
    check(ip.startswith(args.subnet_prefix + "."), f"pod IP {ip!r} not in {args.subnet_prefix}.0/24")
    print(f"PodSandboxStatus: ready, {ip}")

    selector = pb.PodSandboxFilter(label_selector={"client": "grpcio"})
    items = runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=selector), timeout=TIMEOUT)
    check([p.id for p in items.items] == [pod_id], f"listed pods {items.items}")
    print("ListPodSandbox: 1")

    # Server-streaming lists (CRI 1.36): the same items, an empty list is no message at all.
    streamed = runtime.StreamPodSandboxes(
        pb.StreamPodSandboxesRequest(filter=selector), timeout=TIMEOUT)
    streamed = [p.id for message in streamed for p in message.pod_sandboxes]
    check(streamed == [pod_id], f"streamed pods {streamed}")
    print("StreamPodSandboxes: 1")
    in_pod = pb.ContainerFilter(pod_sandbox_id=pod_id)
    messages = list(runtime.StreamContainers(
        pb.StreamContainersRequest(filter=in_pod), timeout=TIMEOUT))
    check(messages == [], f"streamed containers of an empty pod {messages}")
    print("StreamContainers: none")

    # In-place pod resize: crius made this pod's cgroup, and limits it.
    runtime.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod_id,
        resources=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20),
    ), timeout=TIMEOUT)
    pod = runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=TIMEOUT)
    resources = json.loads(pod.info["info"])["resources"]
    check(resources["resources"]["cpu_shares"] == 512, f"pod resources {resources}")
    check(resources["podCgroupLimitedBy"] == "crius", f"pod resources {resources}")
    print("UpdatePodSandboxResources: applied")

    details = expect_code(
        grpc.StatusCode.NOT_FOUND, runtime.ContainerStatus,
        pb.ContainerStatusRequest(container_id="no-such-container"))
    print(f"ContainerStatus of an unknown id: NOT_FOUND ({details})")

    runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    pod = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    check(pod.status.state == pb.SANDBOX_NOTREADY, f"stopped pod state {pod.status.state}")
    print("StopPodSandbox: not ready")
    runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    items = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT)
    check(len(items.items) == 0, f"pods after removal {items.items}")
    expect_code(grpc.StatusCode.NOT_FOUND, runtime.PodSandboxStatus,
                pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    print("RemovePodSandbox: gone")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--proto-dir", required=True, help="the repository's proto/ directory")
    parser.add_argument("--authority", help="grpc.default_authority; grpcio's own by default")
    parser.add_argument("--pod-name", required=True)
    parser.add_argument("--cgroup-parent", required=True)
    parser.add_argument("--subnet-prefix", required=True, help="e.g. 10.201.7")
    args = parser.parse_args()

    options = []
    if args.authority is not None:
        options.append(("grpc.default_authority", args.authority))
    print(f"grpcio {grpc.__version__}, authority {args.authority or '(default)'}")
    with tempfile.TemporaryDirectory(prefix="crius-cri-stubs-") as out_dir:
        pb, grpc_pb = generate_stubs(args.proto_dir, out_dir)
        with grpc.insecure_channel("unix:" + args.socket, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            drive(pb, grpc_pb, channel, args)
    print("ok")


if __name__ == "__main__":
    main()
