//! The shared library's soname: `liblava_flow.so.0`, the name `cargo xtask install-c` installs it
//! under (with `liblava_flow.so` pointing at it), whatever cargo calls the file it builds.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblava_flow.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
