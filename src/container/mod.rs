//! Containers. The parts built so far: how a container's process is derived from the CRI
//! ContainerConfig and the image config (`spec`). Create/start/stop through the pod agent build
//! on them.

pub mod spec;
