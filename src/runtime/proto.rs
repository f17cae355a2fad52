//! Code generated from `proto/` by `build.rs`.
#![allow(clippy::all, missing_docs)]

pub mod pb {
    tonic::include_proto!("pb");
}

pub mod logical {
    tonic::include_proto!("logical");
}

pub mod plugin {
    tonic::include_proto!("plugin");
}

pub mod multiplexing {
    tonic::include_proto!("pluginutil.multiplexing");
}

pub mod grpc_health {
    tonic::include_proto!("grpc.health.v1");
}
