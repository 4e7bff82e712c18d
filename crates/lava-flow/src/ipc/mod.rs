//! Handing exported objects to another process over Unix sockets.
