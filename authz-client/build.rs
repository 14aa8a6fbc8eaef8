//! Compiles the directory API. There is no `protoc` on build machines, so the
//! .proto is parsed by `protox` (pure Rust) and the descriptors are handed to
//! tonic's code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["hsmgate/directory/v1/directory.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
