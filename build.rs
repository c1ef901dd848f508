// Compiles the CRI API (proto/cri/api.proto, vendored from kubernetes/cri-api) and the pod agent
// protocol (proto/agent.proto) with protox, a protobuf compiler written in Rust, so building
// needs no protoc. The CRI gets tonic clients and servers; the agent protocol plain prost
// messages (it is not gRPC).
fn main() {
    // The pod agent (one per pod) is linked at a fixed address: a position-independent binary
    // has its pointer tables relocated at every start, which copies those pages into each
    // agent (260 KiB of private memory per pod); at a fixed address they stay shared pages
    // of the one sealed copy all agents run.
    println!("cargo:rustc-link-arg-bin=crius-agent=-no-pie");
    for file in ["proto/cri/api.proto", "proto/agent.proto"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = match protox::compile(["cri/api.proto", "agent.proto"], ["proto/"]) {
        Ok(descriptors) => descriptors,
        Err(e) => panic!("compiling the protos: {e:?}"),
    };
    // CRI types are kept in the store as JSON (container and pod configs).
    if let Err(e) = tonic_prost_build::configure()
        .type_attribute(
            ".runtime.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_fds(descriptors)
    {
        panic!("generating code from the protos: {e}");
    }
}
