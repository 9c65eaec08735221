//! tsinit: an init for containers with Tailscale in them. The binary's `main` strings
//! these modules together in the order of the README's "Operation" list.
#![deny(unsafe_code)]

pub mod bringup;
pub(crate) mod bytes;
pub mod cli;
pub mod commands;
pub mod config;
pub mod detached;
pub(crate) mod duration;
pub(crate) mod endpoint;
pub mod error;
pub mod hosts;
pub mod init;
pub mod localapi;
pub mod logging;
pub(crate) mod preflight;
pub(crate) mod serve;
pub mod signals;
pub mod sys;
pub mod tailscaled;
