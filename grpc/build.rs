//! Generates the messages, the server trait and the client from `proto/inference.proto`,
//! compiled by `protox` (pure Rust) so the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Tensor blobs stay `Bytes`: slices of the received message, never copied.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
