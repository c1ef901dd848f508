//! The CRI ImageService: translation between CRI messages and the image store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cri;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::image::auth::Credentials;
use crate::server::list_stream::{self, ListStream};
use crate::server::rpc::{self, Ids};

pub struct ImageApi {
    ctx: Arc<Context>,
}

impl ImageApi {
    pub fn new(ctx: Arc<Context>) -> Self {
        ImageApi { ctx }
    }
}

fn image_name(spec: &Option<cri::ImageSpec>) -> &str {
    spec.as_ref().map_or("", |s| s.image.as_str())
}

fn require_name(spec: &Option<cri::ImageSpec>) -> Result<&str> {
    match image_name(spec) {
        "" => Err(Error::invalid("image.image", "no image name given")),
        name => Ok(name),
    }
}

/// The user an image runs as: a numeric uid, or a name (resolved when the container starts).
fn image_user(user: &str) -> (Option<cri::Int64Value>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (Some(cri::Int64Value { value: 0 }), String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

fn to_cri(info: &ImageInfo) -> cri::Image {
    let (uid, username) = image_user(&info.record.config.config.user);
    let id = info.record.id.to_string();
    cri::Image {
        id: id.clone(),
        repo_tags: info.repo_tags.clone(),
        repo_digests: info.repo_digests.clone(),
        size: info.record.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: id,
            ..Default::default()
        }),
        pinned: info.record.pinned,
    }
}

impl ImageApi {
    /// The images the filter selects (ListImages, StreamImages): all, or the one it names.
    fn matching(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .unwrap_or_default();
        let images = if wanted.is_empty() {
            self.ctx.images.list()?
        } else {
            self.ctx.images.lookup(&wanted)?.into_iter().collect()
        };
        Ok(images.iter().map(to_cri).collect())
    }

    fn status(&self, req: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse> {
        let name = require_name(&req.image)?;
        // Unknown image: an empty answer, not an error, as kubelet expects.
        let Some(info) = self.ctx.images.lookup(name)? else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut extra = HashMap::new();
        if req.verbose {
            let details = serde_json::json!({
                "imageSpec": self.ctx.images.config_json(&info.record.id)?,
                "manifest": info.record.manifest.to_string(),
                "index": info.record.index.as_ref().map(|d| d.to_string()),
                "chainIDs": info.record.chain_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            });
            extra.insert("info".to_string(), details.to_string());
        }
        Ok(cri::ImageStatusResponse {
            image: Some(to_cri(&info)),
            info: extra,
        })
    }

    async fn pull(&self, req: cri::PullImageRequest) -> Result<cri::PullImageResponse> {
        let name = require_name(&req.image)?;
        let credentials = match &req.auth {
            Some(auth) => {
                Credentials::from_cri(auth).map_err(|reason| Error::invalid("auth", reason))?
            }
            None => None,
        };
        let id = self.ctx.images.pull(name, credentials).await?;
        Ok(cri::PullImageResponse {
            image_ref: id.to_string(),
        })
    }

    async fn remove(&self, req: cri::RemoveImageRequest) -> Result<cri::RemoveImageResponse> {
        let name = require_name(&req.image)?;
        if let Some(image) = self.ctx.images.lookup(name)?
            && let Some(user) = self
                .ctx
                .containers
                .image_volume_user(&image.record.id.to_string())
        {
            return Err(Error::FailedPrecondition(format!(
                "image {name} is mounted as a volume by container {user}: remove the container first"
            )));
        }
        self.ctx.images.remove(name).await?;
        Ok(cri::RemoveImageResponse {})
    }

    /// The image layers' filesystem, and the containers' writable layers' (their upper dirs
    /// under `<root>/containers`, as ContainerStats.writable_layer names it).
    fn fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let (used_bytes, inodes_used) = self.ctx.images.usage()?;
        let (containers_dir, layer_bytes, layer_inodes) =
            tokio::task::block_in_place(|| self.ctx.containers.writable_layers_usage());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        let usage = |mountpoint: &std::path::Path, bytes, inodes| cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(
                self.ctx.images.snapshots_dir(),
                used_bytes,
                inodes_used,
            )],
            container_filesystems: vec![usage(&containers_dir, layer_bytes, layer_inodes)],
        })
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageApi {
    type StreamImagesStream = ListStream<cri::StreamImagesResponse>;

    // Behind kubelet's CRIListStreaming gate: ListImages's items in messages cut by size.
    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> std::result::Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("StreamImages", Ids::none(), async {
            let images = self.matching(filter)?;
            Ok(list_stream::stream(images, |images| {
                cri::StreamImagesResponse { images }
            }))
        })
        .await
    }

    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> std::result::Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("ListImages", Ids::none(), async {
            Ok(cri::ListImagesResponse {
                images: self.matching(filter)?,
            })
        })
        .await
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> std::result::Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(&req.image).to_string();
        rpc::handle("ImageStatus", Ids::image(&name), async { self.status(req) }).await
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> std::result::Result<Response<cri::PullImageResponse>, Status> {
        let deadline = rpc::caller_deadline(request.metadata());
        let req = request.into_inner();
        let name = image_name(&req.image).to_string();
        let pulling = rpc::within(deadline, format!("pulling {name}"), self.pull(req));
        rpc::handle("PullImage", Ids::image(&name), pulling).await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> std::result::Result<Response<cri::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(&req.image).to_string();
        rpc::handle("RemoveImage", Ids::image(&name), self.remove(req)).await
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> std::result::Result<Response<cri::ImageFsInfoResponse>, Status> {
        rpc::handle("ImageFsInfo", Ids::none(), async { self.fs_info() }).await
    }
}

#[cfg(test)]
mod tests {
    use super::image_user;

    #[test]
    fn image_users_as_critest_expects() {
        assert_eq!(image_user("1002").0.unwrap().value, 1002);
        assert_eq!(image_user("1003:1004").0.unwrap().value, 1003);
        let (uid, name) = image_user("www-data:1004");
        assert!(uid.is_none());
        assert_eq!(name, "www-data");
        assert_eq!(image_user("").0.unwrap().value, 0);
    }
}
