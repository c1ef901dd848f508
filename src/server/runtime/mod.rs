//! The CRI RuntimeService. Each group of RPCs lives in its own file; this impl only routes.

mod container;
mod events;
mod pod_metrics;
mod sandbox;
mod stats;
mod status;
pub mod streaming;

use std::pin::Pin;
use std::sync::Arc;

use crate::cri;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::server::list_stream::{self, ListStream};
use crate::server::rpc::{self, Ids};

pub struct RuntimeApi {
    ctx: Arc<Context>,
}

impl RuntimeApi {
    pub fn new(ctx: Arc<Context>) -> Self {
        RuntimeApi { ctx }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeApi {
    type GetContainerEventsStream = EventStream;
    type StreamPodSandboxesStream = ListStream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = ListStream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = ListStream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = ListStream<cri::StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        rpc::handle("Version", Ids::none(), async { Ok(status::version()) }).await
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        rpc::handle("RunPodSandbox", Ids::none(), sandbox::run(&self.ctx, req)).await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        rpc::handle(
            "StopPodSandbox",
            Ids::pod(&id),
            sandbox::stop(&self.ctx, &id),
        )
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        rpc::handle(
            "RemovePodSandbox",
            Ids::pod(&id),
            sandbox::remove(&self.ctx, &id),
        )
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let id = req.pod_sandbox_id.clone();
        rpc::handle(
            "PodSandboxStatus",
            Ids::pod(&id),
            sandbox::status(&self.ctx, &req),
        )
        .await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let req = request.into_inner();
        rpc::handle("ListPodSandbox", Ids::none(), async {
            sandbox::list(&self.ctx, req)
        })
        .await
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let pod = req.pod_sandbox_id.clone();
        rpc::handle(
            "CreateContainer",
            Ids::pod(&pod),
            container::create(&self.ctx, req),
        )
        .await
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        rpc::handle(
            "StartContainer",
            Ids::container(&id),
            container::start(&self.ctx, &id),
        )
        .await
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id;
        rpc::handle(
            "StopContainer",
            Ids::container(&id),
            container::stop(&self.ctx, &id, req.timeout),
        )
        .await
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        rpc::handle(
            "RemoveContainer",
            Ids::container(&id),
            container::remove(&self.ctx, &id),
        )
        .await
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let req = request.into_inner();
        rpc::handle(
            "ListContainers",
            Ids::none(),
            container::list(&self.ctx, req),
        )
        .await
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        rpc::handle(
            "ContainerStatus",
            Ids::container(&req.container_id),
            container::status(&self.ctx, &req),
        )
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id.clone();
        rpc::handle(
            "UpdateContainerResources",
            Ids::container(&id),
            container::update_resources(&self.ctx, req),
        )
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        rpc::handle(
            "ReopenContainerLog",
            Ids::container(&id),
            container::reopen_log(&self.ctx, &id),
        )
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id.clone();
        rpc::handle(
            "ExecSync",
            Ids::container(&id),
            container::exec_sync(&self.ctx, req),
        )
        .await
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id.clone();
        rpc::handle("Exec", Ids::container(&id), streaming::exec(&self.ctx, req)).await
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id.clone();
        rpc::handle(
            "Attach",
            Ids::container(&id),
            streaming::attach(&self.ctx, req),
        )
        .await
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let id = req.pod_sandbox_id.clone();
        rpc::handle(
            "PortForward",
            Ids::pod(&id),
            streaming::port_forward(&self.ctx, req),
        )
        .await
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        rpc::handle(
            "ContainerStats",
            Ids::container(&id),
            stats::container(&self.ctx, &id),
        )
        .await
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let req = request.into_inner();
        rpc::handle(
            "ListContainerStats",
            Ids::none(),
            stats::list_containers(&self.ctx, req),
        )
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        rpc::handle("PodSandboxStats", Ids::pod(&id), stats::pod(&self.ctx, &id)).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        rpc::handle(
            "ListPodSandboxStats",
            Ids::none(),
            stats::list_pods(&self.ctx, req),
        )
        .await
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let req = request.into_inner();
        rpc::handle(
            "UpdateRuntimeConfig",
            Ids::none(),
            status::update_runtime_config(&self.ctx, req),
        )
        .await
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        rpc::handle("Status", Ids::none(), async {
            status::status(&self.ctx, verbose)
        })
        .await
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        rpc::unimplemented("CheckpointContainer").await
    }

    // The list-streaming RPCs (kubelet's CRIListStreaming gate): the unary lists' items in
    // messages cut by size (see list_stream.rs).
    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("StreamPodSandboxes", Ids::none(), async {
            let items = sandbox::matching(&self.ctx, filter)?;
            Ok(list_stream::stream(items, |pod_sandboxes| {
                cri::StreamPodSandboxesResponse { pod_sandboxes }
            }))
        })
        .await
    }

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("StreamContainers", Ids::none(), async {
            let items = container::matching(&self.ctx, filter);
            Ok(list_stream::stream(items, |containers| {
                cri::StreamContainersResponse { containers }
            }))
        })
        .await
    }

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("StreamContainerStats", Ids::none(), async {
            let items = stats::containers_matching(&self.ctx, filter);
            Ok(list_stream::stream(items, |container_stats| {
                cri::StreamContainerStatsResponse { container_stats }
            }))
        })
        .await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = request.into_inner().filter;
        rpc::handle("StreamPodSandboxStats", Ids::none(), async {
            let items = stats::pods_matching(&self.ctx, filter).await?;
            Ok(list_stream::stream(items, |pod_sandbox_stats| {
                cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
            }))
        })
        .await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        rpc::handle("StreamPodSandboxMetrics", Ids::none(), async {
            let items = pod_metrics::every_pod(&self.ctx).await?;
            Ok(list_stream::stream(items, |pod_sandbox_metrics| {
                cri::StreamPodSandboxMetricsResponse {
                    pod_sandbox_metrics,
                }
            }))
        })
        .await
    }

    // In-place pod resize: kubelet calls it once it has resized the pod's cgroup (see
    // sandbox/resize.rs for which cgroups crius writes).
    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let req = request.into_inner();
        let id = req.pod_sandbox_id.clone();
        rpc::handle(
            "UpdatePodSandboxResources",
            Ids::pod(&id),
            sandbox::update_resources(&self.ctx, req),
        )
        .await
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        rpc::handle("GetContainerEvents", Ids::none(), async {
            Ok(events::subscribe(self.ctx.clone()))
        })
        .await
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        rpc::handle("ListMetricDescriptors", Ids::none(), async {
            Ok(pod_metrics::descriptors())
        })
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        rpc::handle(
            "ListPodSandboxMetrics",
            Ids::none(),
            pod_metrics::list(&self.ctx),
        )
        .await
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        rpc::handle("RuntimeConfig", Ids::none(), async {
            Ok(status::runtime_config())
        })
        .await
    }
}
