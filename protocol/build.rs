//! With the `net` feature: compiles the control-plane `.proto` with protox
//! (a pure-Rust protobuf compiler), so building needs nothing outside
//! cargo. Without it: nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "net")]
    {
        let proto = "proto/rss/v1/control.proto";
        println!("cargo:rerun-if-changed={proto}");
        let descriptors = protox::compile([proto], ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_fds(descriptors)?;
    }
    Ok(())
}
