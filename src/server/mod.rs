//! The gRPC side: CRI services over tonic, errors mapped to status codes in one place.

pub mod authority;
pub mod errors;
pub mod image;
pub mod list_stream;
pub mod rpc;
pub mod runtime;

use std::sync::Arc;

use crate::cri::image_service_server::ImageServiceServer;
use crate::cri::runtime_service_server::RuntimeServiceServer;
use tonic::transport::server::Router;

use crate::context::Context;

/// Kubelet sends and receives messages up to 16 MiB (ListContainers on a busy node, ExecSync
/// output); tonic's default of 4 MiB would reject them.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Both CRI services, sharing one context.
pub fn router(ctx: Arc<Context>) -> Router {
    let runtime = RuntimeServiceServer::new(runtime::RuntimeApi::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let image = ImageServiceServer::new(image::ImageApi::new(ctx))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    tonic::transport::Server::builder()
        .add_service(runtime)
        .add_service(image)
}
