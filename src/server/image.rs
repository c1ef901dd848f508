//! The CRI ImageService.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::server::rpc;

pub struct ImageApi {
    #[allow(dead_code)] // used by the image RPCs as they are built
    ctx: Arc<Context>,
}

impl ImageApi {
    pub fn new(ctx: Arc<Context>) -> Self {
        ImageApi { ctx }
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageApi {
    async fn list_images(
        &self,
        _request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        rpc::unimplemented("ListImages").await
    }

    async fn image_status(
        &self,
        _request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        rpc::unimplemented("ImageStatus").await
    }

    async fn pull_image(
        &self,
        _request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        rpc::unimplemented("PullImage").await
    }

    async fn remove_image(
        &self,
        _request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        rpc::unimplemented("RemoveImage").await
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        rpc::unimplemented("ImageFsInfo").await
    }
}
