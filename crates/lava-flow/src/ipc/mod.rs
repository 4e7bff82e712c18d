//! Handing exported objects to another process over Unix-domain sockets.

pub mod fd_passing;
