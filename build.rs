//! Compiles the plugin protocol definitions in `proto/` with a vendored
//! `protoc`, so a clean machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let files = [
        "proto/sdk/plugin/pb/backend.proto",
        "proto/sdk/logical/version.proto",
        "proto/sdk/helper/pluginutil/multiplexing.proto",
        "proto/goplugin/goplugin.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    let includes = [std::path::PathBuf::from("proto"), include];
    tonic_prost_build::configure().compile_with_config(
        config,
        &files.map(std::path::PathBuf::from),
        &includes,
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
