//! The guest side of the virtual GPU in Rust: the ioctl bindings of `/dev/vgpu0`
//! ([`uapi`]), a safe handle on it ([`device`]) and the pieces the workloads share.

pub mod device;
pub mod report;
pub mod uapi;
