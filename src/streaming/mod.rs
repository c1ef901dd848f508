//! Kubernetes' streaming protocol (exec, attach, port-forward): what kubelet, kubectl and
//! crictl speak to a runtime's streaming server once an HTTP request is upgraded.

pub mod channels;
pub mod http;
pub mod server;
pub mod session;
pub mod spdy;
pub mod spdy_io;
pub mod tokens;
pub mod websocket;
