pub mod http;
pub mod manifest;
pub mod publish;
pub mod select;
pub mod sim;
pub mod sync;
