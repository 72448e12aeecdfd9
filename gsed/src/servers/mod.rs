pub mod accepted;
pub mod http;
pub mod manifest;
pub mod publish;
pub mod select;
pub mod service;
pub mod sync;
pub mod update;
pub mod window;

pub use service::{ServersService, ServersSnapshot};
pub use update::UpdateService;
