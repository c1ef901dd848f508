// Compiles the pod agent protocol (proto/agent.proto) with prost; needs protoc.
fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    if let Err(e) = prost_build::compile_protos(&["proto/agent.proto"], &["proto/"]) {
        panic!("compiling proto/agent.proto: {e}");
    }
}
