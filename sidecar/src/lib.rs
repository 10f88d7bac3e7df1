//! taskstream sidecar.
