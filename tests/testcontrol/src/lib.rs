//! A test-only Tailscale control server and DERP server (see the crate description).
