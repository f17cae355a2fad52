pub mod proto {
    pub mod pb { tonic::include_proto!("pb"); }
    pub mod logical { tonic::include_proto!("logical"); }
    pub mod plugin { tonic::include_proto!("plugin"); }
}
fn main() {}
