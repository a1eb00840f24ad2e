//! Compiles the control-plane `.proto` with protox (a pure-Rust protobuf
//! compiler), so building needs nothing outside cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../protocol/proto";
    let proto = "../protocol/proto/rss/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], [proto_root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
