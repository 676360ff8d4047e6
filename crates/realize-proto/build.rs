//! Generates the realize.v1 gRPC code with protox, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A link to the workspace's proto/, so the packaged crate carries the contract.
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let descriptors = protox::compile(["realize/v1/realize.proto"], [proto_root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Data chunks as `Bytes`, so relaying them between streams copies nothing.
        .bytes(".realize.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
